"""
The upstream side of golb: an HTTP/1.1 client protocol and a per-backend
keep-alive connection pool.

L{UpstreamPool.request} sends one L{UpstreamRequest} on a pooled (or new)
connection and fires with an L{UpstreamResponse} once the final response head
arrived (L{UpstreamPool.call} does the same, telling a receiver object
instead, without a Deferred); the body then streams to a receiver with
push-producer backpressure.
A 101 response can be turned into a raw byte tunnel (WebSocket).

Not built on L{twisted.web.client.Agent}: headers go out exactly as given and
come back raw and in order, 1xx responses are reported, and the parser
(L{golb._http11client}) works on whole buffers.
"""

from typing import Callable, List, Optional, Tuple

from attrs import field, frozen
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from golb._http11client import (
    FILE_CHUNK,
    BodyParseError,
    FileBodyProducer,
    HeadParseError,
    ResponseParser,
    UpstreamResponse,
    UpstreamTunnel,
    requestHead,
)
from golb._writes import directWrite, dispatching
from golb.errors import GolbError

__all__ = [
    "BackendConnections",
    "ConnectFailed",
    "InvalidResponse",
    "ReadTimeout",
    "ResponseHeaderTimeout",
    "UpstreamBodyError",
    "UpstreamCall",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamRequest",
    "UpstreamReset",
    "UpstreamResponse",
    "UpstreamTLSFailed",
    "UpstreamTunnel",
]

Headers = List[Tuple[bytes, bytes]]



# ---------------------------------------------------------------- errors


class UpstreamError(GolbError):
    """
    The base of the errors of this module.

    @ivar requestSent: whether request bytes were written to the backend, so
        that it may have acted on the request.
    """

    errorCode = "bad-gateway"

    def __init__(self, message: Optional[str] = None, requestSent: bool = True):
        GolbError.__init__(self, self.errorCode, message)
        self.requestSent = requestSent


class ConnectFailed(UpstreamError):
    """
    The connection could not be made: refused, unreachable, DNS failure,
    connect timeout (or a closed pool).  Nothing was sent.
    """

    errorCode = "connect-failure"

    def __init__(self, message: Optional[str] = None, requestSent: bool = False):
        UpstreamError.__init__(self, message, requestSent)


class UpstreamTLSFailed(ConnectFailed):
    """
    The TLS handshake with the backend failed (certificate, protocol).
    """

    errorCode = "upstream-tls"


class UpstreamReset(UpstreamError):
    """
    The connection closed or was reset before a complete response (head, or
    body when used as a body failure).
    """

    errorCode = "upstream-reset"


class ResponseHeaderTimeout(UpstreamError):
    """
    No complete response head within C{responseHeaderTimeout} of the request
    being written.
    """

    errorCode = "upstream-timeout"


class InvalidResponse(UpstreamError):
    """
    The backend's status line or header section is invalid.
    """

    errorCode = "invalid-response"


class UpstreamBodyError(UpstreamError):
    """
    The response body's framing is invalid (bad chunk).
    """

    errorCode = "invalid-response"


class ReadTimeout(UpstreamError):
    """
    No body byte arrived for C{readTimeout} seconds while the body was not
    paused.
    """

    errorCode = "upstream-timeout"


# ---------------------------------------------------------------- values


@frozen
class UpstreamRequest:
    """
    One request to send to a backend.

    @ivar method: the method, e.g. C{b"GET"}.
    @ivar target: the origin-form target, e.g. C{b"/api/x?y=1"}.
    @ivar headers: header fields sent in order, as given, except that any
        C{Content-Length} or C{Transfer-Encoding} is replaced by this module's
        own C{Content-Length}.
    @ivar body: L{None}, C{bytes} or a file-like object (C{seek} and C{read});
        a file is rewound with C{seek(0)} before every attempt.
    @ivar bodyLength: the length of a file body (C{len()} is used for bytes).
    @ivar onInformational: called with C{(code, phrase, headers)} for each 1xx
        response but 101.
    """

    method: bytes
    target: bytes
    headers: Headers = field(factory=list)
    body: Optional[object] = None
    bodyLength: int = 0
    onInformational: Optional[Callable[[int, bytes, Headers], None]] = None

    @property
    def expectsNoBody(self) -> bool:
        """
        Whether the response to this request has no body (C{HEAD}).
        """
        return self.method == b"HEAD"


# ---------------------------------------------------------------- protocol

# connection states
_CONNECTING = 0  # TCP (and TLS) setup
_IDLE = 1  # in the pool's idle list
_WAITING = 2  # request sent, no final head yet
_BODY = 3  # head delivered, body streaming
_SWITCHED = 4  # a tunnel
_DEAD = 5  # closing; waiting for connectionLost

# timer kinds
_T_NONE = 0
_T_CONNECT = 1
_T_HEAD = 2
_T_BODY = 3
_T_IDLE = 4


@implementer(IHandshakeListener)
class _UpstreamProtocol(Protocol):
    """
    One connection to a backend, serving one exchange at a time.  It is the
    delegate of its L{ResponseParser}.
    """

    _log = Logger()

    def __init__(self, pool: "UpstreamPool"):
        self._pool = pool
        self._reactor = pool._reactor
        self._seconds = pool._reactor.seconds
        self._state = _CONNECTING
        self._exchange: Optional[UpstreamCall] = None
        self._parser: Optional[ResponseParser] = None
        self._response: Optional[UpstreamResponse] = None
        self._reused = False
        self._received = False
        self._producer: Optional[FileBodyProducer] = None
        self._tunnel: Optional[UpstreamTunnel] = None
        self._userPaused = False
        self._bufferPaused = False
        self._transportPaused = False
        self._timer = None
        self._timerKind = _T_NONE
        self._timeout = 0.0
        self._lastActivity = 0.0
        self._ready = False
        self._lost = False
        self._lostWaiters: List[Deferred] = []

    # -- connection lifecycle

    def connectionMade(self) -> None:
        self._pool._connectionMade(self)
        if self._pool._tls is None:
            self._ready = True
        else:
            self._setTimer(_T_CONNECT, self._pool.connectTimeout)

    def handshakeCompleted(self) -> None:
        self._ready = True
        if self._state == _CONNECTING:
            self._timerKind = _T_NONE
            exchange = self._exchange
            if exchange is not None:
                self._exchange = None
                self.sendRequest(exchange, False)

    def attach(self, exchange: "UpstreamCall") -> None:
        """
        Send C{exchange}'s request on this new connection once it is ready.
        """
        exchange.protocol = self
        if self._ready:
            self.sendRequest(exchange, False)
        else:
            self._exchange = exchange

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
        state = self._state
        self._state = _DEAD
        self._timerKind = _T_NONE
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._producer is not None:
            self._producer.stopProducing()
            self._producer = None
        pool = self._pool
        try:
            if state == _WAITING:
                self._lostWhileWaiting(reason)
            elif state == _BODY:
                self._lostInBody(reason)
            elif state == _SWITCHED:
                self._tunnel._connectionLost(reason)
            elif state == _CONNECTING:
                exchange = self._exchange
                self._exchange = None
                if exchange is not None:
                    exchange.fail(_handshakeError(reason, pool))
        finally:
            pool._connectionLost(self)
            waiters = self._lostWaiters
            self._lostWaiters = []
            for d in waiters:
                d.callback(None)

    def _lostWhileWaiting(self, reason: Failure) -> None:
        exchange = self._exchange
        self._exchange = None
        parser = self._parser
        self._parser = None
        if exchange is None or exchange.done:
            return
        if (
            self._reused and not self._received and not exchange.retried
            and not self._pool._closed
        ):
            self._log.debug(
                "Stale keep-alive connection to {backend}, retrying on a new one",
                backend=self._pool.backend,
            )
            exchange.retried = True
            exchange.protocol = None
            self._pool._connect(exchange)
            return
        if self._pool._tls is not None and not self._received and _isTLSError(reason):
            # Older Twisted (25.x, the newest on PyPy 3.9) reports the
            # handshake complete before service-identity has verified the
            # certificate; a failed verification then closes the connection
            # with the request already written.
            exchange.fail(_handshakeError(reason, self._pool))
            return
        if parser is not None and self._received:
            why = "the backend closed the connection in the middle of the response head"
        else:
            why = "the backend closed the connection before answering"
        exchange.fail(UpstreamReset(why))

    def _lostInBody(self, reason: Failure) -> None:
        parser = self._parser
        response = self._response
        if parser is not None and reason.check(ConnectionDone) and parser.connectionClosed():
            return
        self._parser = None
        self._response = None
        if response is not None:
            if response.code == 101:
                response._bodyEnded(None)
            else:
                response._bodyEnded(Failure(UpstreamReset(
                    "the backend closed the connection in the middle of the body")))

    # -- sending

    def sendRequest(self, exchange: "UpstreamCall", reused: bool) -> None:
        """
        Write C{exchange}'s request and start waiting for the response.
        """
        req = exchange.request
        body = req.body
        fileBody = False
        try:
            if body is None:
                head = requestHead(req, None)
            elif isinstance(body, bytes):
                head = requestHead(req, len(body))
            elif hasattr(body, "read"):
                fileBody = True
                head = requestHead(req, req.bodyLength)
                body.seek(0)
            else:
                body = bytes(body)
                head = requestHead(req, len(body))
        except Exception as e:
            exchange.protocol = None
            self._state = _WAITING  # so that release puts us back
            self._pool._release(self)
            exchange.fail(UpstreamError(f"invalid request: {e}", requestSent=False))
            return
        exchange.protocol = self
        self._exchange = exchange
        self._reused = reused
        self._received = False
        self._state = _WAITING
        self._parser = ResponseParser(self, req.method == b"HEAD")
        self._response = None
        transport = self.transport
        if body is None:
            directWrite(transport, head)
        elif fileBody:
            transport.write(head)
            self._setTimer(_T_HEAD, self._pool.responseHeaderTimeout)
            self._producer = FileBodyProducer(self, body, req.bodyLength)
            self._producer.start()
            return
        elif len(body) < FILE_CHUNK:
            directWrite(transport, head + body)
        else:
            transport.writeSequence([head, body])
        self._setTimer(_T_HEAD, self._pool.responseHeaderTimeout)

    def _bodyWritten(self) -> None:
        self._producer = None
        self.transport.unregisterProducer()
        if self._state == _WAITING:
            # the response header timeout counts from now
            self._lastActivity = self._seconds()

    def _bodyWriteFailed(self, why: str) -> None:
        self._producer = None
        self.transport.unregisterProducer()
        exchange = self._exchange
        if self._state == _WAITING and exchange is not None:
            self._exchange = None
            self._abort()
            exchange.fail(UpstreamError(why))
        elif self._state == _BODY:
            self._abort()

    # -- receiving

    def dataReceived(self, data: bytes) -> None:
        with dispatching:
            self._dataReceived(data)

    def _dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is not None:
            self._received = True
            try:
                parser.feed(data)
            except HeadParseError as e:
                self._headFailed(InvalidResponse(
                    f"invalid response from {self._pool.backend}: {e}"))
            except BodyParseError as e:
                self._bodyFailed(UpstreamBodyError(
                    f"invalid response body from {self._pool.backend}: {e}"))
            except Exception:
                self._log.failure("Error while handling a response from {backend}",
                                  backend=self._pool.backend)
                if self._state == _WAITING:
                    self._headFailed(UpstreamError("internal error handling the response"))
                else:
                    self._bodyFailed(Failure())
            return
        state = self._state
        if state == _SWITCHED:
            self._tunnel._dataReceived(data)
        elif state == _IDLE:
            self._log.debug("Unsolicited bytes from {backend} on an idle connection",
                            backend=self._pool.backend)
            self._pool._removeIdle(self)
            self._abort()

    def informationalReceived(self, code: int, phrase: bytes, headers: Headers) -> None:
        exchange = self._exchange
        callback = exchange.request.onInformational if exchange is not None else None
        if callback is not None:
            try:
                callback(code, phrase, headers)
            except Exception:
                self._log.failure("onInformational callback failed")

    def headReceived(self, version: bytes, code: int, phrase: bytes, headers: Headers,
                     length: Optional[int], chunked: bool) -> None:
        response = UpstreamResponse(self, version, code, phrase, headers, length, chunked)
        self._response = response
        self._state = _BODY
        if code == 101:
            self._timerKind = _T_NONE
        else:
            self._setTimer(_T_BODY, self._pool.readTimeout)
        exchange = self._exchange
        self._exchange = None
        exchange.protocol = None
        exchange.succeed(response)

    def bodyDataReceived(self, data: bytes) -> None:
        self._lastActivity = self._seconds()
        self._response._dataReceived(data)

    def bodyFinished(self, extra: bytes) -> None:
        response = self._response
        parser = self._parser
        self._response = None
        self._parser = None
        self._timerKind = _T_NONE
        if self._transportPaused and not self._lost:
            self.transport.resumeProducing()
        self._transportPaused = self._userPaused = self._bufferPaused = False
        if self._lost:
            self._state = _DEAD
        elif parser.keepAlive and not extra and self._producer is None:
            self._pool._release(self)
        else:
            self._pool._active.discard(self)
            self._closeQuietly()
        response._bodyEnded(None)

    # -- failures and aborts

    def _abort(self) -> None:
        """
        Drop the connection now; it is never reused.
        """
        self._state = _DEAD
        self._timerKind = _T_NONE
        if self._parser is not None:
            self._parser.stop()
            self._parser = None
        self._pool._active.discard(self)
        if not self._lost:
            self.transport.abortConnection()

    def _closeQuietly(self) -> None:
        self._state = _DEAD
        if self._producer is not None:
            self._producer.stopProducing()
            self._producer = None
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _headFailed(self, error: UpstreamError) -> None:
        exchange = self._exchange
        self._exchange = None
        self._abort()
        if exchange is not None:
            exchange.fail(error)

    def _bodyFailed(self, error) -> None:
        response = self._response
        self._response = None
        self._abort()
        if response is not None:
            response._bodyEnded(error if isinstance(error, Failure) else Failure(error))

    def _abortExchange(self) -> None:
        """
        The exchange was cancelled before its head arrived.
        """
        self._exchange = None
        self._abort()

    def _stopResponse(self, response: UpstreamResponse) -> None:
        if self._response is not response:
            return
        self._response = None
        self._abort()
        response._bodyEnded(Failure(ConnectionAborted()))

    # -- backpressure

    def _setUserPaused(self, paused: bool) -> None:
        self._userPaused = paused
        self._updatePaused()

    def _setBufferPaused(self, paused: bool) -> None:
        self._bufferPaused = paused
        self._updatePaused()

    def _updatePaused(self) -> None:
        want = self._userPaused or self._bufferPaused
        if want != self._transportPaused and not self._lost:
            self._transportPaused = want
            if want:
                self.transport.pauseProducing()
            else:
                self._lastActivity = self._seconds()
                self.transport.resumeProducing()

    # -- upgrade

    def _switch(self) -> UpstreamTunnel:
        self._state = _SWITCHED
        parser = self._parser
        self._parser = None
        self._response = None
        self._timerKind = _T_NONE
        self._pool._detach(self)
        self._tunnel = UpstreamTunnel(self.transport, parser.extra if parser else b"")
        if self._lost:
            self._tunnel._connectionLost(Failure(ConnectionDone()))
        return self._tunnel

    def _abandonSwitch(self) -> None:
        self._parser = None
        self._response = None
        self._pool._active.discard(self)
        self._closeQuietly()

    # -- timers

    def _setTimer(self, kind: int, timeout: float) -> None:
        if not timeout or timeout <= 0:
            # a timeout of 0 is none (the configuration's "0 = none")
            self._timerKind = _T_NONE
            return
        now = self._seconds()
        self._timerKind = kind
        self._timeout = timeout
        self._lastActivity = now
        timer = self._timer
        if timer is None:
            self._timer = self._reactor.callLater(timeout, self._timerFired)
        elif timer.getTime() > now + timeout:
            timer.reset(timeout)

    def _timerFired(self) -> None:
        self._timer = None
        kind = self._timerKind
        if kind == _T_NONE or self._lost:
            return
        now = self._seconds()
        if kind == _T_BODY and self._transportPaused:
            self._lastActivity = now
        remaining = self._lastActivity + self._timeout - now
        if remaining > 0:
            self._timer = self._reactor.callLater(remaining, self._timerFired)
            return
        self._timerKind = _T_NONE
        backend = self._pool.backend
        if kind == _T_HEAD:
            self._headFailed(ResponseHeaderTimeout(
                f"{backend} sent no response head within {self._timeout:g}s"))
        elif kind == _T_BODY:
            self._bodyFailed(ReadTimeout(
                f"{backend} sent no body byte for {self._timeout:g}s"))
        elif kind == _T_IDLE:
            self._pool._removeIdle(self)
            self._closeQuietly()
        elif kind == _T_CONNECT:
            exchange = self._exchange
            self._exchange = None
            self._abort()
            if exchange is not None:
                exchange.fail(ConnectFailed(
                    f"{backend}: TLS handshake timed out after {self._timeout:g}s"))


def _isTLSError(reason: Failure) -> bool:
    """
    Whether C{reason} is a TLS failure (handshake or certificate check).
    """
    from OpenSSL.SSL import Error as SSLError

    tlsErrors = [SSLError]
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover
        pass
    else:
        tlsErrors.append(VerificationError)
    return bool(reason.check(*tlsErrors))


def _handshakeError(reason: Failure, pool: "UpstreamPool") -> ConnectFailed:
    """
    The error for a connection lost before it was ready (during TLS setup).
    """
    if _isTLSError(reason):
        return UpstreamTLSFailed(
            f"{pool.backend}: TLS handshake failed: {reason.getErrorMessage()}")
    return ConnectFailed(
        f"{pool.backend}: connection closed during the TLS handshake "
        f"({reason.getErrorMessage()})")


# ---------------------------------------------------------------- pool


class UpstreamCall:
    """
    One request sent with L{UpstreamPool.call} (or L{UpstreamPool.request},
    which wraps one in a Deferred): the request, who learns its outcome and
    where it currently is (connecting, or on a connection).

    Its receiver is told the outcome once: C{responseReceived(response)}
    with the L{UpstreamResponse} when the final response head arrived, or
    C{requestFailed(reason)} with a L{Failure} of the errors listed in
    L{UpstreamPool.request} (L{CancelledError} after L{cancel}).  Without a
    receiver, L{deferred} fires instead.

    @ivar deferred: the Deferred of L{UpstreamPool.request}, or L{None}.
    """

    __slots__ = (
        "pool", "request", "receiver", "deferred", "protocol", "connecting", "retried", "done",
    )

    def __init__(self, pool: "UpstreamPool", request: UpstreamRequest, receiver=None):
        self.pool = pool
        self.request = request
        self.receiver = receiver
        self.deferred: Optional[Deferred] = None
        self.protocol: Optional[_UpstreamProtocol] = None
        self.connecting: Optional[Deferred] = None
        self.retried = False
        self.done = False

    def start(self) -> None:
        """
        Send the request, on an idle connection or a new one.  The receiver
        may learn the outcome before this returns (a closed pool).
        """
        self.pool._start(self)

    def cancel(self) -> None:
        """
        Abandon the request unless its outcome is known: its connection (or
        connection attempt) is dropped and the receiver gets L{CancelledError}
        (without a receiver, this cancels L{deferred}).
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
        connecting = self.connecting
        protocol = self.protocol
        self.connecting = self.protocol = None
        if connecting is not None:
            connecting.cancel()
        elif protocol is not None:
            protocol._abortExchange()

    def succeed(self, response: UpstreamResponse) -> None:
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
            self.protocol = None
            receiver = self.receiver
            if receiver is None:
                self.deferred.errback(Failure(error))
            else:
                receiver.requestFailed(Failure(error))


class _UpstreamFactory(Factory):
    noisy = False

    def __init__(self, pool: "UpstreamPool"):
        self._pool = pool

    def buildProtocol(self, addr):
        return _UpstreamProtocol(self._pool)


class BackendConnections:
    """
    What a backend's connection pool knows whatever its protocol (the
    HTTP/1.1 L{UpstreamPool} and the HTTP/2 L{golb.h2client.H2Pool}): where
    the backend is, its timeouts, how to connect, and who waits for the
    pool to close.

    @ivar totalConnectionsMade: how many connections were made so far.
    @ivar backend: C{"host:port"}, for messages.
    """

    def __init__(self, reactor, host: str, port: int, tls, maxIdle: int, idleTimeout: float,
                 connectTimeout: float, responseHeaderTimeout: float, readTimeout: float):
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self.host = host
        self.port = port
        self.backend = f"[{host}]:{port}" if isIPv6Address(host) else f"{host}:{port}"
        self._tls = tls
        self.maxIdle = maxIdle
        self.idleTimeout = idleTimeout
        self.connectTimeout = connectTimeout
        self.responseHeaderTimeout = responseHeaderTimeout
        self.readTimeout = readTimeout
        self._endpoint = clientEndpoint(reactor, host, port, connectTimeout, tls)
        self._closed = False
        self._closeWaiters: List[Deferred] = []
        self.totalConnectionsMade = 0

    def _busy(self) -> bool:
        """
        Whether connections are open or being made (L{close} waits for
        none).
        """
        raise NotImplementedError

    def _whenClosed(self) -> Deferred:
        if not self._busy():
            return succeed(None)
        d: Deferred = Deferred()
        self._closeWaiters.append(d)
        return d

    def _checkClosed(self) -> None:
        if self._closeWaiters and not self._busy():
            waiters, self._closeWaiters = self._closeWaiters, []
            for d in waiters:
                d.callback(None)


class UpstreamPool(BackendConnections):
    """
    Keep-alive HTTP/1.1 connections to one backend.
    """

    _log = Logger()

    def __init__(self, reactor, host: str, port: int, *, tls=None, maxIdle: int = 32,
                 idleTimeout: float = 60.0, connectTimeout: float = 3.0,
                 responseHeaderTimeout: float = 30.0, readTimeout: float = 60.0):
        """
        @param reactor: the reactor (L{None} for the global one).
        @param tls: L{None} for plain HTTP, or an
            C{IOpenSSLClientConnectionCreator} (C{optionsForClientTLS}).
        @param maxIdle: how many idle connections to keep.
        @param idleTimeout: seconds after which an idle connection closes.
        @param connectTimeout: seconds for TCP connect (and TLS handshake).
        @param responseHeaderTimeout: seconds from the request being written
            to a complete final response head.
        @param readTimeout: seconds without a body byte (while not paused).
        """
        BackendConnections.__init__(self, reactor, host, port, tls, maxIdle, idleTimeout,
                                    connectTimeout, responseHeaderTimeout, readTimeout)
        self._factory = _UpstreamFactory(self)
        self._idle: List[_UpstreamProtocol] = []
        self._active: set = set()
        self._connections: set = set()
        self._connecting: set = set()

    def _busy(self) -> bool:
        return bool(self._connections or self._connecting)

    def __repr__(self) -> str:
        return (f"<UpstreamPool {self.backend} idle={len(self._idle)} "
                f"active={self.activeCount}>")

    @property
    def idleCount(self) -> int:
        """
        How many idle connections the pool holds.
        """
        return len(self._idle)

    @property
    def activeCount(self) -> int:
        """
        How many connections are connecting or serving a request.
        """
        return len(self._active) + len(self._connecting)

    @property
    def connectingCount(self) -> int:
        """
        How many connections are being made.
        """
        return len(self._connecting)

    @property
    def connectionCount(self) -> int:
        """
        How many connections are open or being made (idle ones included).
        """
        return len(self._active) + len(self._connecting) + len(self._idle)

    def closeOneIdle(self) -> bool:
        """
        Close the idle connection unused for longest, if there is one.

        @return: whether one was closed.
        """
        if not self._idle:
            return False
        self._idle.pop(0)._closeQuietly()
        return True

    def request(self, req: UpstreamRequest) -> Deferred:
        """
        Send C{req} and wait for the final response head.

        @return: a Deferred firing with an L{UpstreamResponse}, or failing
            with L{ConnectFailed}, L{UpstreamReset}, L{ResponseHeaderTimeout}
            or L{InvalidResponse} (L{CancelledError} when cancelled).
        """
        call = UpstreamCall(self, req)
        d = call.deferred = Deferred(call._abandon)
        self._start(call)
        return d

    def call(self, req: UpstreamRequest, receiver) -> UpstreamCall:
        """
        Prepare sending C{req}, its outcome told to C{receiver} (see
        L{UpstreamCall}) rather than through a Deferred as with L{request}.
        Nothing is sent before the call's C{start}, so the caller can keep
        the call (to cancel it) before the receiver may hear of it.
        """
        return UpstreamCall(self, req, receiver)

    def _start(self, call: UpstreamCall) -> None:
        if self._closed:
            call.fail(ConnectFailed(f"the pool for {self.backend} is closed"))
            return
        idle = self._idle
        if idle:
            protocol = idle.pop()
            self._active.add(protocol)
            protocol.sendRequest(call, True)
        else:
            self._connect(call)

    def closeCachedConnections(self) -> Deferred:
        """
        Close the idle connections.

        @return: a Deferred that fires once they are closed.
        """
        idle = self._idle
        self._idle = []
        waits = []
        for protocol in idle:
            waits.append(protocol.whenLost())
            protocol._closeQuietly()
        return DeferredList(waits).addCallback(lambda _: None)

    def close(self) -> Deferred:
        """
        Close idle connections, abort active ones and pending connects, and
        refuse new requests.

        @return: a Deferred that fires once every connection is gone.
        """
        self._closed = True
        for d in list(self._connecting):
            d.cancel()
        idle = self._idle
        self._idle = []
        for protocol in idle:
            protocol._closeQuietly()
        for protocol in list(self._connections):
            state = protocol._state
            if state == _WAITING:
                protocol._headFailed(UpstreamReset(f"the pool for {self.backend} was closed"))
            elif state == _BODY:
                protocol._bodyFailed(Failure(ConnectionAborted()))
            elif state == _CONNECTING:
                exchange = protocol._exchange
                protocol._exchange = None
                protocol._abort()
                if exchange is not None:
                    exchange.fail(ConnectFailed(f"the pool for {self.backend} was closed"))
        return self._whenClosed()

    # -- internal

    def _connect(self, exchange: UpstreamCall) -> None:
        d = self._endpoint.connect(self._factory)
        self._connecting.add(d)
        exchange.connecting = d

        def connected(protocol):
            self._connecting.discard(d)
            exchange.connecting = None
            if exchange.done or self._closed:
                protocol._abort()
                exchange.fail(ConnectFailed(f"the pool for {self.backend} is closed"))
                return None
            self._active.add(protocol)
            protocol.attach(exchange)
            return None

        def failed(reason):
            self._connecting.discard(d)
            exchange.connecting = None
            if not exchange.done:
                exchange.fail(_connectError(reason, self))
            self._checkClosed()
            return None

        d.addCallbacks(connected, failed)

    def _connectionMade(self, protocol: _UpstreamProtocol) -> None:
        self._connections.add(protocol)
        self.totalConnectionsMade += 1

    def _release(self, protocol: _UpstreamProtocol) -> None:
        """
        A response completed and the connection may be reused.
        """
        self._active.discard(protocol)
        if self._closed or len(self._idle) >= self.maxIdle:
            protocol._closeQuietly()
            return
        protocol._state = _IDLE
        protocol._exchange = None
        self._idle.append(protocol)
        protocol._setTimer(_T_IDLE, self.idleTimeout)

    def _removeIdle(self, protocol: _UpstreamProtocol) -> None:
        try:
            self._idle.remove(protocol)
        except ValueError:
            pass

    def _detach(self, protocol: _UpstreamProtocol) -> None:
        """
        A connection became a tunnel: the pool forgets it.
        """
        self._active.discard(protocol)
        self._connections.discard(protocol)
        self._checkClosed()

    def _connectionLost(self, protocol: _UpstreamProtocol) -> None:
        self._active.discard(protocol)
        self._connections.discard(protocol)
        self._removeIdle(protocol)
        self._checkClosed()



def clientEndpoint(reactor, host: str, port: int, connectTimeout: float, tls=None):
    """
    The endpoint a backend pool connects with: TCP to an IPv4 or IPv6
    address, or to a host name (resolved, happy eyeballs), under TLS when
    C{tls} is given.  A C{connectTimeout} of 0 is none.
    """
    timeout = connectTimeout if connectTimeout and connectTimeout > 0 else _NO_TIMEOUT
    if isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    elif isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    return endpoint


# what "no connect timeout" becomes for Twisted's endpoints (a day)
_NO_TIMEOUT = 86400.0


def _connectError(reason: Failure, pool: UpstreamPool) -> ConnectFailed:
    """
    The L{ConnectFailed} for a failed connection attempt.
    """
    backend = pool.backend
    if reason.check(ConnectionRefusedError):
        return ConnectFailed(f"{backend}: connection refused")
    if reason.check(TimeoutError):
        return ConnectFailed(f"{backend}: connect timed out after {pool.connectTimeout:g}s")
    if reason.check(DNSLookupError):
        return ConnectFailed(f"{backend}: DNS lookup failed for {pool.host}")
    return ConnectFailed(f"{backend}: unreachable: {reason.getErrorMessage()}")
