"""
Tests for L{golb._fastchannel.FastChannel}: every request-hygiene test of
L{golb.test.test_listener} and the proxy tests of L{golb.test.test_proxy}
run unchanged over it, and it parses whatever it is sent exactly as
L{golb.listener.GolbChannel} does.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from golb._fastchannel import FastChannel
from golb.listener import GolbChannel, GolbSite
from golb.test import test_listener, test_proxy


class _FastSite:
    """
    Mixin for the listener tests: every site built by C{makeSite} speaks
    through L{FastChannel}.
    """

    def makeSite(self, resource=None, **kwargs):
        site = test_listener.ListenerTestCase.makeSite(self, resource, **kwargs)
        site.protocol = FastChannel
        return site

    def connect(self, site=None, peer="10.0.0.1"):
        channel, transport = test_listener.ListenerTestCase.connect(self, site, peer)
        self.assertIsInstance(channel, FastChannel)
        return channel, transport


class FastFramingTests(_FastSite, test_listener.FramingTests):
    """
    L{test_listener.FramingTests} over L{FastChannel}.
    """


class FastLimitTests(_FastSite, test_listener.LimitTests):
    """
    L{test_listener.LimitTests} over L{FastChannel}.
    """


class FastTimeoutTests(_FastSite, test_listener.TimeoutTests):
    """
    L{test_listener.TimeoutTests} over L{FastChannel}.
    """


class FastConnectionTests(_FastSite, test_listener.ConnectionTests):
    """
    L{test_listener.ConnectionTests} over L{FastChannel}.
    """


class FastClientAddressTests(_FastSite, test_listener.ClientAddressTests):
    """
    L{test_listener.ClientAddressTests} over L{FastChannel}.
    """


def _again(test, *strategies):
    """
    The body of the hypothesis test C{test}, given C{strategies} (the same
    as C{test}'s) anew: one @given test run from two classes trips
    hypothesis' C{differing_executors} health check.
    """
    return settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])(
        given(*strategies)(test.hypothesis.inner_test))


class FastGarbageTests(_FastSite, test_listener.GarbageTests):
    """
    L{test_listener.GarbageTests} over L{FastChannel}.
    """

    test_garbage = _again(
        test_listener.GarbageTests.test_garbage,
        st.lists(st.one_of(st.sampled_from(test_listener._FRAGMENTS), st.binary(max_size=8)),
                 max_size=40),
        st.integers(min_value=1, max_value=64),
    )

    test_nearlyValid = _again(
        test_listener.GarbageTests.test_nearlyValid,
        st.lists(
            st.tuples(
                st.sampled_from(test_listener._REQUEST_LINES),
                st.lists(st.sampled_from(test_listener._HEADERS), max_size=5),
                st.sampled_from(test_listener._BODIES),
            ),
            min_size=1, max_size=3,
        ),
        st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.binary(max_size=3))),
        st.integers(min_value=1, max_value=64),
    )


class FastLoopbackTests(test_listener.LoopbackTests):
    """
    L{test_listener.LoopbackTests} over L{FastChannel}, on real TCP.
    """

    def setUp(self):
        # The loopback tests build their GolbSite inline: give them ours.
        self.patch(GolbSite, "protocol", FastChannel)


class _FastProxy:
    """
    Mixin for the proxy tests: the golb under test answers through
    L{FastChannel}.  L{golb.test.support.listenGolb} cannot be told the
    protocol, so the site class's C{protocol} is swapped for the test (and
    restored by trial); the test then checks a L{FastChannel} did serve.
    """

    def setUp(self):
        served = []

        class Counting(FastChannel):
            def connectionMade(self):
                served.append(self)
                FastChannel.connectionMade(self)

        self.patch(GolbSite, "protocol", Counting)
        self.addCleanup(lambda: self.assertTrue(served, "no FastChannel served"))
        return super().setUp()


class FastForwardingTests(_FastProxy, test_proxy.ForwardingTests):
    """
    L{test_proxy.ForwardingTests} through L{FastChannel}.
    """


class FastFailureTests(_FastProxy, test_proxy.FailureTests):
    """
    L{test_proxy.FailureTests} through L{FastChannel}.
    """


class FastStreamingTests(_FastProxy, test_proxy.StreamingTests):
    """
    L{test_proxy.StreamingTests} through L{FastChannel}.
    """


class FastUpgradeTests(_FastProxy, test_proxy.UpgradeTests):
    """
    L{test_proxy.UpgradeTests} (WebSocket tunnels) through L{FastChannel}.
    """


class FastStickyTests(_FastProxy, test_proxy.StickyTests):
    """
    L{test_proxy.StickyTests} through L{FastChannel}.
    """


class FastQueueTests(_FastProxy, test_proxy.QueueTests):
    """
    L{test_proxy.QueueTests} through L{FastChannel}.
    """


class FastCircuitBreakerTests(_FastProxy, test_proxy.CircuitBreakerTests):
    """
    L{test_proxy.CircuitBreakerTests} through L{FastChannel}.
    """


# Equivalence with GolbChannel


class _EchoResource(Resource):
    """
    Records what it was asked and answers it back, so that differences in
    parsing show in the response too.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.seen = []

    def render(self, request):
        body = request.content.read()
        headers = [(name, list(values)) for name, values in
                   request.requestHeaders.getAllRawHeaders()]
        self.seen.append((request.method, request.uri, request.clientproto, headers, body,
                          request.getCookie(b"c")))
        request.setHeader(b"content-type", b"text/plain")
        return b"%r %r %r %r %r" % (request.method, request.uri, request.clientproto,
                                    headers, body)


def _run(protocol, pieces, advance=100.0, maxHeaderCount=None, **siteArgs):
    """
    Feed C{pieces} to a new connection of C{protocol}, one C{dataReceived}
    each, let C{advance} seconds pass, and say what happened.

    @return: C{(seen, output, disconnecting)}: what the resource saw, the
        bytes written back (C{Date} lines removed) and whether the
        connection is closing.
    """
    clock = Clock()
    resource = _EchoResource()
    site = GolbSite(resource, reactor=clock, **siteArgs)
    site.protocol = protocol
    if maxHeaderCount is not None:
        site.maxHeaderCount = maxHeaderCount
    address = IPv4Address("TCP", "10.0.0.1", 40000)
    channel = site.buildProtocol(address)
    assert type(channel) is protocol
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    for piece in pieces:
        channel.dataReceived(piece)
    clock.advance(advance)
    disconnecting = transport.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))
    output = b"\r\n".join(
        line for line in transport.value().split(b"\r\n") if not line.startswith(b"Date: ")
    )
    return resource.seen, output, disconnecting


def _split(data, cuts):
    """
    Cut C{data} at the (sorted, bounded) positions C{cuts}.
    """
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = []
    start = 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return [piece for piece in pieces if piece] or [b""]


_tchar = st.sampled_from(
    list(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
)
_tokens = st.lists(_tchar, min_size=1, max_size=12).map(bytes)
_vchar = st.integers(min_value=0x21, max_value=0x7E)
_path = st.lists(_vchar, max_size=40).map(lambda cs: b"/" + bytes(cs))
_valueBytes = st.one_of(_vchar, st.sampled_from([0x20, 0x09, 0x80, 0xFF, 0x0B]))
_value = st.lists(_valueBytes, max_size=30).map(bytes)
_names = st.one_of(
    _tokens,
    st.sampled_from([b"Accept", b"accept", b"Cookie", b"X-Forwarded-For", b"expect",
                     b"ETag", b"www-authenticate", b"Connection", b"DNT"]),
)


@st.composite
def _request(draw, last=False):
    """
    One valid request: its bytes.
    """
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])) if last \
        else b"HTTP/1.1"
    method = draw(st.one_of(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD"]), _tokens))
    target = draw(st.one_of(
        _path,
        st.just(b"http://example.com:8080/x?y=1"),
        st.just(b"*") if method == b"OPTIONS" else _path,
    ))
    fields = draw(st.lists(st.tuples(_names, _value), max_size=8))
    fields = [(n, v) for n, v in fields
              if n.lower() not in (b"host", b"content-length", b"transfer-encoding")]
    if version == b"HTTP/1.1" or draw(st.booleans()):
        host = draw(st.sampled_from([b"a", b"example.com:80", b"[::1]:8080", b"A-b.c"]))
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", host))
    if last and draw(st.booleans()):
        connection = draw(st.sampled_from([b"close", b"x, Close", b"keep-alive"]))
        fields.append((b"Connection", connection))
    else:
        fields = [(n, v) for n, v in fields if n.lower() != b"connection"]
    body = draw(st.binary(max_size=60))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if version == b"HTTP/1.1"
                                   else ["none", "length"]))
    if framing == "none":
        body = b""
        encoded = b""
    elif framing == "length":
        spelling = draw(st.sampled_from([b"%d", b"0%d", b"%d, %d", b" %d "]))
        value = spelling % ((len(body),) * spelling.count(b"%d"))
        fields.append((draw(st.sampled_from([b"Content-Length", b"content-length"])), value))
        encoded = body
    else:
        fields.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
        cuts = draw(st.lists(st.integers(0, len(body)), max_size=4))
        chunks = [c for c in _split(body, cuts) if c]
        encoded = b""
        for chunk in chunks:
            extension = draw(st.sampled_from([b"", b";a=b", b"; x"]))
            encoded += b"%x%s\r\n%s\r\n" % (len(chunk), extension, chunk)
        trailers = draw(st.sampled_from([b"", b"T: 1\r\n"]))
        encoded += b"0\r\n" + trailers + b"\r\n"
    head = method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    prefix = draw(st.sampled_from([b"", b"", b"\r\n"]))
    return prefix + head + b"\r\n" + encoded


@st.composite
def _pipeline(draw):
    count = draw(st.integers(1, 3))
    return b"".join(draw(_request(last=(i == count - 1))) for i in range(count))


_SPLICES = [
    b"\r\n", b"\r\n ", b"\r\n\t", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b",",
    b"Content-Length: 3\r\n", b"Content-Length: 5\r\n", b"content-length: 0\r\n",
    b"Content-Length: 5, 5\r\n", b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n", b"Host: b\r\n",
    b"Host: a b\r\n", b"Expect: 100-continue\r\n", b"Accept: application/json\r\n",
    b"Connection: close\r\n", b"Cookie: c=1; d=2\r\n", b"X: \x00\r\n", b"Bad Name: v\r\n",
    b"NoColon\r\n", b"0\r\n\r\n", b"5\r\nhello\r\n", b"ffffffffffffffffff\r\n",
    b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n", b"HTTP/1.2", b"\r\n\r\n",
]


@st.composite
def _mutations(draw, data):
    """
    C{data} with a few splices, at line starts or anywhere.
    """
    for _ in range(draw(st.integers(1, 3))):
        starts = [0] + [i + 2 for i in range(len(data)) if data.startswith(b"\r\n", i)]
        where = draw(st.one_of(st.sampled_from(starts), st.integers(0, len(data))))
        insert = draw(st.one_of(st.sampled_from(_SPLICES), st.binary(min_size=1, max_size=3)))
        data = data[:where] + insert + data[where:]
    return data


class EquivalenceTests(TestCase):
    """
    L{FastChannel} and L{GolbChannel} see the same requests and answer the
    same bytes, however the input is split.
    """

    def assertSame(self, data, cuts, **siteArgs):
        pieces = _split(data, cuts)
        slow = _run(GolbChannel, pieces, **siteArgs)
        fast = _run(FastChannel, pieces, **siteArgs)
        self.assertEqual(fast, slow, (data, pieces))
        return fast

    def test_strayLineAfterPipelinedRequest(self):
        """
        An empty line left after a request (RFC 9112 lets clients send one
        before a request line) is ignored by both channels: the connection
        is idle and closes silently at its idle timeout, without a 408
        (found by the property test below, after a chunked body and after
        bodiless requests).
        """
        for data in [
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\n\x00\r\n0\r\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n",
        ]:
            seen, output, disconnecting = self.assertSame(data, [])
            self.assertNotIn(b"408", output)
            self.assertTrue(disconnecting)

    def test_partialRequestAfterPipelined(self):
        """
        Part of a request left after one answered is still timed: 408.
        """
        data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHo"
        seen, output, disconnecting = self.assertSame(data, [])
        self.assertIn(b"408 Request Time-out", output)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_pipeline(), st.lists(st.integers(min_value=0), max_size=6))
    def test_validRequests(self, data, cuts):
        """
        Valid pipelined requests (CL, chunked, no body; HTTP/1.0 and 1.1),
        cut anywhere, are parsed alike and answered alike.
        """
        seen, output, disconnecting = self.assertSame(data, cuts)
        self.assertTrue(seen)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        _pipeline().flatmap(_mutations),
        st.lists(st.integers(min_value=0), max_size=6),
    )
    def test_mutatedRequests(self, data, cuts):
        """
        Valid requests with a few bytes spliced in (header lines, folds,
        stray CR/LF/NUL, framing headers, chunks) get the same answers
        (status, code, message and all) and the same close.
        """
        self.assertSame(data, cuts)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(st.one_of(st.sampled_from(test_listener._FRAGMENTS), st.binary(max_size=8)),
                 max_size=40),
        st.lists(st.integers(min_value=0), max_size=8),
    )
    def test_garbage(self, pieces, cuts):
        """
        Random bytes get the same answer (or silence) from both channels.
        """
        self.assertSame(b"".join(pieces), cuts)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.one_of(_pipeline(), _pipeline().flatmap(_mutations)),
        st.lists(st.integers(min_value=0), max_size=4),
        st.integers(20, 200),
        st.sampled_from([None, 0, 5, 30]),
        st.sampled_from([None, 1, 2, 3, 5]),
    )
    def test_limits(self, data, cuts, maxHeaderBytes, maxBodyBytes, maxHeaderCount):
        """
        Under small head, body and field-count limits both channels answer
        the same 431s and 413s at the same points.
        """
        self.assertSame(data, cuts, maxHeaderBytes=maxHeaderBytes, maxBodyBytes=maxBodyBytes,
                        maxHeaderCount=maxHeaderCount)

    def test_everyCutAtEveryLimit(self):
        """
        A few requests, cut once at every byte, under every head limit
        around their size, get the same answers.
        """
        for data in [
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
            b"\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfold\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: 1\r\nX-B: 2\r\n\r\n",
        ]:
            for limit in range(10, len(data) + 3):
                for cut in range(len(data) + 1):
                    self.assertSame(data, [cut], maxHeaderBytes=limit)

    def test_slowRequestTimesOutAlike(self):
        """
        A request that stops half-way gets the same 408.
        """
        self.assertSame(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nab", [])
        self.assertSame(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ", [3, 9, 20])


class _HoldResource(Resource):
    """
    Keeps every request unanswered.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


class DrainTests(TestCase):
    """
    C{drain()} (golb's graceful shutdown) works on L{FastChannel}.
    """

    def connect(self):
        self.clock = Clock()
        self.resource = _HoldResource()
        site = GolbSite(self.resource, reactor=self.clock)
        site.protocol = FastChannel
        channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_idleClosesNow(self):
        """
        An idle connection closes at once.
        """
        channel, transport = self.connect()
        channel.drain()
        self.assertTrue(transport.disconnecting)

    def test_inFlightClosesAfterResponse(self):
        """
        A connection with a request in flight answers it with
        C{Connection: close} (its head not out yet), then closes.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        [request] = self.resource.requests
        channel.drain()
        self.assertFalse(transport.disconnecting)
        request.finish()
        self.assertTrue(transport.disconnecting)
        head = transport.value().partition(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(head[0], b"HTTP/1.1 200 OK")
        self.assertIn(b"Connection: close", head)


class TunnelBufferTests(TestCase):
    """
    Bytes pipelined behind a request wait in C{_dataBuffer}, where
    L{golb.tunnel.Tunnel.fromRequest} finds them after an upgrade.
    """

    def test_bytesAfterUpgradeRequest(self):
        """
        Bytes after a request without a body, sent with it or after it,
        are kept for the tunnel, unparsed.
        """
        resource = test_listener.RecordingResource(streaming=True)
        site = GolbSite(resource, reactor=Clock())
        site.protocol = FastChannel
        channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n\r\n\x81\x05")
        channel.dataReceived(b"hello")
        self.assertEqual(len(resource.requests), 1)
        self.assertEqual(b"".join(channel._dataBuffer), b"\x81\x05hello")


class RealReactorTests(TestCase):
    """
    L{FastChannel} over real TCP, with many pipelined requests in one write.
    """

    @defer.inlineCallbacks
    def test_manyPipelined(self):
        """
        200 pipelined requests in one write are all answered, in order.
        """
        resource = test_listener.RecordingResource()
        site = GolbSite(resource, reactor=reactor)
        site.protocol = FastChannel
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        data = b"".join(
            b"POST /%d HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n%d" % (i, i % 10)
            for i in range(200)
        ) + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        client = test_listener._RawClient(data)
        from twisted.internet import protocol

        creator = protocol.ClientCreator(reactor, lambda: client)
        yield creator.connectTCP("127.0.0.1", port.getHost().port)
        received = yield client.done
        responses = test_listener.parseResponses(received)
        self.assertEqual(len(responses), 201)
        self.assertEqual([r[2] for r in responses[:200]],
                         [b"ok:%d" % (i % 10,) for i in range(200)])
        self.assertEqual([r.uri for r in resource.requests][-1], b"/last")
