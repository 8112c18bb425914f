"""
The client-facing HTTP/1.1 (and HTTP/2) server of a golb listener.

A L{GolbSite} serves one listener: its connections are
L{golb._fastchannel.FastChannel}s (a L{GolbChannel} that parses each request
head in one pass), strict about framing and limits (see L{golb._channel}),
or L{golb._h2server.H2Channel}s when TLS negotiated C{h2} or, with C{h2c},
a plain connection starts with the HTTP/2 preface; its requests are
L{GolbRequest}s, which know their real client address and scheme.  Requests
reach the resource only once complete and unambiguous; the body is buffered
by Twisted in C{request.content} (memory, or a temporary file above 100 kB),
C{request.bodyLength} bytes long.
"""

import ipaddress
import tempfile
from io import BytesIO
from typing import Optional, Sequence, Tuple, Union
from urllib.parse import unquote_to_bytes as unquote

from twisted.python.failure import Failure
from twisted.web.http import Request as HTTPRequest
from twisted.web.http import parse_qs
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from golb._channel import GolbChannel
from golb._h2server import SwitchingChannel
from golb.errors import GolbError

__all__ = ["GolbChannel", "GolbRequest", "GolbSite", "listenerSites", "parseAddress"]


def listenerSites(parent) -> dict:
    """
    The sites of the listener services (named C{listener:<name>}) that are
    children of C{parent} (golb's root service), by listener name; C{{}}
    without a parent.
    """
    found = {}
    for service in list(parent or ()):
        name = service.name or ""
        factory = getattr(service, "factory", None)
        if name.startswith("listener:") and factory is not None:
            found[name[len("listener:"):]] = factory
    return found

_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parseAddress(text: Union[str, bytes]) -> Optional[_IPAddress]:
    """
    Parse one address as found in a peer, C{X-Forwarded-For} or C{Forwarded}
    C{for=}: C{1.2.3.4}, C{1.2.3.4:80}, C{::1}, C{[::1]:80}, optionally
    quoted.  IPv4-mapped IPv6 addresses become IPv4 ones.

    @return: the address, or L{None} when C{text} is not one (C{unknown},
        an obfuscated C{_name}, garbage).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = text.strip(" \t").strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _isTrusted(address: _IPAddress, trusted: Tuple[_Network, ...]) -> bool:
    for network in trusted:
        if address in network:
            return True
    return False


def _forwardedFor(headers) -> list:
    """
    The hops a request went through, left (client) to right (last proxy),
    from C{X-Forwarded-For}, or from C{Forwarded} C{for=} when there is none.
    An element without C{for=} counts as an unknown hop.
    """
    values = headers.getRawHeaders(b"x-forwarded-for")
    if values:
        return b",".join(values).split(b",")
    hops = []
    for value in headers.getRawHeaders(b"forwarded", []):
        for element in value.split(b","):
            hop = b""
            for pair in element.split(b";"):
                key, _, pairValue = pair.partition(b"=")
                if key.strip(b" \t").lower() == b"for":
                    hop = pairValue
            hops.append(hop)
    return hops


class GolbRequest(Request):
    """
    A request received by a golb listener.

    @ivar maxBodyBytes: the largest body accepted, from the site; lower it
        (before the body is read) to be stricter; L{None} for no limit.
    @ivar bodyLength: how many body bytes have been received so far (all of
        them once the resource is called); the body is C{self.content}.
    @ivar listenerName: the name of the listener that received the request.
    @ivar originalHost: the client's C{Host} values before policies ran
        (L{None} when the route has none).
    @ivar bodyStream: on HTTP/2, the L{golb.streams.BodyStream} of a gRPC
        request, which reached its resource before its body (then
        C{content} is empty); else L{None}.
    @ivar responseTrailers: trailer fields C{[(name, value)]} to send after
        the response body when it is finished (HTTP/2 only), or L{None}.

    Unlike Twisted's, a response gets no default C{Content-Type}: a proxied
    response keeps exactly the headers its backend sent.
    """

    defaultContentType = None
    maxBodyBytes: Optional[int] = None
    bodyLength = 0
    record = None
    receivedAt = 0.0
    originalHost = None
    bodyStream = None
    responseTrailers = None
    _clientAddress: Optional[str] = None
    _scheme = "http"
    _lostWatcher = None

    def __init__(self, channel, queued=None, parsePOSTFormSubmission=False):
        # What Twisted's server.Request and http.Request set up (checked
        # against them by a test), without their calls: this runs per
        # request.  Bodies go to backends as they are: forms are never parsed
        # (work wasted on every POST, and a 400 for multipart bodies Twisted
        # cannot read, which the backend may well accept).
        self.notifications = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = Headers()
        self.received_cookies = {}
        self.responseHeaders = Headers()
        self.cookies = []
        self.transport = channel.transport
        self.queued = False
        self._parsePOSTFormSubmission = False
        self._adapterCache = {}
        site = channel.site
        self.observatory = site.observatory
        if self.observatory is not None and self.observatory.active:
            self.receivedAt = site.clock.seconds()
        self.maxBodyBytes = site.maxBodyBytes
        self.listenerName = site.listenerName
        self._trustedProxies = site.trustedProxies
        self._scheme = "https" if channel.isSecure() else "http"

    def handleContentChunk(self, data):
        """
        Buffer body bytes, answering 413 as soon as they exceed
        C{maxBodyBytes}.
        """
        self.bodyLength += len(data)
        limit = self.maxBodyBytes
        if limit is not None and self.bodyLength > limit:
            self.channel.rejectAndClose(GolbError("body-too-large"))
            return
        Request.handleContentChunk(self, data)

    def clientAddress(self) -> str:
        """
        The real client's IP address: the peer's, unless the peer is a
        trusted proxy; then the right-most untrusted address of
        C{X-Forwarded-For} (or C{Forwarded} C{for=}).  Addresses are never
        taken from headers sent by an untrusted peer.

        @return: the address as text (C{""} for a peer without one, such as
            a UNIX socket).
        """
        if self._clientAddress is None:
            self._clientAddress = self._findClientAddress()
        return self._clientAddress

    def _findClientAddress(self) -> str:
        peerHost = getattr(self.client, "host", None)
        if peerHost is None:
            return ""
        trusted = self._trustedProxies
        channel = getattr(self, "channel", None)
        cached = getattr(channel, "_golbPeer", None)
        if cached is not None and cached[0] == peerHost and cached[1] is trusted:
            peer, peerTrusted, peerText = cached[2], cached[3], cached[4]
        else:
            peer = parseAddress(peerHost)
            peerTrusted = peer is not None and bool(trusted) and _isTrusted(peer, trusted)
            peerText = peerHost if peer is None else str(peer)
            if channel is not None:
                # the peer of a connection does not change: parse it once
                channel._golbPeer = (peerHost, trusted, peer, peerTrusted, peerText)
        if not peerTrusted:
            return peerText
        last = peer
        for hop in reversed(_forwardedFor(self.requestHeaders)):
            address = parseAddress(hop)
            if address is None:
                break
            last = address
            if not _isTrusted(address, trusted):
                break
        return str(last)

    def tlsClientSubject(self) -> Optional[str]:
        """
        The subject of the client certificate verified on this request's
        connection (RFC 4514, e.g. C{CN=alice,O=Example}), or L{None} on a
        plain connection or without one.
        """
        if self._scheme != "https":
            return None
        from golb.tls import tlsClientSubject

        return tlsClientSubject(self)

    def scheme(self) -> str:
        """
        C{"https"} when the client connection is TLS, else C{"http"}.
        Known from the start, so still right after the response is finished.
        """
        return self._scheme

    def requestReceived(self, command, path, version):
        """
        Turn an absolute-form target (C{GET http://host/path}) into its
        origin-form and Host (RFC 9112 section 3.2.2) before processing.
        """
        scheme, sep, rest = path.partition(b"://")
        if sep and path[:1] != b"/" and scheme.lower() in (b"http", b"https"):
            cut = len(rest)
            for delimiter in (b"/", b"?"):
                index = rest.find(delimiter)
                if index != -1:
                    cut = min(cut, index)
            authority, path = rest[:cut], rest[cut:]
            if path[:1] != b"/":
                path = b"/" + path
            self.requestHeaders.setRawHeaders(b"host", [authority])
        # Twisted's http.Request.requestReceived, without form parsing
        content = self.content
        if content is not None:
            content.seek(0, 0)
        self.method, self.uri = command, path
        self.clientproto = version
        target, sep, query = path.partition(b"?")
        self.path = target
        self.args = parse_qs(query, 1) if sep else {}
        self.process()

    def gotLength(self, length):
        """
        Make C{self.content} for a body of C{length} bytes (L{None}:
        unknown): memory below 100 kB, a temporary file from there, as
        Twisted does.
        """
        if length is not None and length < 100000:
            self.content = BytesIO()
        else:
            self.content = tempfile.TemporaryFile()

    def write(self, data):
        """
        Write body bytes: Twisted's C{http.Request.write}, without
        C{server.Request}'s default C{Content-Type} check (golb sets none)
        and encoders (golb compresses with a policy instead).
        """
        if not self._inFakeHead:
            HTTPRequest.write(self, data)

    def process(self):
        """
        Find the resource and render it, as Twisted's C{process} does but
        without its per-request C{Server: TwistedWeb/...} header (golb sends
        none) and C{Date} (the channel adds one to golb's own answers;
        proxied ones carry the backend's).
        """
        self.site = site = self.channel.site
        self.prepath = []
        path = self.path
        self.postpath = list(map(unquote, path[1:].split(b"/")))
        if path == b"*":
            self._handleStar()
            return
        try:
            resource = site.resource
            if getattr(resource, "isLeaf", False):
                # what Site.getResourceFor finds for a leaf root
                self.sitepath = []
            else:
                resource = site.getResourceFor(self)
            Request.render(self, resource)
        except BaseException:
            self.processingFailed(Failure())

    def watchLost(self, callback) -> None:
        """
        Call C{callback(reason)} if the connection is lost before the
        response is done: C{notifyFinish}'s errback without a L{Deferred}
        per request (the proxy watches every request).  One watcher.
        """
        self._lostWatcher = callback

    def _cleanup(self):
        self._lostWatcher = None
        Request._cleanup(self)

    def connectionLost(self, reason):
        """
        The client went away: an unfinished request's record ends here.
        """
        Request.connectionLost(self, reason)
        watcher = self._lostWatcher
        if watcher is not None:
            self._lostWatcher = None
            watcher(reason)
        if self.record is not None and not self.finished:
            self.observatory.requestFinished(self, aborted=True)

    def processingFailed(self, reason):
        """
        Twisted's 500 for an unhandled error, without its C{Server} header.
        """
        self.responseHeaders.removeHeader(b"server")
        return Request.processingFailed(self, reason)


class GolbSite(Site):
    """
    The L{Site} of one golb listener.

    @ivar openConnections: the L{GolbChannel}s currently connected (for
        draining on shutdown).
    @ivar openTunnels: the L{golb.tunnel.Tunnel}s (upgraded connections,
        WebSockets) currently open.
    @ivar maxHeaderCount: the most header fields in one request (431).
    @ivar maxRequestLineBytes: the longest request line (414).
    @ivar h2c: whether a plain connection may start with the HTTP/2 preface
        (HTTP/2 with prior knowledge).
    @ivar maxConcurrentStreams: the most streams at once on one HTTP/2
        connection.
    """

    protocol = SwitchingChannel
    requestFactory = GolbRequest
    maxHeaderCount = 500
    maxRequestLineBytes = 8192
    maxConcurrentStreams = 100

    def __init__(
        self,
        resource,
        *,
        reactor=None,
        maxHeaderBytes: int = 65536,
        maxBodyBytes: Optional[int] = 100 * 2**20,
        requestHeaderTimeout: Optional[float] = 10.0,
        idleTimeout: Optional[float] = 60.0,
        trustedProxies: Sequence[Union[str, _Network]] = (),
        listenerName: str = "default",
        observatory=None,
        h2c: bool = False,
    ):
        """
        @param resource: the root resource.
        @param reactor: an C{IReactorTime} for the timeouts (the global
            reactor when L{None}).
        @param maxHeaderBytes: the most bytes of a request head (431).
        @param maxBodyBytes: the largest request body (413), or L{None}.
        @param requestHeaderTimeout: seconds from a request's first byte until
            all of it must have arrived (408), or L{None}.
        @param idleTimeout: seconds a connection may stay idle between
            requests before it is closed silently, or L{None}.
        @param trustedProxies: networks (L{ipaddress} networks or text) whose
            C{X-Forwarded-For} / C{Forwarded} headers are believed.
        @param listenerName: the listener's name, for logs and metrics.
        @param observatory: the L{golb.observe.Observatory} told about
            requests, or L{None}.
        @param h2c: serve HTTP/2 with prior knowledge on plain connections
            that start with its preface.
        """
        Site.__init__(
            self,
            resource,
            requestFactory=GolbRequest,
            timeout=idleTimeout,
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        self.maxHeaderBytes = maxHeaderBytes
        self.maxBodyBytes = maxBodyBytes
        self.requestHeaderTimeout = requestHeaderTimeout
        self.idleTimeout = idleTimeout
        self.trustedProxies = tuple(
            ipaddress.ip_network(network) if isinstance(network, str) else network
            for network in trustedProxies
        )
        self.listenerName = listenerName
        self.observatory = observatory
        self.h2c = h2c
        if reactor is None:
            from twisted.internet import reactor
        self.clock = reactor
        self.openConnections = set()
        self.openTunnels = set()

    def startFactory(self):
        """
        Nothing to start: golb writes its own access log, so Twisted's log
        clock is not needed.
        """

    def stopFactory(self):
        """
        Nothing to stop; see L{startFactory}.
        """

    def log(self, request):
        """
        No Twisted access log line: the request's record goes to the
        observatory (metrics, traces, golb's access log) instead.
        """
        if request.record is not None:
            self.observatory.requestFinished(request)
