"""
An HTTP/2 client connection pool to one backend: L{H2Pool}, a drop-in
alternative to L{golb.upstream.UpstreamPool} (same constructor keywords,
properties, C{call}/C{request} and error classes) that multiplexes many
requests as streams over few connections.

A new connection is made only when every open one is at the backend's
C{SETTINGS_MAX_CONCURRENT_STREAMS} (capped by C{maxConcurrentStreams}); calls
made while a connection is being set up wait on it.  A connection takes
requests once the backend's first SETTINGS frame arrived (and, over TLS, ALPN
chose C{h2}); C{tls=None} is h2c with prior knowledge.

Flow control both ways: request bodies (bytes, files and
L{golb.streams.BodyStream}s) are sent no faster than the backend's windows
allow, and response data is acknowledged (so the backend's window reopens)
only once the body receiver took it: pausing a response closes that stream's
window.  Connections advertise a large connection window so that one paused
stream does not stall the others.

Built on the sans-I/O C{h2} package.  One deviation from it: a GOAWAY does not
end the streams the backend still processes (RFC 9113 section 6.8), so the
connection stays usable for them.
"""

from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PushedStreamReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import NoAvailableStreamIDError
from h2.settings import SettingCodes, Settings
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from golb._http11client import FILE_CHUNK
from golb.errors import RESPONSES
from golb.upstream import (
    BackendConnections,
    ConnectFailed,
    InvalidResponse,
    ReadTimeout,
    ResponseHeaderTimeout,
    UpstreamError,
    UpstreamRequest,
    UpstreamReset,
    UpstreamTLSFailed,
    _connectError,
    _handshakeError,
    _isTLSError,
)

__all__ = ["CONNECTION_WINDOW", "H2Call", "H2Pool", "H2Response"]

Headers = List[Tuple[bytes, bytes]]

# The receive window of each connection (the stream windows stay at the
# protocol's 65535): large, so that paused streams do not stall the others.
CONNECTION_WINDOW = 16 * 1024 * 1024
_DEFAULT_WINDOW = 65535

# request header fields that do not exist in HTTP/2 (RFC 9113 section 8.2.2);
# TE survives as "trailers" only
_CONNECTION_SPECIFIC = frozenset([
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
])
_BODY_METHODS = frozenset([b"POST", b"PUT", b"PATCH"])
# RFC 9110 token characters (lower-case letters only: HTTP/2 names are)
_NAME = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"

# connection states
_SETUP = 0  # TCP/TLS made, waiting for the backend's SETTINGS (and ALPN)
_READY = 1  # takes new streams
_CLOSING = 2  # GOAWAY received: streams in progress finish, no new ones
_DEAD = 3  # closed or closing; nothing more is sent

# timer kinds
_T_NONE = 0
_T_HEAD = 1
_T_BODY = 2
_T_SETUP = 3
_T_IDLE = 4

# how a request body is sent
_SEND_NONE = 0
_SEND_BYTES = 1
_SEND_FILE = 2
_SEND_STREAM = 3


def _errorName(code) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {int(code)}"


class _ClientConnection(H2Connection):
    """
    An C{h2} client connection that lets streams up to a GOAWAY's last stream
    id finish: C{h2} otherwise closes the connection state on any GOAWAY, and
    rejects every later frame.
    """

    def _receive_goaway_frame(self, frame):
        state = self.state_machine.state
        pending = bytes(self._data_to_send)
        frames, events = H2Connection._receive_goaway_frame(self, frame)
        if state != ConnectionState.CLOSED:
            self.state_machine.state = state
        self._data_to_send = bytearray(pending) + self._data_to_send
        return frames, events


def _newConnection() -> H2Connection:
    # the request fields are checked and lower-cased by _fields: h2 need not
    # validate and normalize them again (about a tenth of a request's cost)
    conn = _ClientConnection(H2Configuration(
        client_side=True, header_encoding=None,
        validate_outbound_headers=False, normalize_outbound_headers=False))
    conn.local_settings = Settings(client=True, initial_values={
        SettingCodes.ENABLE_PUSH: 0,
        SettingCodes.MAX_CONCURRENT_STREAMS: 100,
        SettingCodes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE,
    })
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
    return conn


def _fields(headers, trailers: bool = False) -> Tuple[Optional[bytes], Headers]:
    """
    HTTP/1-style header fields as HTTP/2 fields: lower-cased names, without
    connection-specific ones, pseudo-headers and (unless C{trailers})
    Content-Length.

    @return: C{(host, fields)}, C{host} being the first Host value.
    @raise ValueError: for an invalid name, or CR, LF or NUL in a value.
    """
    host = None
    fields = []
    for name, value in headers:
        lower = name.lower()
        if (
            b"\r" in value or b"\n" in value or b"\x00" in value
            or (lower[:1] != b":" and (not lower or lower.translate(None, _NAME)))
        ):
            raise ValueError(f"invalid header field {name[:40]!r}")
        if lower == b"host":
            if host is None:
                host = value
            continue
        if lower in _CONNECTION_SPECIFIC or lower[:1] == b":":
            continue
        if lower == b"te":
            if value.strip().lower() != b"trailers":
                continue
            value = b"trailers"
        elif lower == b"content-length" and not trailers:
            continue
        fields.append((lower, value))
    return host, fields


def _isBodyStream(body) -> bool:
    return hasattr(body, "deliver")


# ---------------------------------------------------------------- response


@implementer(IPushProducer)
class H2Response:
    """
    A backend's HTTP/2 response, duck-typed like
    L{golb.upstream.UpstreamResponse}: its head, its body as a push producer,
    and its trailers.

    @ivar version: C{b"HTTP/2"}.
    @ivar code: the status code.
    @ivar phrase: the standard reason phrase for C{code} (HTTP/2 has none),
        or C{b""}.
    @ivar headers: the header fields, in order, without pseudo-headers.
    @ivar length: the Content-Length when given (0 for HEAD, 204 and 304),
        else L{None}.
    @ivar chunked: always C{False}.
    @ivar trailers: the trailer fields (C{grpc-status}...), set before the
        body receiver's C{bodyDone(None)}; empty without trailers (in a
        gRPC trailers-only response, C{grpc-status} is in L{headers}).
    """

    version = b"HTTP/2"
    chunked = False

    def __init__(self, stream: "_Stream", code: int, headers: Headers, length: Optional[int]):
        self.code = code
        self.phrase = RESPONSES.get(code, b"")
        self.headers = headers
        self.length = length
        self.trailers: Headers = []
        self._stream: Optional[_Stream] = stream
        self._protocol = stream.protocol
        self._streamId = stream.id
        self._receiver = None
        self._buffer: Deque[Tuple[bytes, int]] = deque()
        self._paused = False
        self._ended = False
        self._endReason: Optional[Failure] = None
        self._reported = False
        self._flushing = False

    def __repr__(self) -> str:
        return f"<H2Response {self.code} stream={self._streamId} length={self.length}>"

    def getHeader(self, name: bytes) -> Optional[bytes]:
        """
        The first value of header C{name} (case-insensitive), or L{None}.
        """
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def deliverBody(self, receiver) -> None:
        """
        Deliver the body to C{receiver}: C{dataReceived(bytes)} for each
        piece, then C{bodyDone(reason)} once, with L{None} when the body is
        complete (L{trailers} are set by then) or a L{Failure}
        (L{UpstreamReset}, L{InvalidResponse}, L{ReadTimeout},
        L{ConnectionAborted}).  Data that arrived earlier comes first.
        """
        if self._receiver is not None or self._reported:
            raise RuntimeError("deliverBody called twice")
        self._receiver = receiver
        self._flush()

    def pauseProducing(self) -> None:
        """
        Stop delivering data and acknowledging it: the backend's window for
        this stream closes once it sent a window's worth.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        Deliver (and acknowledge) data again.
        """
        if self._paused:
            self._paused = False
            stream = self._stream
            if stream is not None:
                stream.lastActivity = stream.protocol._seconds()
            self._flush()

    def stopProducing(self) -> None:
        """
        Reset the stream (not the connection); C{bodyDone} gets a
        L{ConnectionAborted} failure unless it was already called.
        """
        if self._reported:
            return
        stream, self._stream = self._stream, None
        if stream is not None and not stream.closed:
            stream.protocol._cancelStream(stream)
        self._dropBuffer()
        self._ended = True
        self._endReason = Failure(ConnectionAborted())
        if self._receiver is not None:
            self._report()

    def switchProtocol(self):
        """
        HTTP/2 has no protocol switch (no 101 response).

        @raise RuntimeError: always.
        """
        raise RuntimeError("an HTTP/2 response cannot switch protocols")

    # called by the protocol

    def _dataReceived(self, data: bytes, flowLength: int) -> None:
        if self._reported:
            self._protocol._ack(self._streamId, flowLength)
            return
        if self._buffer or self._receiver is None or self._paused or self._flushing:
            self._buffer.append((data, flowLength))
            return
        if data:
            self._receiver.dataReceived(data)
        self._protocol._ack(self._streamId, flowLength)

    def _flush(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        try:
            buffer = self._buffer
            while buffer and self._receiver is not None and not self._paused:
                data, flowLength = buffer.popleft()
                if data:
                    self._receiver.dataReceived(data)
                self._protocol._ack(self._streamId, flowLength)
        finally:
            self._flushing = False
        if self._ended and not self._buffer and self._receiver is not None:
            self._report()

    def _bodyEnded(self, reason: Optional[Failure]) -> None:
        self._stream = None
        if self._ended:
            return
        self._ended = True
        if reason is None:
            self._flush()
            return
        self._dropBuffer()
        self._endReason = reason
        if self._receiver is not None:
            self._report()

    def _dropBuffer(self) -> None:
        buffer, self._buffer = self._buffer, deque()
        total = sum(flowLength for _, flowLength in buffer)
        if total:
            self._protocol._ack(self._streamId, total)

    def _report(self) -> None:
        if self._reported:
            return
        self._reported = True
        receiver, self._receiver = self._receiver, None
        reason, self._endReason = self._endReason, None
        receiver.bodyDone(reason)


# ---------------------------------------------------------------- stream


class _Stream:
    """
    One request on a connection, from its HEADERS until the response ended
    or the stream was reset.  It sends the request body, and receives a
    L{golb.streams.BodyStream} body as that stream's receiver.
    """

    def __init__(self, protocol: "_H2Protocol", call: "H2Call", streamId: int):
        self.protocol = protocol
        self.call: Optional[H2Call] = call
        self.request = call.request
        self.id = streamId
        self.response: Optional[H2Response] = None
        self.closed = False
        self.kind = _SEND_NONE
        self.body = None
        self.offset = 0
        self.remaining = 0
        self.pending: Deque[bytes] = deque()
        self.sendDone = True
        self.sourceEnded = False
        self.sourcePaused = False
        self.trailers: Headers = []
        self.pumping = False
        self.timer = None
        self.timerKind = _T_NONE
        self.timeout = 0.0
        self.lastActivity = 0.0

    def __repr__(self) -> str:
        return f"<_Stream {self.id} on {self.protocol._pool.backend}>"

    # -- the request body

    def pump(self) -> None:
        """
        Send as much of the request body as the windows allow.
        """
        if self.sendDone or self.closed or self.pumping:
            return
        protocol = self.protocol
        self.pumping = True
        try:
            if self.kind == _SEND_STREAM:
                self._pumpStream()
            else:
                self._pumpFixed()
        except Exception:
            protocol._log.failure("Sending a request body to {backend} failed",
                                  backend=protocol._pool.backend)
            protocol._sendFailed(self, "the request body could not be sent")
        finally:
            self.pumping = False
        protocol._flush()

    def _room(self) -> int:
        protocol = self.protocol
        if protocol._writePaused or protocol._state == _DEAD:
            return 0
        conn = protocol.conn
        return min(conn.local_flow_control_window(self.id), conn.max_outbound_frame_size)

    def _pumpFixed(self) -> None:
        conn = self.protocol.conn
        seconds = self.protocol._seconds
        while not self.closed:
            room = self._room()
            if room <= 0:
                return
            if self.kind == _SEND_BYTES:
                body = self.body
                end = min(self.offset + room, len(body))
                chunk = body[self.offset:end]
                self.offset = end
                last = end == len(body)
            else:
                chunk = self.body.read(min(room, self.remaining, FILE_CHUNK))
                if not chunk:
                    self.protocol._sendFailed(self, "the request body is shorter than its length")
                    return
                chunk = chunk[:self.remaining]
                self.remaining -= len(chunk)
                last = self.remaining == 0
            conn.send_data(self.id, chunk, end_stream=last)
            self.lastActivity = seconds()
            if last:
                self._sent()
                return

    def _pumpStream(self) -> None:
        conn = self.protocol.conn
        pending = self.pending
        while not self.closed:
            while pending:
                room = self._room()
                if room <= 0:
                    break
                piece = pending[0]
                if len(piece) <= room:
                    pending.popleft()
                else:
                    pending[0] = piece[room:]
                    piece = piece[:room]
                conn.send_data(self.id, piece)
                self.lastActivity = self.protocol._seconds()
            if pending:
                if not self.sourcePaused:
                    self.sourcePaused = True
                    self.body.pauseProducing()
                return
            if self.sourceEnded:
                if self.trailers:
                    conn.send_headers(self.id, self.trailers, end_stream=True)
                else:
                    conn.end_stream(self.id)
                self._sent()
                return
            if not self.sourcePaused:
                return
            self.sourcePaused = False
            self.body.resumeProducing()
            if not pending and not self.sourceEnded:
                return

    def _sent(self) -> None:
        self.sendDone = True
        self.body = None
        if self.timerKind == _T_HEAD:
            # the response header timeout counts from now
            self.lastActivity = self.protocol._seconds()

    def waitingForSource(self) -> bool:
        """
        Whether the request body is a stream waiting for its source (not for
        the backend's window): the backend need not answer yet.
        """
        return self.kind == _SEND_STREAM and not self.sendDone and not self.pending

    def stopBody(self) -> None:
        """
        The stream is over: stop reading the request body.
        """
        body, self.body = self.body, None
        if not self.sendDone:
            self.sendDone = True
            if self.kind == _SEND_STREAM and body is not None:
                self.pending.clear()
                body.stopProducing()

    # -- as the receiver of a BodyStream

    def dataReceived(self, data: bytes) -> None:
        if self.sendDone or self.closed:
            return
        self.pending.append(data)
        if self.pumping:
            if not self.sourcePaused:
                self.sourcePaused = True
                self.body.pauseProducing()
            return
        self.pump()

    def bodyDone(self, reason: Optional[Failure], trailers: Headers) -> None:
        if self.sendDone or self.closed:
            return
        if reason is not None:
            self.body = None
            self.sendDone = True
            self.protocol._sendFailed(
                self, f"the request body failed: {reason.getErrorMessage()}")
            return
        try:
            self.trailers = _fields(trailers or [], trailers=True)[1]
        except ValueError as e:
            self.body = None
            self.sendDone = True
            self.protocol._sendFailed(self, f"invalid request trailers: {e}")
            return
        self.sourceEnded = True
        if not self.pumping:
            self.pump()

    # -- timers

    def setTimer(self, kind: int, timeout: float) -> None:
        if not timeout or timeout <= 0:
            # a timeout of 0 is none (the configuration's "0 = none")
            self.cancelTimer()
            return
        reactor = self.protocol._reactor
        now = reactor.seconds()
        self.timerKind = kind
        self.timeout = timeout
        self.lastActivity = now
        timer = self.timer
        if timer is None:
            self.timer = reactor.callLater(timeout, self._timerFired)
        elif timer.getTime() > now + timeout:
            timer.reset(timeout)

    def cancelTimer(self) -> None:
        self.timerKind = _T_NONE
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timerFired(self) -> None:
        self.timer = None
        kind = self.timerKind
        if kind == _T_NONE or self.closed:
            return
        protocol = self.protocol
        now = protocol._seconds()
        response = self.response
        if kind == _T_HEAD and self.waitingForSource():
            self.lastActivity = now
        elif kind == _T_BODY and (
            (response is not None and (response._paused or response._buffer))
            or self.waitingForSource()
        ):
            # a paused response, or a backend waiting for the client's next
            # message (bidirectional streaming), is not an idle backend
            self.lastActivity = now
        remaining = self.lastActivity + self.timeout - now
        if remaining > 0:
            self.timer = protocol._reactor.callLater(remaining, self._timerFired)
            return
        self.timerKind = _T_NONE
        backend = protocol._pool.backend
        if kind == _T_HEAD:
            protocol._failStream(self, ResponseHeaderTimeout(
                f"{backend} sent no response head within {self.timeout:g}s"))
        else:
            protocol._failStream(self, ReadTimeout(
                f"{backend} sent no body byte for {self.timeout:g}s"))
        protocol._flush()


# ---------------------------------------------------------------- protocol


@implementer(IHandshakeListener, IPushProducer)
class _H2Protocol(Protocol):
    """
    One HTTP/2 connection to a backend, carrying any number of streams.  It
    is its transport's producer: a full write buffer pauses request bodies.
    """

    _log = Logger()

    def __init__(self, pool: "H2Pool", attempt: "_Attempt"):
        self._pool = pool
        self._attempt: Optional[_Attempt] = attempt
        self._reactor = pool._reactor
        self._seconds = pool._reactor.seconds
        self.conn = _newConnection()
        self._state = _SETUP
        self._streams: Dict[int, _Stream] = {}
        self._settingsReceived = False
        self._handshakeDone = False
        self._writePaused = False
        self._lost = False
        self._writable = True
        self._registered = False
        self._timer = None
        self._timerKind = _T_NONE
        self.idleSince = 0.0
        self._lostWaiters: List[Deferred] = []

    def __repr__(self) -> str:
        return f"<_H2Protocol {self._pool.backend} streams={len(self._streams)}>"

    @property
    def streamCount(self) -> int:
        """
        How many streams are open.
        """
        return len(self._streams)

    def canStart(self) -> bool:
        """
        Whether a new stream may start now.
        """
        if self._state != _READY:
            return False
        limit = min(self.conn.remote_settings.max_concurrent_streams,
                    self._pool.maxConcurrentStreams)
        return len(self._streams) < limit

    # -- connection lifecycle

    def connectionMade(self) -> None:
        self._pool._connectionMade(self)
        self.transport.registerProducer(self, True)
        self._registered = True
        self._flush()
        self._setTimer(_T_SETUP, self._pool.connectTimeout)

    def handshakeCompleted(self) -> None:
        self._handshakeDone = True
        # ALPN is settled now: a backend that did not choose h2 will not
        # send SETTINGS (an HTTP/1.1 server answers the preface with an
        # error, or closes), so say why at once
        if self._state == _SETUP and not self._alpnChoseH2():
            return
        self._checkReady()

    def _alpnChoseH2(self) -> bool:
        """
        Whether ALPN chose C{h2} (always, for h2c); if not, the setup fails
        with L{UpstreamTLSFailed}.
        """
        pool = self._pool
        if pool._tls is None:
            return True
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated == b"h2":
            return True
        self._setupFailed(UpstreamTLSFailed(
            f"{pool.backend}: backend did not negotiate h2 (ALPN: "
            f"{negotiated.decode('ascii', 'replace') if negotiated else 'none'})"))
        return False

    def _checkReady(self) -> None:
        if self._state != _SETUP or not self._settingsReceived:
            return
        if not self._alpnChoseH2():
            return
        pool = self._pool
        self._state = _READY
        self._cancelTimer()
        attempt, self._attempt = self._attempt, None
        pool._attemptReady(attempt, self)

    def _setupFailed(self, error: ConnectFailed) -> None:
        attempt, self._attempt = self._attempt, None
        self._abort()
        if attempt is not None:
            self._pool._attemptFailed(attempt, error)

    def whenLost(self) -> Deferred:
        """
        A Deferred that fires once this connection is closed.
        """
        if self._lost:
            return succeed(None)
        d: Deferred = Deferred()
        self._lostWaiters.append(d)
        return d

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:
        self._lost = True
        self._writable = False
        self._registered = False
        state = self._state
        self._state = _DEAD
        self._cancelTimer()
        pool = self._pool
        try:
            attempt, self._attempt = self._attempt, None
            if state == _SETUP and attempt is not None:
                if pool._tls is not None and (not self._handshakeDone or _isTLSError(reason)):
                    error = _handshakeError(reason, pool)
                else:
                    error = ConnectFailed(
                        f"{pool.backend}: connection closed before the HTTP/2 SETTINGS "
                        f"({reason.getErrorMessage()})")
                pool._attemptFailed(attempt, error)
            self._failAll(
                UpstreamReset(f"{pool.backend} closed the connection before answering"),
                UpstreamReset(f"{pool.backend} closed the connection in the middle of the body"),
            )
        finally:
            pool._connectionLost(self)
            waiters, self._lostWaiters = self._lostWaiters, []
            for d in waiters:
                d.callback(None)

    def _failAll(self, headError: UpstreamError, bodyError: Exception) -> None:
        """
        Fail every stream: those without a response head with C{headError},
        the bodies of the others with C{bodyError}.
        """
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            self._closeStream(stream)
            response = stream.response
            if response is None:
                call, stream.call = stream.call, None
                if call is not None:
                    call.fail(headError)
            else:
                response._bodyEnded(Failure(bodyError))

    def _abort(self) -> None:
        """
        Drop the connection now.
        """
        if self._state != _DEAD:
            self._state = _DEAD
            self._pool._retire(self)
        self._cancelTimer()
        if self._writable:
            self._writable = False
            self._unregister()
            self.transport.abortConnection()

    def closeGracefully(self) -> None:
        """
        Say GOAWAY and close once written (streams in progress are reset).
        """
        if self._state == _DEAD and not self._writable:
            return
        if self._state != _DEAD:
            self._state = _DEAD
            self._pool._retire(self)
        self._cancelTimer()
        if self._writable:
            try:
                self.conn.close_connection()
            except Exception:
                pass
            self._flush()
            self._writable = False
            # a registered producer would hold the close back
            self._unregister()
            self.transport.loseConnection()

    def closeForPool(self) -> None:
        """
        The pool is closing: fail the streams, close the connection.
        """
        backend = self._pool.backend
        if self._streams:
            self._failAll(UpstreamReset(f"the pool for {backend} was closed"), ConnectionAborted())
            self._abort()
        else:
            self.closeGracefully()

    # -- writing

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()

    def _flush(self) -> None:
        if self._writable:
            data = self.conn.data_to_send()
            if data:
                self.transport.write(data)

    def pauseProducing(self) -> None:
        self._writePaused = True

    def resumeProducing(self) -> None:
        if self._writePaused:
            self._writePaused = False
            self._pumpAll()

    def stopProducing(self) -> None:
        self._writePaused = True

    def _pumpAll(self) -> None:
        for stream in list(self._streams.values()):
            if not stream.sendDone:
                stream.pump()

    def _ack(self, streamId: int, flowLength: int) -> None:
        """
        C{flowLength} bytes of stream C{streamId} were consumed: give the
        backend its window back (for the connection, and the stream if open).
        """
        if flowLength and self._writable and self._state != _DEAD:
            self.conn.acknowledge_received_data(flowLength, streamId)
            self._flush()

    # -- streams

    def startStream(self, call: "H2Call") -> None:
        """
        Send C{call}'s request on a new stream.
        """
        pool = self._pool
        req = call.request
        conn = self.conn
        body = req.body
        kind = _SEND_NONE
        length: Optional[int] = None
        try:
            host, fields = _fields(req.headers)
            target = req.target
            if not target or target.translate(None, b" \r\n\x00") != target:
                raise ValueError(f"invalid target {target[:80]!r}")
            if body is None:
                if req.method in _BODY_METHODS:
                    length = 0
            elif isinstance(body, bytes):
                kind, length = _SEND_BYTES, len(body)
            elif _isBodyStream(body):
                kind, length = _SEND_STREAM, body.length
            elif hasattr(body, "read"):
                kind, length = _SEND_FILE, req.bodyLength
                body.seek(0)
            else:
                body = bytes(body)
                kind, length = _SEND_BYTES, len(body)
            if kind in (_SEND_BYTES, _SEND_FILE) and not length:
                kind = _SEND_NONE
            headers = [
                (b":method", req.method),
                (b":scheme", b"https" if pool._tls is not None else b"http"),
                (b":authority", host if host is not None else pool.authority),
                (b":path", req.target),
            ]
            headers.extend(fields)
            if length is not None:
                headers.append((b"content-length", b"%d" % (length,)))
            streamId = conn.get_next_available_stream_id()
            conn.send_headers(streamId, headers, end_stream=kind == _SEND_NONE)
        except NoAvailableStreamIDError:
            self._state = _CLOSING
            pool._retire(self)
            pool._start(call)
            self._closeIfDone()
            return
        except Exception as e:
            call.fail(UpstreamError(f"{pool.backend}: invalid request: {e}", requestSent=False))
            return
        stream = _Stream(self, call, streamId)
        self._streams[streamId] = stream
        call.stream = stream
        if self._timerKind == _T_IDLE:
            self._cancelTimer()
        stream.setTimer(_T_HEAD, pool.responseHeaderTimeout)
        if kind != _SEND_NONE:
            stream.kind = kind
            stream.body = body
            stream.sendDone = False
            stream.remaining = length or 0
        self._flush()
        if kind == _SEND_STREAM:
            body.deliver(stream)
        elif kind != _SEND_NONE:
            stream.pump()

    def _closeStream(self, stream: _Stream) -> None:
        stream.closed = True
        stream.cancelTimer()
        stream.stopBody()

    def _removeStream(self, stream: _Stream, reset: bool) -> bool:
        """
        Forget C{stream} (resetting it with CANCEL first when C{reset}).

        @return: whether it was still open.
        """
        if self._streams.pop(stream.id, None) is None:
            return False
        self._closeStream(stream)
        if reset and self._writable and self._state != _DEAD:
            try:
                self.conn.reset_stream(stream.id, ErrorCodes.CANCEL)
            except Exception:
                pass
            self._flush()
        self._pool._streamClosed(self)
        return True

    def _cancelStream(self, stream: _Stream) -> None:
        """
        The caller gave up on C{stream}: reset it.
        """
        self._removeStream(stream, True)

    def _failStream(self, stream: _Stream, error: Exception, reset: bool = True) -> None:
        """
        Reset C{stream} and tell its caller: C{error} for the call before the
        response head, or as the body's failure after.
        """
        if not self._removeStream(stream, reset):
            return
        response = stream.response
        if response is None:
            call, stream.call = stream.call, None
            if call is not None:
                call.fail(error)
        else:
            response._bodyEnded(Failure(error))

    def _sendFailed(self, stream: _Stream, why: str) -> None:
        self._failStream(stream, UpstreamError(f"{self._pool.backend}: {why}"))

    def _closeIfDone(self) -> None:
        if self._state == _CLOSING and not self._streams:
            self.closeGracefully()

    # -- receiving

    def dataReceived(self, data: bytes) -> None:
        if self._state == _DEAD:
            return
        if self._state == _SETUP and not self._settingsReceived and data[:5] == b"HTTP/":
            self._setupFailed(ConnectFailed(
                f"{self._pool.backend}: the backend answered in HTTP/1 "
                "(it does not speak h2c)"))
            return
        try:
            events = self.conn.receive_data(data)
        except Exception as e:
            self._protocolError(e)
            return
        for event in events:
            if self._state == _DEAD:
                break
            try:
                self._handle(event)
            except Exception:
                self._log.failure("Error while handling {event} from {backend}",
                                  event=event, backend=self._pool.backend)
        self._flush()

    def _protocolError(self, e: Exception) -> None:
        pool = self._pool
        self._log.warn("HTTP/2 protocol error from {backend}: {error}",
                       backend=pool.backend, error=e)
        message = f"{pool.backend}: HTTP/2 protocol error: {e}"
        self._flush()
        if self._state == _SETUP:
            self._setupFailed(ConnectFailed(message))
            return
        self._abort()
        error = InvalidResponse(message)
        self._failAll(error, error)

    def _handle(self, event) -> None:
        kind = type(event)
        if kind is DataReceived:
            stream = self._streams.get(event.stream_id)
            response = stream.response if stream is not None else None
            if response is None:
                self._ack(event.stream_id, event.flow_controlled_length)
                return
            stream.lastActivity = self._seconds()
            response._dataReceived(event.data, event.flow_controlled_length)
        elif kind is ResponseReceived:
            self._responseReceived(event)
        elif kind is StreamEnded:
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._streamEnded(stream)
        elif kind is TrailersReceived:
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.response is not None:
                stream.response.trailers = [
                    (name, value) for name, value in event.headers if name[:1] != b":"
                ]
        elif kind is WindowUpdated:
            if event.stream_id:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.pump()
            else:
                self._pumpAll()
        elif kind is StreamReset:
            self._streamReset(event)
        elif kind is InformationalResponseReceived:
            self._informational(event)
        elif kind is RemoteSettingsChanged:
            self._settingsChanged(event)
        elif kind is ConnectionTerminated:
            self._goAway(event)
        elif kind is PushedStreamReceived:
            self.conn.reset_stream(event.pushed_stream_id, ErrorCodes.REFUSED_STREAM)

    def _responseReceived(self, event) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.response is not None:
            return
        pool = self._pool
        status = None
        headers = []
        length: Optional[int] = None
        for name, value in event.headers:
            if name[:1] == b":":
                if name == b":status":
                    status = value
                continue
            if length is None and name == b"content-length" and value.isdigit():
                length = int(value)
            headers.append((name, value))
        if status is None or len(status) != 3 or not status.isdigit():
            self._failStream(stream, InvalidResponse(
                f"{pool.backend}: invalid :status {status!r} in a response"))
            return
        code = int(status)
        if stream.request.method == b"HEAD" or code in (204, 304):
            length = 0
        response = H2Response(stream, code, headers, length)
        stream.response = response
        stream.setTimer(_T_BODY, pool.readTimeout)
        call, stream.call = stream.call, None
        if call is not None:
            call.stream = None
            call.succeed(response)

    def _streamEnded(self, stream: _Stream) -> None:
        response = stream.response
        if response is None:
            return
        # a complete response before the whole request body: stop sending
        self._removeStream(stream, not stream.sendDone)
        response._bodyEnded(None)

    def _streamReset(self, event) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        backend = self._pool.backend
        code = event.error_code
        if not event.remote_reset:
            error: UpstreamError = InvalidResponse(
                f"{backend}: HTTP/2 protocol error on stream {stream.id} ({_errorName(code)})")
        elif stream.response is None:
            if code == ErrorCodes.REFUSED_STREAM:
                error = UpstreamReset(f"{backend} refused the stream (REFUSED_STREAM)",
                                      requestSent=False)
            else:
                error = UpstreamReset(f"{backend} reset the stream ({_errorName(code)})")
        else:
            error = UpstreamReset(
                f"{backend} reset the stream in the middle of the body ({_errorName(code)})")
        self._failStream(stream, error, reset=False)

    def _informational(self, event) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.response is not None:
            return
        callback = stream.request.onInformational
        status = b""
        headers = []
        for name, value in event.headers:
            if name == b":status":
                status = value
            elif name[:1] != b":":
                headers.append((name, value))
        if callback is None or not status.isdigit() or status == b"101":
            return
        code = int(status)
        try:
            callback(code, RESPONSES.get(code, b""), headers)
        except Exception:
            self._log.failure("onInformational callback failed")

    def _settingsChanged(self, event) -> None:
        if not self._settingsReceived:
            self._settingsReceived = True
            self._checkReady()
            return
        changed = event.changed_settings
        if SettingCodes.MAX_CONCURRENT_STREAMS in changed and self._state == _READY:
            self._pool._streamClosed(self)
        if SettingCodes.INITIAL_WINDOW_SIZE in changed or SettingCodes.MAX_FRAME_SIZE in changed:
            self._pumpAll()

    def _goAway(self, event) -> None:
        pool = self._pool
        lastStreamId = event.last_stream_id
        self._log.debug(
            "{backend} sent GOAWAY ({code}, last stream {last})",
            backend=pool.backend, code=_errorName(event.error_code), last=lastStreamId,
        )
        if self._state == _SETUP:
            self._setupFailed(ConnectFailed(
                f"{pool.backend}: the backend sent GOAWAY ({_errorName(event.error_code)}) "
                "before any request"))
            return
        if self._state == _READY:
            self._state = _CLOSING
            pool._retire(self)
        for streamId in sorted(self._streams):
            if streamId > lastStreamId:
                stream = self._streams.get(streamId)
                if stream is not None:
                    self._failStream(stream, UpstreamReset(
                        f"{pool.backend} is going away (GOAWAY) and did not process "
                        "the request", requestSent=False))
        self._closeIfDone()

    # -- connection timers

    def _setTimer(self, kind: int, timeout: float) -> None:
        self._cancelTimer()
        if not timeout or timeout <= 0:
            return
        self._timerKind = kind
        self._timer = self._reactor.callLater(timeout, self._timerFired)

    def _cancelTimer(self) -> None:
        self._timerKind = _T_NONE
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def setIdleTimer(self) -> None:
        """
        Close this connection after the pool's idle timeout unless a stream
        starts.
        """
        self.idleSince = self._seconds()
        self._setTimer(_T_IDLE, self._pool.idleTimeout)

    def _timerFired(self) -> None:
        self._timer = None
        kind, self._timerKind = self._timerKind, _T_NONE
        pool = self._pool
        if kind == _T_IDLE:
            if not self._streams:
                self.closeGracefully()
        elif kind == _T_SETUP and self._state == _SETUP:
            if pool._tls is not None and not self._handshakeDone:
                what = "TLS handshake"
            else:
                what = "HTTP/2 SETTINGS from the backend"
            self._setupFailed(ConnectFailed(
                f"{pool.backend}: {what} timed out after {pool.connectTimeout:g}s"))


# ---------------------------------------------------------------- pool


class H2Call:
    """
    One request sent with L{H2Pool.call} (or L{H2Pool.request}): like
    L{golb.upstream.UpstreamCall}, its receiver is told the outcome once,
    C{responseReceived(response)} with an L{H2Response} or
    C{requestFailed(reason)}; without a receiver, L{deferred} fires.

    @ivar deferred: the Deferred of L{H2Pool.request}, or L{None}.
    @ivar stream: the stream carrying the request, once it started.
    """

    __slots__ = ("pool", "request", "receiver", "deferred", "stream", "attempt", "done")

    def __init__(self, pool: "H2Pool", request: UpstreamRequest, receiver=None):
        self.pool = pool
        self.request = request
        self.receiver = receiver
        self.deferred: Optional[Deferred] = None
        self.stream: Optional[_Stream] = None
        self.attempt: Optional[_Attempt] = None
        self.done = False

    def start(self) -> None:
        """
        Send the request: on a connection with a free stream slot, on one
        being made, or on a new one.
        """
        self.pool._start(self)

    def cancel(self) -> None:
        """
        Abandon the request unless its outcome is known: its stream is reset
        (the connection stays) and the receiver gets L{CancelledError}.
        """
        if self.receiver is None:
            self.deferred.cancel()
            return
        if self.done:
            return
        self._abandon(None)
        self.receiver.requestFailed(Failure(CancelledError()))

    def _abandon(self, d: Optional[Deferred]) -> None:
        self.done = True
        attempt, stream = self.attempt, self.stream
        self.attempt = self.stream = None
        if attempt is not None:
            attempt.forget(self)
        elif stream is not None and not stream.closed:
            stream.call = None
            stream.protocol._cancelStream(stream)

    def succeed(self, response: H2Response) -> None:
        if not self.done:
            self.done = True
            receiver = self.receiver
            if receiver is None:
                self.deferred.callback(response)
            else:
                receiver.responseReceived(response)

    def fail(self, error: Exception) -> None:
        if not self.done:
            self.done = True
            self.stream = self.attempt = None
            receiver = self.receiver
            if receiver is None:
                self.deferred.errback(Failure(error))
            else:
                receiver.requestFailed(Failure(error))


class _Attempt:
    """
    A connection being made, and the calls waiting for it.
    """

    def __init__(self):
        self.queue: List[H2Call] = []
        self.deferred: Optional[Deferred] = None
        self.protocol: Optional[_H2Protocol] = None
        self.done = False

    def forget(self, call: H2Call) -> None:
        try:
            self.queue.remove(call)
        except ValueError:
            pass


class _H2Factory(Factory):
    noisy = False

    def __init__(self, pool: "H2Pool", attempt: _Attempt):
        self._pool = pool
        self._attempt = attempt

    def buildProtocol(self, addr):
        protocol = _H2Protocol(self._pool, self._attempt)
        self._attempt.protocol = protocol
        return protocol


class H2Pool(BackendConnections):
    """
    HTTP/2 connections to one backend, each carrying many streams; the same
    interface as L{golb.upstream.UpstreamPool}.

    Counting connections: a connection is I{active} while it carries streams
    or is being made, I{idle} while it is ready and carries none;
    C{connectionCount} is their sum.

    @ivar totalConnectionsMade: how many connections were made so far.
    @ivar backend: C{"host:port"}, for messages.
    @ivar authority: the C{:authority} of requests without a Host header.
    """

    _log = Logger()

    def __init__(self, reactor, host: str, port: int, *, tls=None, maxIdle: int = 32,
                 idleTimeout: float = 60.0, connectTimeout: float = 3.0,
                 responseHeaderTimeout: float = 30.0, readTimeout: float = 60.0,
                 maxConcurrentStreams: int = 100):
        """
        @param reactor: the reactor (L{None} for the global one).
        @param tls: L{None} for h2c (prior knowledge), or an
            C{IOpenSSLClientConnectionCreator} offering C{h2} by ALPN
            (C{optionsForClientTLS(..., acceptableProtocols=[b"h2"])}).
        @param maxIdle: how many idle connections to keep.
        @param idleTimeout: seconds after which an idle connection closes.
        @param connectTimeout: seconds for TCP connect, then again for the
            TLS handshake and the backend's SETTINGS.
        @param responseHeaderTimeout: seconds from the request being sent to
            its response head (not counting time spent waiting for a
            streamed request body's source).
        @param readTimeout: seconds without a body byte (while not paused).
        @param maxConcurrentStreams: the most streams per connection, even
            when the backend allows more.
        """
        if maxConcurrentStreams < 1:
            raise ValueError("maxConcurrentStreams must be at least 1")
        BackendConnections.__init__(self, reactor, host, port, tls, maxIdle, idleTimeout,
                                    connectTimeout, responseHeaderTimeout, readTimeout)
        self.authority = self.backend.encode("idna")
        self.maxConcurrentStreams = maxConcurrentStreams
        self._attempts: List[_Attempt] = []
        self._ready: List[_H2Protocol] = []
        self._connections: set = set()

    def _busy(self) -> bool:
        return bool(self._connections or self._attempts)

    def __repr__(self) -> str:
        return (f"<H2Pool {self.backend} idle={self.idleCount} active={self.activeCount} "
                f"streams={self.streamCount}>")

    @property
    def idleCount(self) -> int:
        """
        How many ready connections carry no stream.
        """
        return sum(1 for protocol in self._ready
                   if not protocol._streams and protocol._state == _READY)

    @property
    def activeCount(self) -> int:
        """
        How many connections carry streams or are being made.
        """
        busy = sum(1 for protocol in self._connections
                   if protocol._streams and protocol._state != _SETUP)
        return busy + len(self._attempts)

    @property
    def connectingCount(self) -> int:
        """
        How many connections are being made (TCP, TLS, SETTINGS).
        """
        return len(self._attempts)

    @property
    def connectionCount(self) -> int:
        """
        How many connections are open or being made (idle ones included).
        """
        return self.activeCount + self.idleCount

    @property
    def streamCount(self) -> int:
        """
        How many requests are in progress on this pool's connections.
        """
        return sum(len(protocol._streams) for protocol in self._connections)

    @property
    def hasCapacity(self) -> bool:
        """
        Whether a request could start now without a new connection.
        """
        return any(protocol.canStart() for protocol in self._ready)

    def closeOneIdle(self) -> bool:
        """
        Close the idle connection unused for longest, if there is one.

        @return: whether one was closed.
        """
        idle = [protocol for protocol in self._ready if not protocol._streams]
        if not idle:
            return False
        min(idle, key=lambda protocol: protocol.idleSince).closeGracefully()
        return True

    def request(self, req: UpstreamRequest) -> Deferred:
        """
        Send C{req} and wait for the final response head.

        @return: a Deferred firing with an L{H2Response}, or failing with
            L{ConnectFailed}, L{UpstreamReset}, L{ResponseHeaderTimeout} or
            L{InvalidResponse} (L{CancelledError} when cancelled).
        """
        call = H2Call(self, req)
        d = call.deferred = Deferred(call._abandon)
        self._start(call)
        return d

    def call(self, req: UpstreamRequest, receiver) -> H2Call:
        """
        Prepare sending C{req}, its outcome told to C{receiver} (see
        L{H2Call}); nothing is sent before the call's C{start}.
        """
        return H2Call(self, req, receiver)

    def closeCachedConnections(self) -> Deferred:
        """
        Close the idle connections.

        @return: a Deferred that fires once they are closed.
        """
        waits = []
        for protocol in [p for p in self._ready if not p._streams]:
            waits.append(protocol.whenLost())
            protocol.closeGracefully()
        return DeferredList(waits).addCallback(lambda _: None)

    def close(self) -> Deferred:
        """
        Close idle connections, fail the streams of active ones and pending
        connects, and refuse new requests.

        @return: a Deferred that fires once every connection is gone.
        """
        self._closed = True
        for attempt in list(self._attempts):
            self._attemptFailed(attempt, ConnectFailed(f"the pool for {self.backend} was closed"))
            if attempt.deferred is not None:
                attempt.deferred.cancel()
        for protocol in list(self._connections):
            if protocol._state == _SETUP:
                protocol._abort()
            else:
                protocol.closeForPool()
        return self._whenClosed()

    # -- internal

    def _start(self, call: H2Call) -> None:
        if call.done:
            return
        if self._closed:
            call.fail(ConnectFailed(f"the pool for {self.backend} is closed"))
            return
        for protocol in self._ready:
            if protocol.canStart():
                protocol.startStream(call)
                return
        for attempt in self._attempts:
            if len(attempt.queue) < self.maxConcurrentStreams:
                attempt.queue.append(call)
                call.attempt = attempt
                return
        self._connect(call)

    def _connect(self, call: H2Call) -> None:
        attempt = _Attempt()
        attempt.queue.append(call)
        call.attempt = attempt
        self._attempts.append(attempt)
        d = self._endpoint.connect(_H2Factory(self, attempt))
        if not attempt.done:
            attempt.deferred = d

        def connected(protocol):
            attempt.deferred = None

        def failed(reason):
            attempt.deferred = None
            if not attempt.done:
                self._attemptFailed(attempt, _connectError(reason, self))

        d.addCallbacks(connected, failed)

    def _connectionMade(self, protocol: _H2Protocol) -> None:
        self._connections.add(protocol)
        self.totalConnectionsMade += 1

    def _attemptReady(self, attempt: Optional[_Attempt], protocol: _H2Protocol) -> None:
        queue: List[H2Call] = []
        if attempt is not None:
            attempt.done = True
            if attempt in self._attempts:
                self._attempts.remove(attempt)
            queue, attempt.queue = attempt.queue, []
        if self._closed:
            protocol.closeGracefully()
            for call in queue:
                call.attempt = None
                call.fail(ConnectFailed(f"the pool for {self.backend} was closed"))
            return
        self._ready.append(protocol)
        if queue and not protocol.canStart():
            error = ConnectFailed(f"{self.backend}: the backend allows no streams "
                                  "(SETTINGS_MAX_CONCURRENT_STREAMS 0)")
            for call in queue:
                call.attempt = None
                call.fail(error)
            queue = []
        for call in queue:
            call.attempt = None
            if call.done:
                continue
            if protocol.canStart():
                protocol.startStream(call)
            else:
                self._start(call)
        if not protocol._streams and protocol._state == _READY:
            self._becameIdle(protocol)

    def _attemptFailed(self, attempt: _Attempt, error: ConnectFailed) -> None:
        if attempt.done:
            return
        attempt.done = True
        if attempt in self._attempts:
            self._attempts.remove(attempt)
        queue, attempt.queue = attempt.queue, []
        for call in queue:
            call.attempt = None
            call.fail(error)
        self._checkClosed()

    def _takeQueued(self) -> Optional[H2Call]:
        for attempt in self._attempts:
            while attempt.queue:
                call = attempt.queue.pop(0)
                call.attempt = None
                if not call.done:
                    return call
        return None

    def _streamClosed(self, protocol: _H2Protocol) -> None:
        """
        A stream of C{protocol} ended, or its stream limit grew: give the
        slot to a call waiting for a connection, or let the connection idle.
        """
        state = protocol._state
        if state == _READY:
            while protocol.canStart():
                call = self._takeQueued()
                if call is None:
                    break
                protocol.startStream(call)
            if not protocol._streams and protocol._state == _READY:
                self._becameIdle(protocol)
        elif state == _CLOSING:
            protocol._closeIfDone()

    def _becameIdle(self, protocol: _H2Protocol) -> None:
        if self._closed or self.idleCount > self.maxIdle:
            protocol.closeGracefully()
        else:
            protocol.setIdleTimer()

    def _retire(self, protocol: _H2Protocol) -> None:
        """
        C{protocol} takes no new streams any more.
        """
        try:
            self._ready.remove(protocol)
        except ValueError:
            pass

    def _connectionLost(self, protocol: _H2Protocol) -> None:
        self._retire(protocol)
        self._connections.discard(protocol)
        self._checkClosed()

