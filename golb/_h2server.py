"""
The client-facing HTTP/2 server of a golb listener (RFC 9113), on the C{h2}
package.

An L{H2Channel} is one HTTP/2 connection; each of its streams is an
L{H2Stream}, which is to its request what L{golb._fastchannel.FastChannel}
is to an HTTP/1.1 one: the C{channel} (and C{transport}) of a request built
by the site's C{requestFactory} (a L{golb.listener.GolbRequest}), so that
routing, policies, the observatory and the proxy see an HTTP/2 request as
they see any other, with C{clientproto} C{b"HTTP/2"} and C{:authority} as
its C{Host}.

Request bodies are buffered in C{request.content} and the request reaches
its resource at the end of the stream, as on HTTP/1.1; the exception is
gRPC (C{content-type: application/grpc...}): such a request reaches its
resource as soon as its headers arrive, with an empty C{content} and a
L{golb.streams.BodyStream} as C{request.bodyStream}, which gets the body
while it arrives and the client's trailers at its end.  Received data is
acknowledged (the client's window opened again) only once buffered, or
while the L{BodyStream} is not paused.

Responses: data is sent within the client's flow-control windows, streams
taking turns frame by frame; what cannot be sent yet is queued, and the
request's producer (C{request.registerProducer}) is paused while its stream
has a queue, so that a client that does not read makes golb stop reading
its backend instead of buffering.  When the transport's buffer is full the
connection stops reading from the client.  C{request.responseTrailers}
(C{[(name, value)]} set before C{request.finish()}) are sent as the
response's final HEADERS frame.

Malformed requests (pseudo-header fields missing, repeated, unknown or
after regular fields, upper-case or connection-specific fields) reset
their stream with C{PROTOCOL_ERROR}; errors golb can answer (a missing
Host, too many fields, a body over C{maxBodyBytes}, a body not received in
time) get golb's error response (for gRPC calls, the error's gRPC status,
also once the call is with the proxy), then the stream is reset with
C{NO_ERROR} when the client is still sending.  Connection errors (found by
C{h2}) end the connection with a GOAWAY carrying their error code; C{h2}
also makes connection errors of a few stream errors: a body that does not
match its C{content-length}, a header list over C{maxHeaderBytes}, more
streams than C{SETTINGS_MAX_CONCURRENT_STREAMS}.

L{SwitchingChannel} is the protocol of every golb listener: a
L{FastChannel} that, on its first bytes, becomes an L{H2Channel} when TLS
negotiated C{h2} (ALPN) or, on a listener with C{h2c}, when the bytes are
the HTTP/2 connection preface.
"""

import io
import re
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.http import _nameEncoder
from twisted.web.http_headers import InvalidHeaderName
from zope.interface import implementer

from golb._channel import _DEAD, _HOST, _TARGET, httpDate
from golb._fastchannel import _TOKEN, FastChannel
from golb._writes import directWrite
from golb.errors import GolbError, errorBody, wantsJSON
from golb.streams import BodyStream

__all__ = ["PREFACE", "H2Channel", "H2Stream", "SwitchingChannel", "isGRPC"]

#: The first bytes of every HTTP/2 connection (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Header = Tuple[bytes, bytes]

# Fields that only mean something on one HTTP/1.1 connection (RFC 9113
# section 8.2.2): a request carrying one is malformed, a response drops them.
_CONNECTION_HEADERS = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)
_RESPONSE_DROPPED = _CONNECTION_HEADERS | {b"te"}
# A field name: a lower-case token (RFC 9113 section 8.2.1).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
# A field value: no NUL, CR or LF, no leading or trailing space or tab.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_SCHEMES = frozenset([b"http", b"https"])
_encodeName = _nameEncoder.encode


class _Malformed(Exception):
    """
    A malformed request: its stream is reset with C{PROTOCOL_ERROR}.
    """


def isGRPC(contentType: Optional[bytes]) -> bool:
    """
    Whether C{contentType} is gRPC's: C{application/grpc}, optionally with
    a C{+format} suffix or parameters.
    """
    if not contentType or not contentType[:16].lower() == b"application/grpc":
        return False
    return len(contentType) == 16 or contentType[16:17] in (b"+", b";", b" ")


def _grpcStatusFields(error: GolbError) -> List[Header]:
    """
    The C{grpc-status}, C{grpc-message} and C{X-Golb-Error} fields telling
    a gRPC client about C{error}.
    """
    from golb.grpc import percentEncodeMessage, statusForError

    code, message = statusForError(error)
    return [(b"grpc-status", b"%d" % (code,)),
            (b"grpc-message", percentEncodeMessage(message)),
            (b"x-golb-error", error.code.encode("ascii"))]


def _checkFields(headers, raw: Optional[dict], maxCount: int):
    """
    Check the fields of a request head (or of trailers when C{raw} is
    L{None}) and store the regular ones in C{raw} (a L{Headers}' raw dict).

    @return: C{(pseudo, hosts, count)}: the pseudo-header fields by name,
        the C{host} values and the number of regular fields; trailers are
        returned as C{[(name, value)]} instead.
    @raise _Malformed: the fields are malformed.
    """
    pseudo: Dict[bytes, bytes] = {}
    hosts: List[bytes] = []
    trailers: List[Header] = []
    regular = False
    count = 0
    for name, value in headers:
        if name[:1] == b":":
            if regular or raw is None:
                raise _Malformed("pseudo-header field after a regular one, or in trailers")
            if name not in (b":method", b":scheme", b":authority", b":path"):
                raise _Malformed(f"pseudo-header field {name!r}")
            if name in pseudo:
                raise _Malformed(f"repeated {name!r}")
            pseudo[name] = value
            continue
        regular = True
        count += 1
        if _NAME.match(name) is None:
            raise _Malformed(f"field name {name!r}")
        if name in _CONNECTION_HEADERS:
            raise _Malformed(f"connection-specific field {name!r}")
        if name == b"te" and value.lower() != b"trailers":
            raise _Malformed("te other than trailers")
        if value and _BAD_VALUE.search(value) is not None:
            raise _Malformed(f"value of {name!r}")
        if raw is None:
            trailers.append((name, value))
            continue
        if count > maxCount:
            continue
        if name == b"host":
            hosts.append(value)
            continue
        try:
            canonical = _encodeName(name)
        except InvalidHeaderName:
            raise _Malformed(f"field name {name!r}") from None
        values = raw.get(canonical)
        if values is None:
            raw[canonical] = [value]
        else:
            values.append(value)
    if raw is None:
        return trailers
    return pseudo, hosts, count


@implementer(ITransport, IConsumer, IPushProducer)
class H2Stream:
    """
    One stream of an L{H2Channel}: the channel and the transport of its
    request.

    As a consumer it takes the response (C{writeHeaders}, C{write},
    C{registerProducer}, C{requestDone}); as a push producer it is the
    source of the request body (the producer of C{request.bodyStream}):
    paused, it stops opening the client's window.

    @ivar streamID: the stream's number.
    @ivar request: its request.
    @ivar bodyStream: the L{BodyStream} of a request dispatched while its
        body arrives, else L{None}.
    @ivar producer: the response's producer, if one is registered.
    """

    producer = None
    bodyStream: Optional[BodyStream] = None

    def __init__(self, connection: "H2Channel", streamID: int):
        self._connection = connection
        self.streamID = streamID
        self.site = connection.site
        self.factory = connection.factory
        self.transport = self
        self.request = None
        self._command: Optional[bytes] = None
        self._path: Optional[bytes] = None
        # response side
        self._out: Deque[bytes] = deque()
        self._offset = 0
        self._outBytes = 0
        self._ending = False
        self._trailers: Optional[List[Header]] = None
        self._head: Optional[List[Header]] = None
        self._headSent = False
        self._ended = False
        self._inReady = False
        self._streaming = True
        self._producerPaused = False
        self._pulling = False
        self._pullAgain = False
        # request side
        self._inputDone = False
        self._dispatched = False
        self._rejected = False
        self._inPaused = False
        self._discard = False
        self._unacked = 0
        self._inTrailers: List[Header] = []
        self._timer = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<H2Stream {self.streamID} {self._command!r} {self._path!r}>"

    # -- what Request asks of its channel

    @property
    def _golbPeer(self):
        return self._connection._golbPeer

    @_golbPeer.setter
    def _golbPeer(self, value):
        self._connection._golbPeer = value

    def getPeer(self):
        """
        The client's address.
        """
        return self._connection.getPeer()

    def getHost(self):
        """
        golb's address.
        """
        return self._connection.getHost()

    def isSecure(self) -> bool:
        """
        Whether the connection is TLS.
        """
        return self._connection.isSecure()

    def writeHeaders(self, version, code: bytes, reason, headers) -> None:
        """
        Send the response head (connection-specific fields left out).
        """
        if self.closed or self._headSent:
            return
        fields = [(b":status", code)]
        raw = headers._rawHeaders
        for name, values in raw.items():
            name = name.lower()
            if name in _RESPONSE_DROPPED:
                continue
            for value in values:
                fields.append((name, value))
        if b"Date" not in raw:
            # golb's own answers (a proxied response has its backend's)
            fields.append((b"date", httpDate()))
        self._headSent = True
        self._head = fields
        # not sent yet: if the response ends (or its body starts) in the
        # same call, the head goes with it, which is how a response without
        # a body ends with its HEADERS frame (gRPC's "trailers-only")
        self._connection._headWaiting(self)

    def write(self, data: bytes) -> None:
        """
        Queue response body bytes; they are sent within the client's
        windows.  The producer is paused while some cannot be sent yet.
        """
        if self.closed or self._ending or not data:
            return
        self._out.append(data)
        self._outBytes += len(data)
        connection = self._connection
        connection._wantSend(self)
        if self._outBytes and not (connection._flushing or connection._holding):
            self._pauseProducer()

    def writeSequence(self, data) -> None:
        """
        Queue several pieces of response body.
        """
        for piece in data:
            self.write(piece)

    def requestDone(self, request) -> None:
        """
        The response is finished: end the stream after the queued data,
        with C{request.responseTrailers} when there are some.
        """
        if self.closed or self._ending:
            return
        self._ending = True
        trailers = getattr(request, "responseTrailers", None)
        if trailers:
            fields = []
            for name, value in trailers:
                name = name.lower()
                if name[:1] == b":" or name in _RESPONSE_DROPPED:
                    continue
                fields.append((name, value))
            self._trailers = fields or None
        self._connection._wantSend(self)

    def registerProducer(self, producer, streaming: bool) -> None:
        """
        Take the response from C{producer}; a push producer is paused while
        the stream has a queue, a pull producer asked for more whenever it
        has none.
        """
        if self.producer is not None:
            raise ValueError(
                f"registering producer {producer} before {self.producer} was unregistered"
            )
        self.producer = producer
        self._streaming = streaming
        self._producerPaused = False
        if self.closed:
            return
        if streaming:
            if self._outBytes:
                self._pauseProducer()
        elif not self._outBytes:
            self._pull()

    def unregisterProducer(self) -> None:
        """
        Forget the response's producer.
        """
        self.producer = None
        self._producerPaused = False

    def loseConnection(self) -> None:
        """
        Give up on the response (a backend cut it short): unless it is
        complete, the stream is reset so the client sees it is truncated.
        """
        if not self.closed and not self._ending:
            self._connection._resetStream(
                self, ErrorCodes.INTERNAL_ERROR, ConnectionDone("stream reset by golb")
            )

    def abortConnection(self) -> None:
        """
        Reset the stream, whatever its state.
        """
        if not self.closed:
            self._connection._resetStream(
                self, ErrorCodes.CANCEL, ConnectionLost("stream aborted by golb")
            )

    def rejectAndClose(self, error: GolbError) -> None:
        """
        Answer the request with C{error} and stop reading it; a gRPC call
        gets C{error} as its gRPC status.  Once the request is with its
        resource this resets the stream instead, except for a gRPC call,
        which ends with its status (L{_rejectCall}).
        """
        if self.closed or self._rejected:
            return
        request = self.request
        grpc = False
        if request is not None:
            contentType = request.requestHeaders.getRawHeaders(b"content-type")
            grpc = bool(contentType) and isGRPC(contentType[0])
        if self._dispatched or self._headSent:
            if grpc and not self._ending:
                self._rejectCall(error)
                return
            self._connection._resetStream(
                self, ErrorCodes.CANCEL, ConnectionLost(f"request rejected: {error}")
            )
            return
        self._rejected = True
        self._cancelTimer()
        connection = self._connection
        connection._rejected(error.status, error.code)
        accept = None
        if request is not None:
            values = request.requestHeaders.getRawHeaders(b"accept")
            accept = values[0] if values else None
            if request.content is not None:
                request.content.close()
                request.content = None
        if grpc:
            # what gRPC clients read: a "trailers-only" response
            fields = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                      *_grpcStatusFields(error)]
            body = b""
        else:
            contentType, body = errorBody(error.status, error.code, error.message,
                                          wantsJSON(accept))
            fields = [
                (b":status", b"%d" % (error.status,)),
                (b"content-type", contentType),
                (b"content-length", b"%d" % (len(body),)),
                (b"x-golb-error", error.code.encode("ascii")),
                (b"cache-control", b"no-store"),
            ]
        for name, value in error.headers:
            fields.append((name.lower(), value))
        self._headSent = True
        self._head = fields
        if body and self._command != b"HEAD":
            self._out.append(body)
            self._outBytes += len(body)
        self._ending = True
        connection._wantSend(self)

    def _rejectCall(self, error: GolbError) -> None:
        """
        End a gRPC call already with its resource (the proxy) with
        C{error} as its gRPC status: in the head when no response began
        (trailers-only), else in trailers after what was queued.  The
        request is told the client went away, so the backend call is
        cancelled, and the rest of the request body is dropped.
        """
        connection = self._connection
        self._rejected = True
        self._discard = True
        self._cancelTimer()
        status = _grpcStatusFields(error)
        if self._headSent:
            self._trailers = status
        else:
            self._headSent = True
            self._head = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                          *status]
        self._ending = True
        reason = Failure(ConnectionLost(f"request rejected: {error}"))
        request = self.request
        record = getattr(request, "record", None)
        if record is not None:
            record.error = error.code
        if request is not None and not request.finished:
            request.connectionLost(reason)
        body = self.bodyStream
        if body is not None and not body.ended:
            body.fail(reason)
        if not self.closed:
            connection._wantSend(self)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.rejectAndClose(GolbError("bad-request"))

    # -- the request body, as the producer of its BodyStream

    def pauseProducing(self) -> None:
        """
        Stop opening the client's window for this stream.
        """
        self._inPaused = True

    def resumeProducing(self) -> None:
        """
        Open the client's window again by what was received meanwhile.
        """
        self._inPaused = False
        unacked, self._unacked = self._unacked, 0
        if unacked:
            self._connection._ack(unacked, self.streamID)
            self._connection._write()

    def stopProducing(self) -> None:
        """
        The body's receiver gave up: the rest of the body is dropped.
        """
        self._discard = True
        self.resumeProducing()

    # -- events from the connection

    def headersReceived(self, headers, ended: bool) -> None:
        """
        The request head arrived (and, with C{ended}, the whole request).
        """
        connection = self._connection
        request = connection._newRequest(self)
        self.request = request
        self._inputDone = ended
        site = self.site
        raw = request.requestHeaders._rawHeaders
        try:
            pseudo, hosts, count = _checkFields(
                headers, raw, getattr(site, "maxHeaderCount", 500)
            )
            method = pseudo.get(b":method")
            if method is None or _TOKEN.match(method) is None:
                raise _Malformed("no valid :method")
            self._command = method
            scheme = pseudo.get(b":scheme")
            path = pseudo.get(b":path")
            authority = pseudo.get(b":authority")
            if method == b"CONNECT":
                if scheme is not None or path is not None:
                    raise _Malformed("CONNECT with :scheme or :path")
                raise GolbError("bad-request", "CONNECT is not supported over HTTP/2.")
            if scheme is None or scheme.lower() not in _SCHEMES:
                raise _Malformed("no http or https :scheme")
            if not path or _TARGET.match(path) is None:
                raise _Malformed("no valid :path")
            if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
                raise _Malformed("a :path that is not origin-form")
            self._path = path
            if authority is not None:
                if not authority or _HOST.match(authority) is None:
                    raise _Malformed("invalid :authority")
                for host in hosts:
                    if host != authority:
                        raise _Malformed("a Host different from :authority")
                raw[b"Host"] = [authority]
            elif len(hosts) != 1 or not hosts[0] or _HOST.match(hosts[0]) is None:
                raise GolbError("bad-request", "HTTP/2 requests need an :authority.")
            else:
                raw[b"Host"] = hosts
            if count > getattr(site, "maxHeaderCount", 500):
                raise GolbError("headers-too-large")
        except _Malformed as e:
            connection._malformed(self, str(e))
            return
        except GolbError as e:
            self.rejectAndClose(e)
            return
        lengths = raw.get(b"Content-Length")
        length = None
        if lengths:
            # h2 has checked that they are digits, and all the same
            length = int(lengths[0])
            raw[b"Content-Length"] = [b"%d" % (length,)]
        if b"Cookie" in raw:
            request.parseCookies()
        limit = request.maxBodyBytes
        if limit is not None and length is not None and length > limit:
            self.rejectAndClose(GolbError("body-too-large"))
            return
        contentType = raw.get(b"Content-Type")
        if contentType and isGRPC(contentType[0]):
            request.content = io.BytesIO()
            body = self.bodyStream = BodyStream(self, length)
            request.bodyStream = body
            if ended:
                body.finish()
            self._dispatch()
            return
        if ended:
            request.gotLength(0)
            self._dispatch()
            return
        request.gotLength(length)
        expect = raw.get(b"Expect")
        if expect and expect[0].lower() == b"100-continue":
            connection._continue(self)
        timeout = getattr(site, "requestHeaderTimeout", None)
        if timeout is not None:
            self._timer = connection.callLater(timeout, self._timedOut)

    def dataReceived(self, data: bytes, flowLength: int) -> None:
        """
        Body bytes arrived; C{flowLength} of the window they used (padding
        included) is given back once they are consumed.
        """
        connection = self._connection
        if self.closed or self._rejected or self._discard or self._inputDone:
            connection._ack(flowLength, self.streamID)
            return
        request = self.request
        body = self.bodyStream
        if body is None:
            request.handleContentChunk(data)
            connection._ack(flowLength, self.streamID)
            return
        request.bodyLength += len(data)
        limit = request.maxBodyBytes
        if limit is not None and request.bodyLength > limit:
            connection._ack(flowLength, self.streamID)
            self.rejectAndClose(GolbError("body-too-large"))
            return
        body.write(data)
        if self._inPaused:
            self._unacked += flowLength
        else:
            connection._ack(flowLength, self.streamID)

    def trailersReceived(self, headers) -> None:
        """
        The client's trailers arrived (the end of the stream follows).
        """
        try:
            self._inTrailers = _checkFields(headers, None, 0)
        except _Malformed as e:
            self._connection._malformed(self, str(e))

    def inputEnded(self) -> None:
        """
        The client ended its side of the stream: the request is complete.
        """
        if self._inputDone:
            return
        self._inputDone = True
        if self.closed or self._rejected:
            return
        if self.bodyStream is not None:
            self.bodyStream.finish(self._inTrailers)
        elif not self._dispatched:
            self._dispatch()

    def _dispatch(self) -> None:
        self._dispatched = True
        self._cancelTimer()
        self.request.requestReceived(self._command, self._path, b"HTTP/2")

    def _timedOut(self) -> None:
        self._timer = None
        if not self._dispatched and not self.closed:
            self.rejectAndClose(GolbError("request-timeout"))

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _lost(self, reason: Failure) -> None:
        """
        The stream is gone (reset by either side, or the connection lost):
        tell the request and its body.
        """
        if self.closed:
            return
        self.closed = True
        self._cancelTimer()
        self._out.clear()
        self._outBytes = 0
        self.producer = None
        # The request first: the proxy then knows the client went away and
        # cancels the backend call, instead of taking the failed body for
        # a backend failure.
        request = self.request
        if request is not None and not request.finished and not self._rejected:
            request.connectionLost(reason)
        body = self.bodyStream
        if body is not None and not body.ended:
            body.fail(reason)

    # -- sending

    def _take(self, size: int) -> bytes:
        """
        Up to C{size} queued bytes, removed from the queue.
        """
        out = self._out
        first = out[0]
        offset = self._offset
        available = len(first) - offset
        if available > size:
            self._offset = offset + size
            return first[offset:offset + size]
        out.popleft()
        self._offset = 0
        piece = first[offset:] if offset else first
        if available == size or not out:
            return piece
        parts = [piece]
        total = available
        while out and total < size:
            following = out[0]
            room = size - total
            if len(following) <= room:
                out.popleft()
                parts.append(following)
                total += len(following)
            else:
                parts.append(following[:room])
                self._offset = room
                total = size
        return b"".join(parts)

    def _pauseProducer(self) -> None:
        producer = self.producer
        if producer is not None and self._streaming and not self._producerPaused:
            self._producerPaused = True
            producer.pauseProducing()

    def _resumeProducer(self) -> None:
        producer = self.producer
        if producer is None:
            return
        if not self._streaming:
            self._pull()
        elif self._producerPaused:
            self._producerPaused = False
            producer.resumeProducing()

    def _pull(self) -> None:
        """
        Ask a pull producer for more, iteratively rather than recursively
        when it writes from within C{resumeProducing}.
        """
        if self._pulling:
            self._pullAgain = True
            return
        self._pulling = True
        try:
            while True:
                self._pullAgain = False
                producer = self.producer
                if producer is None or self.closed:
                    return
                producer.resumeProducing()
                if not self._pullAgain or self._outBytes:
                    return
        finally:
            self._pulling = False


@implementer(ISSLTransport)
class _SecureH2Stream(H2Stream):
    """
    A stream of a TLS connection: the connection's certificates are its
    own (for L{golb.tls.tlsClientCertificate}).
    """

    def getPeerCertificate(self):
        """
        The client's certificate, from the connection.
        """
        return self._connection.transport.getPeerCertificate()

    def getHandle(self):
        """
        The connection's C{SSL.Connection}.
        """
        return self._connection.transport.getHandle()

    @property
    def negotiatedProtocol(self):
        return b"h2"

    @property
    def _golbClientCertificate(self):
        return self._connection.transport._golbClientCertificate

    @_golbClientCertificate.setter
    def _golbClientCertificate(self, value):
        self._connection.transport._golbClientCertificate = value


class H2Channel(Protocol, TimeoutMixin):
    """
    One HTTP/2 connection of a golb listener; see the module docstring.

    Like L{golb._channel.GolbChannel}, it counts itself in the site's
    C{openConnections} and can be drained.  Built by L{SwitchingChannel}
    (or by a site whose C{protocol} it is, for prior knowledge only).

    @ivar streams: the streams in progress, by number.
    @ivar conn: the C{h2} connection state machine.
    @ivar initialWindowSize: the window each stream starts with (bytes the
        client may send before golb consumed them).
    @ivar connectionWindowSize: the connection's window.
    @ivar maxConcurrentStreams: the most streams at once, unless the site
        says otherwise (C{site.maxConcurrentStreams}).
    @ivar writeBatch: how many response bytes are framed before they are
        handed to the transport (which may then say it is full).
    """

    _log = Logger()

    site = None
    factory = None
    requestFactory = None
    conn = None
    abortTimeout: Optional[float] = 15.0
    initialWindowSize = 256 * 1024
    connectionWindowSize = 16 * 2**20
    maxConcurrentStreams = 100
    writeBatch = 64 * 1024
    resetBurst = 1000
    resetRate = 33.0

    def __init__(self):
        self.streams: Dict[int, H2Stream] = {}
        self._ready: Deque[H2Stream] = deque()
        self._flushing = False
        self._holding = False
        self._writeBlocked = False
        self._closed = False
        self._draining = False
        self._lastStreamID = 0
        self._abortingCall = None
        self._peer = None
        self._host = None
        self._secure = False
        self._golbPeer = None
        self._resetTokens = float(self.resetBurst)
        self._resetStamp = 0.0
        self._clock = None
        self._idleTimeout = None
        self._waitingHeads: List[H2Stream] = []
        self._headCall = None

    # -- the connection

    def connectionMade(self):
        """
        Send the server's SETTINGS, open the connection's window, and count
        the connection as open.
        """
        site = self.site
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            try:
                transport.setTcpNoDelay(True)
            except Exception:  # not every transport can
                pass
        self._peer = transport.getPeer()
        self._host = transport.getHost()
        self._secure = ISSLTransport.providedBy(transport)
        clock = getattr(site, "clock", None)
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._resetStamp = clock.seconds()
        openConnections = getattr(site, "openConnections", None)
        if openConnections is not None:
            openConnections.add(self)
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False,
        )
        conn = self.conn = h2.connection.H2Connection(config=config)
        maxHeaderBytes = getattr(site, "maxHeaderBytes", 65536)
        conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: getattr(
                site, "maxConcurrentStreams", self.maxConcurrentStreams
            ),
            SettingCodes.MAX_HEADER_LIST_SIZE: maxHeaderBytes,
            SettingCodes.INITIAL_WINDOW_SIZE: self.initialWindowSize,
        })
        conn.decoder.max_header_list_size = maxHeaderBytes
        conn.initiate_connection()
        increment = self.connectionWindowSize - 65535
        if increment > 0:
            conn.increment_flow_control_window(increment)
        transport.registerProducer(self, True)
        self._write()
        # setTimeout(None) forgets timeOut: keep the idle timeout here
        self._idleTimeout = self.timeOut
        self.setTimeout(self._idleTimeout)

    def connectionLost(self, reason=None):
        """
        Every stream still in progress is lost with the connection.
        """
        if reason is None:
            reason = Failure(ConnectionDone())
        self._closed = True
        self._writeBlocked = True
        self.setTimeout(None)
        headCall, self._headCall = self._headCall, None
        if headCall is not None and headCall.active():
            headCall.cancel()
        self._waitingHeads = []
        aborting, self._abortingCall = self._abortingCall, None
        if aborting is not None and aborting.active():
            aborting.cancel()
        openConnections = getattr(self.site, "openConnections", None)
        if openConnections is not None:
            openConnections.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        self._ready.clear()
        for stream in streams:
            stream._lost(reason)

    def getPeer(self):
        """
        The client's address.
        """
        return self._peer

    def getHost(self):
        """
        golb's address.
        """
        return self._host

    def isSecure(self) -> bool:
        """
        Whether the connection is TLS.
        """
        return self._secure

    def drain(self) -> None:
        """
        golb is shutting down: send GOAWAY (no new streams), let the
        streams in progress finish, then close.  Streams the client opens
        afterwards are refused (C{REFUSED_STREAM}: it may retry them).
        """
        if self._draining or self._closed:
            return
        self._draining = True
        self._lastStreamID = self.conn.highest_inbound_stream_id
        self._write()
        # Not h2's close_connection: after it, h2 sends nothing more, and
        # the streams in progress must still be answered.
        frame = GoAwayFrame(0, last_stream_id=self._lastStreamID, error_code=0)
        directWrite(self.transport, frame.serialize())
        if not self.streams:
            self._close()

    def timeoutConnection(self):
        """
        No stream for the idle timeout: say GOAWAY and close.
        """
        if self.streams or self._closed:
            return
        self._log.debug("{peer}: idle HTTP/2 connection closed", peer=self._peer)
        try:
            self.conn.close_connection(ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass
        self._close()

    def _close(self) -> None:
        """
        Write what is pending and close the connection; nothing is sent or
        read after this.
        """
        if self._closed:
            return
        data = self.conn.data_to_send()
        if data:
            directWrite(self.transport, data)
        self._closed = True
        self.setTimeout(None)
        transport = self.transport
        transport.loseConnection()
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self._forceAbort)

    def _forceAbort(self) -> None:
        self._abortingCall = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _write(self) -> None:
        """
        Hand what h2 has to send to the transport.
        """
        if self._holding:
            return
        data = self.conn.data_to_send()
        if data and not self._closed:
            directWrite(self.transport, data)

    # -- the transport's producer: its buffer is full, or not anymore

    def pauseProducing(self) -> None:
        """
        The transport cannot take more: stop sending and stop reading.
        """
        if self._writeBlocked or self._closed:
            return
        self._writeBlocked = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        The transport can take more: read and send again.
        """
        if not self._writeBlocked or self._closed:
            return
        self._writeBlocked = False
        self.transport.resumeProducing()
        self._flush()

    def stopProducing(self) -> None:
        """
        The transport is going away (C{connectionLost} follows).
        """
        self._writeBlocked = True

    # -- receiving

    def dataReceived(self, data: bytes) -> None:
        """
        Feed the bytes to h2 and handle its events.
        """
        if self._closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # h2 has queued a GOAWAY with the error's code
            self._log.debug("{peer}: HTTP/2 connection error: {error}",
                           peer=self._peer, error=str(e) or e.__class__.__name__)
            self._close()
            return
        except Exception:
            self._log.failure("{peer}: HTTP/2 input could not be handled", peer=self._peer)
            self._goAway(ErrorCodes.INTERNAL_ERROR)
            return
        # h2 checks a frame's length only once the whole frame arrived: a
        # frame header announcing more than SETTINGS_MAX_FRAME_SIZE would
        # have golb buffer up to 16 MiB per connection first.
        pending = getattr(self.conn.incoming_buffer, "_data", None)
        if (pending is not None and len(pending) >= 9
                and int.from_bytes(pending[:3], "big") > self.conn.max_inbound_frame_size):
            self._log.debug("{peer}: HTTP/2 frame larger than SETTINGS_MAX_FRAME_SIZE",
                            peer=self._peer)
            self._goAway(ErrorCodes.FRAME_SIZE_ERROR)
            return
        # What the events make streams send (responses answered at once)
        # leaves in one piece after them, each last DATA frame carrying
        # END_STREAM.
        self._holding = True
        try:
            self._handle(events)
        finally:
            self._holding = False
        if self._closed:
            return
        self._flush()
        self._write()

    def _handle(self, events) -> None:
        handlers = self._handlers
        for event in events:
            handler = handlers.get(event.__class__)
            if handler is None:
                continue
            try:
                handler(self, event)
            except Exception:
                self._log.failure("{peer}: handling {event} failed", peer=self._peer,
                                  event=event)
                stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
                if stream is not None:
                    self._resetStream(stream, ErrorCodes.INTERNAL_ERROR,
                                      ConnectionLost("internal error"))
            if self._closed:
                return

    def _goAway(self, code) -> None:
        try:
            self.conn.close_connection(code)
        except h2.exceptions.ProtocolError:
            pass
        self._close()

    def _requestReceived(self, event) -> None:
        streamID = event.stream_id
        if self._draining and streamID > self._lastStreamID:
            self._reset(streamID, ErrorCodes.REFUSED_STREAM)
            return
        stream = (_SecureH2Stream if self._secure else H2Stream)(self, streamID)
        self.streams[streamID] = stream
        if len(self.streams) == 1:
            self.setTimeout(None)
        stream.headersReceived(event.headers, event.stream_ended is not None)

    def _dataReceived(self, event) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self._ack(event.flow_controlled_length, event.stream_id)
            return
        stream.dataReceived(event.data, event.flow_controlled_length)

    def _trailersReceived(self, event) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailersReceived(event.headers)

    def _streamEnded(self, event) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.inputEnded()

    def _streamReset(self, event) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        self._removeStream(stream)
        stream._lost(Failure(ConnectionLost(
            f"stream reset by the client ({_codeName(event.error_code)})"
        )))
        if not event.remote_reset:
            return
        # HTTP/2 Rapid Reset (CVE-2023-44487): a token bucket of resets
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._resetStamp)
        self._resetStamp = now
        self._resetTokens = min(float(self.resetBurst),
                                self._resetTokens + elapsed * self.resetRate)
        if self._resetTokens < 1:
            self._log.warn("{peer}: too many HTTP/2 stream resets, closing", peer=self._peer)
            self._goAway(ErrorCodes.ENHANCE_YOUR_CALM)
        else:
            self._resetTokens -= 1

    def _windowUpdated(self, event) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None and (stream._out or stream._ending):
                self._wantSend(stream)
            return
        self._allReady()

    def _settingsChanged(self, event) -> None:
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._allReady()

    def _connectionTerminated(self, event) -> None:
        # h2 sends nothing after the client's GOAWAY: the streams in
        # progress are lost.
        self._log.debug("{peer}: client sent GOAWAY ({code})", peer=self._peer,
                        code=_codeName(event.error_code))
        self._close()

    _handlers = {
        h2.events.RequestReceived: _requestReceived,
        h2.events.DataReceived: _dataReceived,
        h2.events.TrailersReceived: _trailersReceived,
        h2.events.StreamEnded: _streamEnded,
        h2.events.StreamReset: _streamReset,
        h2.events.WindowUpdated: _windowUpdated,
        h2.events.RemoteSettingsChanged: _settingsChanged,
        h2.events.ConnectionTerminated: _connectionTerminated,
    }

    # -- streams

    def _newRequest(self, stream: H2Stream):
        return self.requestFactory(stream)

    def _ack(self, size: int, streamID: int) -> None:
        if size and not self._closed:
            try:
                self.conn.acknowledge_received_data(size, streamID)
            except (h2.exceptions.ProtocolError, ValueError):
                pass

    def _reset(self, streamID: int, code) -> None:
        if self._closed:
            return
        try:
            self.conn.reset_stream(streamID, code)
        except h2.exceptions.ProtocolError:
            pass

    def _resetStream(self, stream: H2Stream, code, reason: Exception) -> None:
        """
        Reset C{stream} and tell its request.
        """
        if stream.closed:
            return
        self._reset(stream.streamID, code)
        self._removeStream(stream)
        stream._lost(Failure(reason))
        self._write()

    def _malformed(self, stream: H2Stream, why: str) -> None:
        self._log.debug("{peer}: malformed HTTP/2 request on stream {stream}: {why}",
                        peer=self._peer, stream=stream.streamID, why=why)
        self._rejected(400, "bad-request")
        stream._rejected = True
        self._resetStream(stream, ErrorCodes.PROTOCOL_ERROR, ConnectionLost(why))

    def _rejected(self, status: int, code: str) -> None:
        site = self.site
        observatory = getattr(site, "observatory", None)
        if observatory is not None and observatory.active:
            observatory.requestRejected(site.listenerName, status, code,
                                        getattr(self._peer, "host", "") or "")

    def _removeStream(self, stream: H2Stream) -> None:
        """
        Forget C{stream}; give back the window its unconsumed bytes hold;
        with no stream left, start the idle timer or, draining, close.
        """
        if self.streams.pop(stream.streamID, None) is None:
            return
        unacked, stream._unacked = stream._unacked, 0
        if unacked:
            self._ack(unacked, stream.streamID)
        if self.streams or self._closed:
            return
        if self._draining:
            self._close()
        else:
            self.setTimeout(self._idleTimeout)

    def _continue(self, stream: H2Stream) -> None:
        """
        Send a C{100 Continue} head.
        """
        if self._closed or stream.closed:
            return
        try:
            self.conn.send_headers(stream.streamID, [(b":status", b"100")])
        except h2.exceptions.ProtocolError:
            return
        self._write()

    def _headWaiting(self, stream: H2Stream) -> None:
        """
        A response head waits for its body or its end; send it on the next
        turn of the reactor if neither comes in this one.
        """
        self._waitingHeads.append(stream)
        if self._headCall is None and not self._closed:
            self._headCall = self.callLater(0, self._sendWaitingHeads)

    def _sendWaitingHeads(self) -> None:
        self._headCall = None
        waiting, self._waitingHeads = self._waitingHeads, []
        for stream in waiting:
            if stream._head is not None and not stream.closed:
                self._wantSend(stream)

    def _wantSend(self, stream: H2Stream) -> None:
        if not stream._inReady:
            stream._inReady = True
            self._ready.append(stream)
        self._flush()

    def _allReady(self) -> None:
        for stream in self.streams.values():
            if (stream._out or stream._ending) and not stream._inReady:
                stream._inReady = True
                self._ready.append(stream)
        self._flush()

    def _flush(self) -> None:
        """
        Send queued response data, streams taking turns frame by frame,
        within the windows and while the transport takes it.
        """
        if self._flushing or self._holding or self._writeBlocked or self._closed:
            return
        self._flushing = True
        try:
            ready = self._ready
            pending = 0
            while ready and not self._writeBlocked and not self._closed:
                stream = ready.popleft()
                stream._inReady = False
                sent, more = self._sendSome(stream)
                if more and not stream._inReady:
                    stream._inReady = True
                    ready.append(stream)
                pending += sent
                if pending >= self.writeBatch:
                    pending = 0
                    self._write()
            self._write()
            if self._writeBlocked:
                for stream in ready:
                    if stream._outBytes:
                        stream._pauseProducer()
        finally:
            self._flushing = False

    def _sendSome(self, stream: H2Stream) -> Tuple[int, bool]:
        """
        Send one frame of C{stream}'s queue, or its end.

        @return: how many bytes were sent, and whether it has more to send
            now.
        """
        if stream.closed or stream._ended:
            return 0, False
        conn = self.conn
        streamID = stream.streamID
        try:
            head = stream._head
            if head is not None:
                # HEADERS are not flow-controlled; with nothing after them
                # they end the stream
                stream._head = None
                end = stream._ending and not stream._out and not stream._trailers
                conn.send_headers(streamID, head, end_stream=end)
                if end:
                    self._ended(stream)
                    return 0, False
            if stream._out:
                window = conn.local_flow_control_window(streamID)
                if window <= 0:
                    stream._pauseProducer()
                    return 0, False
                chunk = stream._take(min(window, conn.max_outbound_frame_size))
                stream._outBytes -= len(chunk)
                end = stream._ending and not stream._out and not stream._trailers
                conn.send_data(streamID, chunk, end_stream=end)
                if end:
                    self._ended(stream)
                    return len(chunk), False
                if not stream._out:
                    stream._resumeProducer()
                return len(chunk), bool(stream._out) or stream._ending
            if stream._ending:
                if stream._trailers:
                    conn.send_headers(streamID, stream._trailers, end_stream=True)
                else:
                    conn.end_stream(streamID)
                self._ended(stream)
            return 0, False
        except h2.exceptions.ProtocolError as e:
            self._log.info("{peer}: stream {stream} could not be answered: {error}",
                           peer=self._peer, stream=streamID, error=e)
            self._resetStream(stream, ErrorCodes.INTERNAL_ERROR, ConnectionLost(str(e)))
            return 0, False

    def _ended(self, stream: H2Stream) -> None:
        """
        The response's END_STREAM is out.  A client still sending is told
        to stop (C{NO_ERROR}: the response is complete).
        """
        stream._ended = True
        stream.closed = True
        stream.producer = None
        stream._cancelTimer()
        if not stream._inputDone:
            self._reset(stream.streamID, ErrorCodes.NO_ERROR)
            body = stream.bodyStream
            if body is not None and not body.ended:
                body.fail(Failure(ConnectionDone("the response ended first")))
        self._removeStream(stream)


def _codeName(code) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class SwitchingChannel(FastChannel):
    """
    A L{FastChannel} that becomes an L{H2Channel} on its first bytes when
    TLS negotiated C{h2} (ALPN), or when its site has C{h2c} set and the
    bytes are the HTTP/2 connection preface.  Otherwise, and on plain
    listeners without C{h2c}, it is a L{FastChannel}, without even a look
    at the first bytes.

    @ivar h2Channel: the L{H2Channel} now serving the connection, or
        L{None}.
    """

    h2Channel: Optional[H2Channel] = None
    _preface = b""

    def connectionMade(self):
        """
        Set up as a L{FastChannel}, watching for HTTP/2 if it may come.
        """
        FastChannel.connectionMade(self)
        if getattr(self.site, "h2c", False) or ISSLTransport.providedBy(self.transport):
            self.dataReceived = self._firstData

    def _firstData(self, data: bytes) -> None:
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            self._switch(data)
            return
        if getattr(self.site, "h2c", False):
            data = self._preface + data
            if data.startswith(PREFACE):
                self._switch(data)
                return
            if PREFACE.startswith(data):
                self._preface = data
                return
            self._preface = b""
        del self.dataReceived
        FastChannel.dataReceived(self, data)

    def _switch(self, data: bytes) -> None:
        """
        Hand the connection to an L{H2Channel}, which then gets everything
        the transport gives this channel.
        """
        self.__dict__.pop("dataReceived", None)
        self._preface = b""
        site = self.site
        site.openConnections.discard(self)
        timeout = self.setTimeout(None)
        self._golbState = _DEAD
        transport = self.transport
        transport.unregisterProducer()
        channel = H2Channel()
        channel.factory = self.factory
        channel.site = site
        channel.requestFactory = self.requestFactory
        channel.callLater = self.callLater
        channel.timeOut = timeout
        self.h2Channel = channel
        self.dataReceived = channel.dataReceived
        self.connectionLost = channel.connectionLost
        channel.makeConnection(transport)
        channel.dataReceived(data)
