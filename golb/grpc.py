"""
gRPC over HTTP/2, the parts a load balancer needs, without grpcio: the
C{grpc-timeout} header, status codes and their mapping from HTTP statuses and
golb's upstream errors, message framing, C{grpc-message} percent-encoding,
and the standard health check (C{grpc.health.v1.Health/Check}) with a
hand-encoded protobuf.

See U{https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md} and
U{https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md}.
"""

import re
import struct
from enum import IntEnum
from typing import List, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from golb import __version__
from golb.errors import GolbError

__all__ = [
    "HEALTH_CHECK_PATH",
    "MessageError",
    "MessageParser",
    "SERVING_STATUS",
    "STATUS",
    "Status",
    "encodeTimeout",
    "frameMessage",
    "healthCheckRequest",
    "isGrpc",
    "parseHealthCheckResponse",
    "parseTimeout",
    "percentDecodeMessage",
    "percentEncodeMessage",
    "probeHealth",
    "statusForError",
    "statusForHTTP",
    "statusName",
]


class Status(IntEnum):
    """
    The gRPC status codes.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


STATUS = Status


def statusName(code: int) -> str:
    """
    The lower-case name of gRPC status C{code} (C{"unimplemented"}), or
    C{"code N"} for an unknown one.
    """
    try:
        return Status(code).name.lower()
    except ValueError:
        return f"code {code}"


# ---------------------------------------------------------------- timeouts

_TIMEOUT = re.compile(rb"\A([0-9]{1,8})([HMSmun])\Z")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# (unit, nanoseconds), finest first
_ENCODE_UNITS = [
    (b"n", 1), (b"u", 10**3), (b"m", 10**6), (b"S", 10**9), (b"M", 60 * 10**9),
    (b"H", 3600 * 10**9),
]
_MAX_TIMEOUT_VALUE = 10**8 - 1


def parseTimeout(value: Optional[bytes]) -> Optional[float]:
    """
    Parse a C{grpc-timeout} header value (C{b"100m"}, C{b"5S"}: at most 8
    digits and one of the units C{H M S m u n}).

    @return: the timeout in seconds, or L{None} when C{value} is missing or
        invalid.
    """
    if not value:
        return None
    match = _TIMEOUT.match(value.strip(b" \t"))
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def encodeTimeout(seconds: float) -> bytes:
    """
    A C{grpc-timeout} header value for C{seconds}, in the finest unit that
    fits 8 digits, rounded up (C{b"0n"} for no time left).
    """
    nanoseconds = round(seconds * 1e9)
    if nanoseconds <= 0:
        return b"0n"
    for unit, size in _ENCODE_UNITS:
        value = -(-nanoseconds // size)
        if value <= _MAX_TIMEOUT_VALUE:
            return b"%d%s" % (value, unit)
    return b"%dH" % (_MAX_TIMEOUT_VALUE,)


# ---------------------------------------------------------------- statuses

_HTTP_STATUS = {
    400: Status.INTERNAL,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.UNIMPLEMENTED,
    429: Status.UNAVAILABLE,
    502: Status.UNAVAILABLE,
    503: Status.UNAVAILABLE,
    504: Status.UNAVAILABLE,
}

# GolbError codes (golb.errors.ERRORS) -> gRPC status
_ERROR_STATUS = {
    "bad-request": Status.INTERNAL,
    "unauthorized": Status.UNAUTHENTICATED,
    "forbidden": Status.PERMISSION_DENIED,
    "no-route": Status.UNIMPLEMENTED,
    "request-timeout": Status.DEADLINE_EXCEEDED,
    "body-too-large": Status.RESOURCE_EXHAUSTED,
    "uri-too-long": Status.INTERNAL,
    "rate-limited": Status.RESOURCE_EXHAUSTED,
    "headers-too-large": Status.INTERNAL,
    "bad-gateway": Status.UNAVAILABLE,
    "connect-failure": Status.UNAVAILABLE,
    "upstream-reset": Status.UNAVAILABLE,
    "invalid-response": Status.INTERNAL,
    "upstream-tls": Status.UNAVAILABLE,
    "no-backend": Status.UNAVAILABLE,
    "circuit-open": Status.UNAVAILABLE,
    "queue-timeout": Status.UNAVAILABLE,
    "queue-full": Status.UNAVAILABLE,
    "internal-error": Status.INTERNAL,
    "shutting-down": Status.UNAVAILABLE,
    "upstream-timeout": Status.DEADLINE_EXCEEDED,
}


def statusForHTTP(code: int) -> int:
    """
    The gRPC status for a response with HTTP status C{code} but no
    C{grpc-status} (per the gRPC HTTP-to-gRPC status mapping).
    """
    return _HTTP_STATUS.get(code, Status.UNKNOWN)


def statusForError(error) -> Tuple[int, str]:
    """
    The gRPC status and message for a golb error (an exception or a
    L{Failure} of one): connect failures and resets are C{UNAVAILABLE},
    timeouts C{DEADLINE_EXCEEDED}, invalid responses C{INTERNAL}, a
    cancellation C{CANCELLED}, anything else C{UNKNOWN}.

    @return: C{(code, message)}.
    """
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, GolbError):
        return _ERROR_STATUS.get(error.code, Status.UNKNOWN), error.message
    if isinstance(error, CancelledError):
        return Status.CANCELLED, "the request was cancelled"
    return Status.UNKNOWN, str(error) or type(error).__name__


def isGrpc(contentType: Optional[bytes]) -> bool:
    """
    Whether C{contentType} is a gRPC one: C{application/grpc} or
    C{application/grpc+<format>} (not C{application/grpc-web}).
    """
    if not contentType:
        return False
    mediaType = contentType.split(b";", 1)[0].strip(b" \t").lower()
    return mediaType == b"application/grpc" or mediaType.startswith(b"application/grpc+")


# ---------------------------------------------------------------- messages


class MessageError(ValueError):
    """
    A gRPC message stream is malformed (bad flag, too large, truncated).
    """


def frameMessage(payload: bytes) -> bytes:
    """
    C{payload} as one uncompressed length-prefixed gRPC message.
    """
    return struct.pack(">BI", 0, len(payload)) + payload


class MessageParser:
    """
    Split a gRPC byte stream into its length-prefixed messages, however the
    bytes are cut.
    """

    def __init__(self, maxMessageSize: int = 4 * 1024 * 1024):
        """
        @param maxMessageSize: the largest message accepted, in bytes.
        """
        self.maxMessageSize = maxMessageSize
        self._buffer = b""

    @property
    def pending(self) -> int:
        """
        How many bytes of an incomplete message are buffered.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> List[Tuple[bool, bytes]]:
        """
        Parse C{data}, the next bytes of the stream.

        @return: the messages completed, as C{(compressed, payload)}.
        @raise MessageError: for an invalid flag or a too large message.
        """
        buffer = self._buffer + data if self._buffer else data
        messages = []
        pos = 0
        size = len(buffer)
        while size - pos >= 5:
            flag, length = struct.unpack_from(">BI", buffer, pos)
            if flag > 1:
                raise MessageError(f"invalid message flag {flag}")
            if length > self.maxMessageSize:
                raise MessageError(f"message of {length} bytes is larger than "
                                   f"{self.maxMessageSize}")
            end = pos + 5 + length
            if end > size:
                break
            messages.append((bool(flag), buffer[pos + 5:end]))
            pos = end
        self._buffer = buffer[pos:]
        return messages

    def finish(self) -> None:
        """
        The stream ended.

        @raise MessageError: when it ended in the middle of a message.
        """
        if self._buffer:
            raise MessageError(f"stream ended inside a message ({len(self._buffer)} bytes)")


# ---------------------------------------------------------------- grpc-message

_UNRESERVED = frozenset(range(0x20, 0x7F)) - {0x25}


def percentEncodeMessage(message: str) -> bytes:
    """
    C{message} as a C{grpc-message} value: UTF-8, with bytes outside
    printable ASCII (and C{%}) percent-encoded.
    """
    out = bytearray()
    for byte in message.encode("utf-8"):
        if byte in _UNRESERVED:
            out.append(byte)
        else:
            out += b"%%%02X" % (byte,)
    return bytes(out)


def percentDecodeMessage(value: bytes) -> str:
    """
    Decode a C{grpc-message} value; invalid escapes are kept as they are.
    """
    out = bytearray()
    i = 0
    size = len(value)
    while i < size:
        byte = value[i]
        if byte == 0x25 and _isHex(value[i + 1:i + 3]):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode("utf-8", "replace")


def _isHex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


# ---------------------------------------------------------------- health checks

HEALTH_CHECK_PATH = b"/grpc.health.v1.Health/Check"

# grpc.health.v1.HealthCheckResponse.ServingStatus
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

_BODY_LIMIT = 64 * 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _readVarint(data: bytes, pos: int) -> Tuple[int, int]:
    """
    @return: C{(value, next position)}.
    @raise ValueError: when the varint is truncated or longer than 10 bytes.
    """
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def healthCheckRequest(service: str) -> bytes:
    """
    A framed C{grpc.health.v1.HealthCheckRequest} for C{service} (C{""}:
    the server as a whole).
    """
    payload = b""
    if service:
        name = service.encode("utf-8")
        payload = b"\x0a" + _varint(len(name)) + name
    return frameMessage(payload)


def parseHealthCheckResponse(body: bytes) -> Optional[int]:
    """
    The C{status} of the C{grpc.health.v1.HealthCheckResponse} in the
    response body C{body} (one framed, uncompressed message).

    @return: 0 (UNKNOWN), 1 (SERVING), 2 (NOT_SERVING), 3 (SERVICE_UNKNOWN)
        or another enum value; L{None} when C{body} is malformed.
    """
    parser = MessageParser(_BODY_LIMIT)
    try:
        messages = parser.feed(body)
        parser.finish()
    except MessageError:
        return None
    if len(messages) != 1 or messages[0][0]:
        return None
    payload = messages[0][1]
    status = 0
    pos = 0
    try:
        while pos < len(payload):
            key, pos = _readVarint(payload, pos)
            fieldNumber, wireType = key >> 3, key & 7
            if fieldNumber == 0:
                return None
            if wireType == 0:
                value, pos = _readVarint(payload, pos)
                if fieldNumber == 1:
                    status = value
            elif wireType == 1:
                pos += 8
            elif wireType == 2:
                length, pos = _readVarint(payload, pos)
                pos += length
            elif wireType == 5:
                pos += 4
            else:
                return None
            if pos > len(payload):
                return None
    except ValueError:
        return None
    return status


class _Collect:
    """
    A body receiver keeping the first 64 KiB.
    """

    def __init__(self, response, done: Deferred):
        self.response = response
        self.done = done
        self.data = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.size < _BODY_LIMIT:
            self.data.append(data)
        self.size += len(data)

    def bodyDone(self, reason) -> None:
        if reason is None:
            self.done.callback(b"".join(self.data))
        else:
            self.done.errback(reason)


def _grpcStatus(fields) -> Tuple[Optional[bytes], bytes]:
    status = None
    message = b""
    for name, value in fields:
        lower = name.lower()
        if lower == b"grpc-status" and status is None:
            status = value
        elif lower == b"grpc-message":
            message = value
    return status, message


def _statusReason(status: bytes, message: bytes) -> Optional[str]:
    """
    L{None} for C{grpc-status: 0}, else a short reason.
    """
    if not status.strip().isdigit():
        return f"invalid grpc-status {status[:20]!r}"
    code = int(status)
    if code == 0:
        return None
    reason = f"grpc-status {code} ({statusName(code)})"
    if message:
        reason += ": " + percentDecodeMessage(message)[:200]
    return reason


def probeHealth(pool, service: str, authority: str, timeout: float, reactor) -> Deferred:
    """
    Ask a backend's C{grpc.health.v1.Health/Check} about C{service}.

    @param pool: an HTTP/2 pool to the backend (L{golb.h2client.H2Pool}).
    @param service: the service name (C{""}: the server as a whole).
    @param authority: the C{:authority} (Host) to send.
    @param timeout: seconds for the whole check, also sent as
        C{grpc-timeout}.
    @param reactor: the reactor for the timeout.
    @return: a Deferred firing with L{None} when the service is C{SERVING},
        else with a short reason (C{"NOT_SERVING"},
        C{"grpc-status 12 (unimplemented)"}, C{"timed out after 2s"}, the
        connection error...).  Cancelling it cancels the check.
    """
    from golb.upstream import UpstreamRequest

    request = UpstreamRequest(
        method=b"POST",
        target=HEALTH_CHECK_PATH,
        headers=[
            (b"Host", authority.encode("idna")),
            (b"Content-Type", b"application/grpc"),
            (b"TE", b"trailers"),
            (b"grpc-timeout", encodeTimeout(timeout)),
            (b"User-Agent", b"golb-health/" + __version__.encode("ascii")),
        ],
        body=healthCheckRequest(service),
    )
    state = {"response": None, "timedOut": False}
    pending = pool.request(request)

    def cancel(_):
        pending.cancel()
        response = state["response"]
        if response is not None:
            response.stopProducing()

    result: Deferred = Deferred(cancel)

    def timedOut():
        state["timedOut"] = True
        cancel(None)

    timer = reactor.callLater(timeout, timedOut)

    def gotResponse(response):
        state["response"] = response
        code = response.code
        if code != 200:
            response.stopProducing()
            return f"HTTP {code}"
        if not isGrpc(response.getHeader(b"content-type")):
            response.stopProducing()
            contentType = (response.getHeader(b"content-type") or b"none").decode("latin-1")
            return f"not a gRPC response (content-type {contentType[:60]})"
        status, message = _grpcStatus(response.headers)
        if status is not None:
            # trailers-only: the status is in the head
            response.stopProducing()
            return _statusReason(status, message) or "no HealthCheckResponse"
        bodyRead: Deferred = Deferred()
        response.deliverBody(_Collect(response, bodyRead))
        return bodyRead.addCallback(gotBody, response)

    def gotBody(body, response):
        status, message = _grpcStatus(getattr(response, "trailers", []))
        if status is None:
            return "no grpc-status in the response"
        reason = _statusReason(status, message)
        if reason is not None:
            return reason
        serving = parseHealthCheckResponse(body)
        if serving is None:
            return "malformed HealthCheckResponse"
        if serving == 1:
            return None
        return SERVING_STATUS.get(serving, f"serving status {serving}")

    def failed(reason):
        if state["timedOut"]:
            return f"timed out after {timeout:g}s"
        if reason.check(CancelledError):
            return reason
        if reason.check(GolbError):
            return reason.value.message
        return reason.getErrorMessage()

    def finished(outcome):
        if timer.active():
            timer.cancel()
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

    pending.addCallback(gotResponse).addErrback(failed).addBoth(finished)
    return result
