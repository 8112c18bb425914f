"""
The forwarding of one client request to a backend, streaming the response
back with backpressure.

L{Exchange} is one client request's trip: pick a backend, send the request
over that backend's keep-alive connection pool (L{golb.upstream}), retry on
another backend when the pool's C{retries} allow, then copy the response head
and stream its body to the client.  The client's request body has already been
read (and bounded) by the listener (L{golb.listener}); the response body is
never buffered: a slow client pauses the backend connection.
"""

import ipaddress
from typing import AbstractSet, Dict, FrozenSet, Iterable, List, Optional, Tuple

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import _nameEncoder

from golb.errors import GolbError, renderError
from golb.grpc import isGrpc, parseTimeout, percentEncodeMessage
from golb.upstream import (
    ConnectFailed,
    ResponseHeaderTimeout,
    UpstreamError,
    UpstreamRequest,
    UpstreamReset,
)

__all__ = [
    "Exchange",
    "mirror",
    "HOP_BY_HOP",
    "IDEMPOTENT_METHODS",
    "ProxyHeaders",
    "responseHeaders",
]

log = Logger()

# Never forwarded either way (RFC 9110 7.6.1), besides those named in Connection.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)
# Request headers golb sets itself.
_REQUEST_OWN = HOP_BY_HOP | frozenset(
    [
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"via",
    ]
)
IDEMPOTENT_METHODS = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"])
_BODY_METHODS = frozenset([b"POST", b"PUT", b"PATCH"])
_VIA = b"1.1 golb"
_NO_TOKENS: FrozenSet[bytes] = frozenset()
# Twisted's cache of canonical header names (only valid names get in): a
# response header found there is stored without Headers.addRawHeader's
# per-call work.  Empty if it ever goes away.
_canonicalNames = getattr(_nameEncoder, "_canonicalHeaderCache", None)
if not isinstance(_canonicalNames, dict):
    _canonicalNames = {}


def _connectionTokens(values: Optional[List[bytes]]) -> AbstractSet[bytes]:
    """
    The lower-cased tokens of C{Connection} header values (an empty frozen
    set without any).
    """
    if not values:
        return _NO_TOKENS
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


_NODES: Dict[str, Tuple[bytes, bytes]] = {}


def _forwardedNode(host: str) -> Tuple[bytes, bytes]:
    """
    The RFC 7239 node for a peer address (quoted and bracketed for IPv6) and
    the address as bytes, remembered for the addresses seen recently (the
    same clients come back for every request on their connections).
    """
    node = _NODES.get(host)
    if node is None:
        node = (_computeNode(host), host.encode("ascii", "replace"))
        if len(_NODES) >= 4096:
            _NODES.clear()
        _NODES[host] = node
    return node


def _computeNode(host: str) -> bytes:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return b'"' + host.encode("ascii", "replace") + b'"' if host else b"unknown"
    if address.version == 6:
        return b'"[' + host.encode("ascii") + b']"'
    return host.encode("ascii")


class ProxyHeaders:
    """
    Computes the headers sent to a backend for one client request.

    @ivar trustedProxies: the networks whose forwarding headers are believed.
    """

    def __init__(self, trustedProxies: Iterable[object] = ()):
        self.trustedProxies = tuple(trustedProxies)

    def _trusted(self, host: str) -> bool:
        if not self.trustedProxies:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        for network in self.trustedProxies:
            if address in network:
                return True
        return False

    def build(self, request, upgrade: Optional[bytes] = None) -> List[Tuple[bytes, bytes]]:
        """
        The end-to-end headers of C{request} plus golb's forwarding headers,
        without Host and Content-Length (which depend on the attempt).

        @param upgrade: the C{Upgrade} value to forward for a protocol switch.
        """
        connection = request.requestHeaders.getRawHeaders(b"connection")
        return self._build(request, _connectionTokens(connection), upgrade)

    def _build(self, request, drop: AbstractSet[bytes],
               upgrade: Optional[bytes]) -> List[Tuple[bytes, bytes]]:
        """
        L{build}, given the request's C{Connection} tokens.
        """
        incoming = request.requestHeaders
        peer = request.getClientAddress()
        peerHost = getattr(peer, "host", "") or ""
        trusted = self._trusted(peerHost)
        # X-Forwarded-Prefix is believed from trusted proxies, or when a
        # rewrite policy of golb's set it; anyone else's is dropped.
        keepPrefix = trusted or bool(getattr(request, "_golbStrippedPrefix", None))
        headers = []
        append = headers.append
        # the values of the headers golb sets itself, by lower-case name
        own = {}
        for name, values in incoming.getAllRawHeaders():
            lower = name.lower()
            if lower in _REQUEST_OWN:
                own[lower] = values
                continue
            if lower in drop:
                continue
            if lower == b"x-forwarded-prefix" and not keepPrefix:
                continue
            for value in values:
                append((name, value))

        proto = b"https" if request.isSecure() else b"http"
        # the Host the client asked for, even when a policy changed it since
        hostValues = getattr(request, "originalHost", None) or own.get(b"host")
        host = hostValues[0] if hostValues else b""

        node, peerBytes = _forwardedNode(peerHost)
        xff = own.get(b"x-forwarded-for") if trusted else None
        append((b"X-Forwarded-For", b", ".join(xff + [peerBytes]) if xff else peerBytes))
        xfp = own.get(b"x-forwarded-proto") if trusted else None
        append((b"X-Forwarded-Proto", xfp[-1] if xfp else proto))
        xfh = own.get(b"x-forwarded-host") if trusted else None
        if xfh:
            append((b"X-Forwarded-Host", xfh[-1]))
        elif host:
            append((b"X-Forwarded-Host", host))
        element = b"for=" + node + b";proto=" + proto
        if host and b'"' not in host:
            element += b';host="' + host + b'"'
        forwarded = own.get(b"forwarded") if trusted else None
        append((b"Forwarded", b", ".join(forwarded + [element]) if forwarded else element))
        via = own.get(b"via")
        append((b"Via", b", ".join(via + [_VIA]) if via else _VIA))
        if upgrade is not None:
            append((b"Connection", b"upgrade"))
            append((b"Upgrade", upgrade))
        return headers


# What to do with a response header line, by (name, value) pair: the
# backend parser hands out the same pairs for lines it saw before, so most
# lines are sorted out by one dict lookup.  Bounded like Twisted's caches.
_KEEP, _DROP, _LENGTH, _VIA_LINE = range(4)
_lineActions: Dict[Tuple[bytes, bytes], Tuple[int, Optional[bytes], bytes]] = {}


def _lineAction(pair: Tuple[bytes, bytes]) -> Tuple[int, Optional[bytes], bytes]:
    """
    How L{responseHeaders} copies the header line C{pair}: C{(kind,
    canonical name, lower-case name)}; without a canonical name (one Twisted
    has not canonicalized yet, or a value it must clean) the line goes
    through C{Headers.addRawHeader}, and is looked up again next time.
    """
    name, value = pair
    lower = name.lower()
    if lower in HOP_BY_HOP:
        kind = _DROP
    elif lower == b"content-length":
        kind = _LENGTH
    elif lower == b"via":
        kind = _VIA_LINE
    else:
        kind = _KEEP
    canonical = _canonicalNames.get(name)
    if canonical is None or b"\r" in value or b"\n" in value:
        return (kind, None, lower)
    if len(_lineActions) >= 4096:
        _lineActions.clear()
    action = _lineActions[pair] = (kind, canonical, lower)
    return action


def responseHeaders(response, request) -> None:
    """
    Copy a backend response's end-to-end headers onto the client
    C{request}'s response, keeping repeated headers (Set-Cookie) in order.
    A body of unknown length loses Content-Length (the listener chunks it or
    closes after it).
    """
    headers = response.headers
    drop = None
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            # hop-by-hop headers are dropped anyway
            extra = _connectionTokens([value]) - HOP_BY_HOP
            if extra:
                drop = extra if drop is None else drop | extra
    outgoing = request.responseHeaders
    # Headers keeps canonical names: what removeHeader and addRawHeader do,
    # without their per-call work
    raw = outgoing._rawHeaders
    raw.pop(b"Server", None)
    raw.pop(b"Date", None)
    keepLength = response.length is not None
    sawVia = False
    actions = _lineActions
    for pair in headers:
        action = actions.get(pair)
        if action is None:
            action = _lineAction(pair)
        kind, canonical, lower = action
        if drop is not None and lower in drop:
            continue
        value = pair[1]
        if kind != _KEEP:
            if kind == _DROP or (kind == _LENGTH and not keepLength):
                continue
            if kind == _VIA_LINE:
                sawVia = True
                value = value + b", " + _VIA
        if canonical is None:
            outgoing.addRawHeader(pair[0], value)
            continue
        values = raw.get(canonical)
        if values is None:
            raw[canonical] = [value]
        else:
            values.append(value)
    if not sawVia:
        values = raw.get(b"Via")
        if values is None:
            raw[b"Via"] = [_VIA]
        else:
            values.append(_VIA)


def _requestBody(request) -> Tuple[Optional[object], int]:
    content = request.content
    if content is None:
        return None, 0
    try:
        content.seek(0, 2)
        length = content.tell()
        content.seek(0, 0)
    except (OSError, ValueError):
        return None, 0
    if length == 0:
        return None, 0
    return content, length


def originForm(uri: bytes) -> bytes:
    """
    The origin-form target (path and query) of a request URI, also when the
    client sent the absolute form.
    """
    if uri.startswith(b"/"):
        return uri
    lower = uri[:8].lower()
    if lower.startswith(b"http://") or lower.startswith(b"https://"):
        start = uri.find(b"/", uri.find(b"//") + 2)
        if start < 0:
            query = uri.find(b"?")
            return b"/" + (uri[query:] if query >= 0 else b"")
        return uri[start:]
    if uri == b"*":
        return uri
    return b"/" + uri


def _failureKind(reason: Failure) -> Optional[str]:
    if reason.check(ConnectFailed):
        return "connect_failure"
    if reason.check(UpstreamReset) and not reason.value.requestSent:
        # never processed (HTTP/2 REFUSED_STREAM, or beyond a GOAWAY): as
        # safe to send elsewhere as a failed connection
        return "connect_failure"
    if reason.check(UpstreamReset):
        return "reset"
    if reason.check(ResponseHeaderTimeout):
        return "timeout"
    return None


class Exchange:
    """
    One client request on its way to a backend and back.

    @ivar request: the client's L{twisted.web.server.Request}.
    @ivar pool: the L{golb.pool.Pool} chosen by the route.
    @ivar tried: the backends already attempted.
    """

    def __init__(self, request, pool, headers: ProxyHeaders, listenerName: str = "default",
                 reactor=None, context=None, chain=None, observatory=None):
        if reactor is None:
            from twisted.internet import reactor
        self.request = request
        self.pool = pool
        self.config = pool.config
        self.listenerName = listenerName
        self.reactor = reactor
        self.started = 0.0
        self.queued = None
        self.tried: List[object] = []
        self.backend = None
        self.response = None
        self.pending = None
        self.retries = 0
        self.done = False
        self.clientGone = False
        incoming = request.requestHeaders
        raw = incoming._rawHeaders  # canonical names: this runs per request
        drop = _connectionTokens(raw.get(b"Connection"))
        upgrade = None
        if b"upgrade" in drop:
            values = incoming.getRawHeaders(b"upgrade")
            if values:
                upgrade = values[0]
        self.upgrade = upgrade
        self.headers = headers._build(request, drop, upgrade)
        stream = getattr(request, "bodyStream", None)
        self.stream = stream
        if stream is not None:
            self.body, self.bodyLength = stream, stream.length or 0
        else:
            self.body, self.bodyLength = _requestBody(request)
        contentType = raw.get(b"Content-Type")
        self.grpc = contentType is not None and isGrpc(contentType[0])
        self.deadline = None
        self.expired = False
        self.context = context
        self.chain = chain
        self.filters = None
        self.record = request.record
        self.observatory = observatory
        self.attemptRecord = None
        self.target = context.target if context is not None else originForm(request.uri)
        self.idempotent = request.method in IDEMPOTENT_METHODS
        self.attemptsLeft = self.config.retries.attempts
        self.retryOn = pool.retryOn

    def start(self) -> None:
        """
        Begin forwarding.
        """
        self.pool.active += 1
        self.pool.budget.request()
        if self.record is not None:
            self.record.pool = self.pool.name
        request = self.request
        watchLost = getattr(request, "watchLost", None)
        if watchLost is not None:
            watchLost(self._clientLost)
        else:
            request.notifyFinish().addErrback(self._clientLost)
        if self.grpc:
            timeout = parseTimeout(
                (self.request.requestHeaders.getRawHeaders(b"grpc-timeout") or [None])[0])
            if timeout is not None:
                self.deadline = self.reactor.callLater(timeout, self._deadlineExpired)
        self._attempt(None)

    # Attempts

    def _attempt(self, lastError: Optional[GolbError]) -> None:
        pool = self.pool
        backend = pool.pick(self.request, self.tried)
        if backend is None:
            if lastError is None and pool.saturated(self.tried):
                if pool.limited and self._refused(None, True):
                    return
                self._queue()
                return
            self._fail(lastError or GolbError("no-backend"))
            return
        if pool.limited and self._refused(backend, False):
            return
        self.tried.append(backend)
        self.backend = backend
        backend.inFlight += 1
        backend.requests += 1
        pool.inFlight += 1
        host = None
        values = self.request.requestHeaders._rawHeaders.get(b"Host")
        if self.config.preserve_host:
            if values:
                host = values[0]
        else:
            # a Host set by a headers policy wins over preserve_host: false
            original = getattr(self.request, "originalHost", None)
            if values and original is not None and values != original:
                host = values[0]
        if host is None:
            host = backend.hostHeader
        target = self.target
        if backend.pathPrefix:
            target = backend.pathPrefix.rstrip("/").encode("utf-8") + target
        headers = [(b"Host", host)]
        headers.extend(self.headers)
        if self.grpc:
            # hop-by-hop, so not copied from the client; gRPC servers want it
            headers.append((b"TE", b"trailers"))
        if self.record is not None:
            self.attemptRecord = self.observatory.attemptStarted(
                self.record, pool.name, backend, headers
            )
        body = self.body
        if self.stream is not None:
            if not hasattr(backend.upstream, "hasCapacity"):
                self._release()
                self._fail(GolbError(
                    "bad-gateway", "gRPC calls need a pool with protocol h2 or h2c."))
                return
        elif body is not None:
            body.seek(0, 0)
        upstreamRequest = UpstreamRequest(
            method=self.request.method,
            target=target,
            headers=headers,
            body=body,
            bodyLength=self.bodyLength,
            onInformational=self._informational,
        )
        self.started = self.reactor.seconds()
        call = backend.upstream.call(upstreamRequest, self)
        self.pending = call
        call.start()

    # The outcome of an attempt, as the receiver of its upstream call

    def responseReceived(self, response) -> None:
        """
        The backend's final response head arrived.
        """
        try:
            self._gotResponse(response)
        except Exception:
            self._bug(Failure())

    def requestFailed(self, reason: Failure) -> None:
        """
        The attempt failed before a response head arrived (or was cancelled).
        """
        try:
            self._attemptFailed(reason)
        except Exception:
            self._bug(Failure())

    def _refused(self, backend, queued: bool) -> bool:
        """
        Fail the request with C{circuit-open} if the pool's circuit breaker
        refuses it.
        """
        refusal = self.pool.refusal(backend, queued)
        if refusal is None:
            return False
        limit = refusal.split("circuit_breaker.", 1)[1].split(" ", 1)[0]
        self._fail(GolbError(
            "circuit-open", f"The backend pool is overloaded (circuit open: {limit})."
        ))
        return True

    def _release(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.inFlight -= 1
            self.pool.inFlight -= 1
            if self.pool.waiting:
                self.pool.slotFreed()

    def _queue(self) -> None:
        """
        Wait for a backend slot, up to the pool's C{queue.timeout}.
        """
        if not self.pool.wait(self._dequeued):
            self._fail(GolbError("queue-full"))
            return
        self.queued = self.reactor.callLater(self.config.queue.timeout, self._queueTimeout)

    def _dequeued(self) -> None:
        queued, self.queued = self.queued, None
        if queued is not None and queued.active():
            queued.cancel()
        if not self.clientGone:
            self._attempt(None)

    def _queueTimeout(self) -> None:
        self.queued = None
        self.pool.unwait(self._dequeued)
        self._fail(GolbError("queue-timeout"))

    def _mayRetry(self, kind: str) -> bool:
        if self.attemptsLeft <= 0 or self.clientGone or kind not in self.retryOn:
            return False
        if self.expired or (self.stream is not None and self.stream.started):
            # a streamed body cannot be sent twice
            return False
        if kind != "connect_failure" and self.config.retries.idempotent_only:
            if not self.idempotent:
                return False
        # A connection that failed never reached a backend: retrying it adds
        # no load to any backend, so it is not charged to the budget.
        if kind == "connect_failure":
            return True
        return self.pool.budget.tryRetry()

    def _retry(self, error: GolbError) -> None:
        self.attemptsLeft -= 1
        self.retries += 1
        self._attempt(error)

    def _attemptFailed(self, reason: Failure) -> None:
        self.pending = None
        backend = self.backend
        self._release()
        attempt, self.attemptRecord = self.attemptRecord, None
        if reason.check(CancelledError) or self.clientGone:
            if attempt is not None:
                self.observatory.attemptFinished(self.record, attempt, error="cancelled")
            if self.expired and not self.clientGone:
                self._fail(GolbError("upstream-timeout", "The call's deadline was exceeded."))
                return
            self._finishExchange()
            return
        if reason.check(GolbError):
            error = reason.value
        else:
            log.failure("Forwarding to {backend} failed", reason, backend=backend)
            error = GolbError("bad-gateway")
        if attempt is not None:
            self.observatory.attemptFinished(self.record, attempt, error=error.code)
        if backend is not None:
            backend.failures += 1
            if self.pool.outliers is not None:
                self.pool.outliers.failure(backend, self.pool, error.message)
        log.info(
            "{pool}/{backend}: {method} {target}: {error}",
            pool=self.pool.name,
            backend=getattr(backend, "id", "?"),
            method=self.request.method.decode("ascii", "replace"),
            target=self.target.decode("ascii", "replace"),
            error=error,
        )
        kind = _failureKind(reason)
        if kind is not None and self._mayRetry(kind):
            self._retry(error)
            return
        self._fail(error)

    def _gotResponse(self, response) -> None:
        self.pending = None
        if self.backend is not None:
            self.backend.recordLatency(self.reactor.seconds() - self.started)
        attempt, self.attemptRecord = self.attemptRecord, None
        if attempt is not None:
            self.observatory.attemptFinished(self.record, attempt, status=response.code)
        if self.clientGone:
            response.stopProducing()
            self._release()
            self._finishExchange()
            return
        code = response.code
        outliers = self.pool.outliers
        if code >= 500:
            self.backend.failures += 1
            # 501 and 505 say the client asked for something the backend
            # does not do: a client must not be able to eject backends.
            if outliers is not None and code not in (501, 505):
                outliers.failure(self.backend, self.pool, f"HTTP {code}")
            status = str(code)
            if status in self.retryOn and self._mayRetry(status):
                response.stopProducing()
                self._release()
                self._retry(GolbError("bad-gateway", f"backend answered {code}"))
                return
        elif outliers is not None and code < 500:
            outliers.success(self.backend)
        if code == 101:
            if self.upgrade is None:
                response.stopProducing()
                self._release()
                self._fail(GolbError("invalid-response", "backend switched protocols unasked"))
                return
            self._switchProtocols(response)
            return
        self.response = response
        request = self.request
        request.setResponseCode(code, response.phrase or None)
        responseHeaders(response, request)
        if self.pool.stickyValues:
            self._setSticky()
        bodiless = request.method == b"HEAD" or code in (204, 304) or response.length == 0
        if self.chain is not None:
            filters = self.chain.runResponse(request, self.context, response)
            if filters and not bodiless:
                self.filters = filters
                # a filter may change the body's length
                request.responseHeaders.removeHeader(b"content-length")
        if bodiless:
            request.write(b"")
            self.bodyDone(None)
            return
        request.registerProducer(response, True)
        response.deliverBody(self)

    def _setSticky(self) -> None:
        sticky = self.config.sticky
        backend = self.tried[-1]
        name = sticky.cookie.encode("ascii")
        value = backend.stickyValue
        if self.request.getCookie(name) == value:
            return
        cookie = name + b"=" + value + b"; Path=/; HttpOnly; SameSite=Lax"
        if sticky.ttl:
            cookie += b"; Max-Age=%d" % (int(sticky.ttl),)
        if self.request.isSecure():
            cookie += b"; Secure"
        self.request.responseHeaders.addRawHeader(b"Set-Cookie", cookie)

    # Response body, as the upstream's receiver

    def dataReceived(self, data: bytes) -> None:
        if self.clientGone:
            return
        if self.filters is not None:
            for bodyFilter in self.filters:
                data = bodyFilter.write(data)
                if not data:
                    return
        self.request.write(data)

    def _flushFilters(self) -> None:
        filters, self.filters = self.filters, None
        if filters is None:
            return
        data = b""
        for bodyFilter in filters:
            if data:
                data = bodyFilter.write(data)
            data += bodyFilter.finish()
        if data:
            self.request.write(data)

    def bodyDone(self, reason: Optional[Failure]) -> None:
        """
        The backend's response body ended: completely (C{reason} is L{None}) or
        cut short, in which case the client connection is closed so the client
        sees the truncation.
        """
        self._release()
        response, self.response = self.response, None
        request = self.request
        if self.done:
            return
        if not self.clientGone:
            if response is not None:
                request.unregisterProducer()
            if reason is None:
                if self.filters is not None:
                    self._flushFilters()
                trailers = getattr(response, "trailers", None)
                if trailers:
                    request.responseTrailers = list(trailers)
                request.finish()
            elif self.grpc and request.startedWriting:
                # the call's messages so far went out: end it with a status
                log.warn("{pool}: gRPC response from backend cut short: {reason}",
                         pool=self.pool.name, reason=reason.getErrorMessage())
                self._endGrpc(14, "The backend stream ended abnormally.")
            else:
                log.warn(
                    "{pool}: response body from backend cut short: {reason}",
                    pool=self.pool.name,
                    reason=reason.getErrorMessage(),
                )
                transport = request.channel.transport if request.channel else None
                if transport is not None:
                    transport.loseConnection()
        self._finishExchange()

    # Informational responses and upgrades

    def _informational(self, code: int, phrase: bytes, headers) -> None:
        request = self.request
        if code == 100 or self.clientGone or request.startedWriting:
            return
        if request.clientproto != b"HTTP/1.1":
            return
        lines = [b"HTTP/1.1 %d %s" % (code, phrase)]
        for name, value in headers:
            lines.append(name + b": " + value)
        request.channel.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def _switchProtocols(self, response) -> None:
        from golb.tunnel import Tunnel

        request = self.request
        head = [b"HTTP/1.1 101 " + (response.phrase or b"Switching Protocols")]
        for name, value in response.headers:
            head.append(name + b": " + value)
        head.append(b"Via: " + _VIA)
        backend = self.backend
        self.backend = None
        tunnel = Tunnel.fromRequest(
            request,
            response.switchProtocol(),
            b"\r\n".join(head) + b"\r\n\r\n",
            idleTimeout=self.config.timeouts.idle,
        )

        pool = self.pool

        def closed(_):
            if backend is not None:
                backend.inFlight -= 1
                pool.inFlight -= 1

        tunnel.whenClosed().addCallback(closed)
        self._finishExchange()

    # Endings

    def _fail(self, error: GolbError) -> None:
        if isinstance(error, UpstreamError):
            # The detail (backend address, TLS internals) is in golb's log;
            # the client gets the error's generic message.
            error = GolbError(error.code, status=error.status)
        if self.chain is not None and not self.clientGone:
            self.chain.runResponse(self.request, self.context, None)
        renderError(self.request, error)
        self._finishExchange()

    def _finishExchange(self) -> None:
        if self.done:
            return
        self.done = True
        self.pool.active -= 1
        deadline, self.deadline = self.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _deadlineExpired(self) -> None:
        """
        A gRPC call's C{grpc-timeout} is up: give up on the backend and end
        the call with C{DEADLINE_EXCEEDED}, as a gRPC proxy must.
        """
        self.deadline = None
        self.expired = True
        if self.done or self.clientGone:
            return
        stage = self._abandonUpstream()
        if stage == "queued":
            self._fail(GolbError("upstream-timeout", "The call's deadline was exceeded."))
        elif stage == "response":
            self.request.unregisterProducer()
            self._endGrpc(4, "The call's deadline was exceeded.")

    def _endGrpc(self, code: int, message: str) -> None:
        """
        End a gRPC response whose head went out with a status in trailers.
        """
        request = self.request
        request.responseTrailers = [
            (b"grpc-status", b"%d" % (code,)),
            (b"grpc-message", percentEncodeMessage(message)),
        ]
        record = getattr(request, "record", None)
        if record is not None:
            record.error = "upstream-timeout" if code == 4 else "upstream-reset"
        if not request.finished and not getattr(request, "_disconnected", False):
            request.finish()
        self._finishExchange()

    def _clientLost(self, reason: Failure) -> None:
        self.clientGone = True
        if self._abandonUpstream() in ("queued", "response"):
            # a cancelled attempt ends the exchange through its failure
            self._finishExchange()

    def _abandonUpstream(self) -> Optional[str]:
        """
        Stop whatever the exchange waits for: its place in the pool's queue,
        its attempt, or the backend's response body.

        @return: C{"queued"}, C{"pending"} or C{"response"}, which one was
            abandoned, or L{None} when it waited for nothing.
        """
        if self.queued is not None:
            queued, self.queued = self.queued, None
            if queued.active():
                queued.cancel()
            self.pool.unwait(self._dequeued)
            return "queued"
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
            return "pending"
        if self.response is not None:
            response, self.response = self.response, None
            response.stopProducing()
            self._release()
            return "response"
        return None

    def _bug(self, reason: Failure) -> None:
        log.failure("Unexpected error forwarding a request", reason)
        self._release()
        if not self.clientGone:
            renderError(self.request, GolbError("bad-gateway"))
        self._finishExchange()


# Request bodies up to this size are copied to mirrors; larger ones are not
# mirrored (the copy would double their memory).
MIRROR_MAX_BODY = 1024 * 1024


class _Discard:
    """
    Reads and drops a mirrored response's body.
    """

    def dataReceived(self, data: bytes) -> None:
        pass

    def bodyDone(self, reason) -> None:
        pass


def mirror(request, pool, headers: ProxyHeaders, target: Optional[bytes] = None) -> None:
    """
    Send a copy of C{request} to a backend of C{pool} and drop the answer.
    The copy never delays or fails the real request: errors are logged at
    debug level and bodies over L{MIRROR_MAX_BODY} are not mirrored.
    """
    body, length = _requestBody(request)
    if length > MIRROR_MAX_BODY:
        return
    data = None
    if body is not None:
        data = body.read()
        body.seek(0, 0)
    backend = pool.pick(request)
    if backend is None or backend.upstream is None:
        return
    if pool.limited and pool.refusal(backend) is not None:
        return
    host = request.requestHeaders.getRawHeaders(b"host", [backend.hostHeader])[0]
    if target is None:
        target = originForm(request.uri)
    if backend.pathPrefix:
        target = backend.pathPrefix.rstrip("/").encode("utf-8") + target
    upstreamRequest = UpstreamRequest(
        method=request.method,
        target=target,
        headers=[(b"Host", host)] + headers.build(request),
        body=data,
        bodyLength=length,
    )
    backend.inFlight += 1
    backend.requests += 1
    pool.inFlight += 1

    def answered(response):
        response.deliverBody(_Discard())

    def done(result):
        backend.inFlight -= 1
        pool.inFlight -= 1
        return result

    def failed(reason):
        log.debug("mirror to {pool}/{backend} failed: {reason}", pool=pool.name,
                  backend=backend.id, reason=reason.getErrorMessage())

    d = backend.upstream.request(upstreamRequest)
    d.addCallback(answered)
    d.addBoth(done)
    d.addErrback(failed)
