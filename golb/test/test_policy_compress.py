"""
Tests for L{golb.policies.compress}: when a response is gzipped, that the
gzip stream is exactly the backend's body, and that it streams.
"""

import gzip
import os
import random
import zlib

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from golb.config import CompressPolicy, parseConfig
from golb.policies import Context, IBodyFilter, IPolicy
from golb.policies.compress import (
    Compress,
    GzipFilter,
    TypeMatcher,
    acceptsGzip,
    windowFor,
)
from golb.test.support import (
    listenBackend,
    listenGolb,
    parseResponses,
    rawConnect,
    rawRequest,
    waitUntil,
)
from golb.test.test_proxy import FunctionResource


def compress(**kw) -> Compress:
    """
    A L{Compress} policy built from C{CompressPolicy(**kw)}.
    """
    return Compress(CompressPolicy(**kw), None)


class _Response:
    """
    A stand-in for L{golb.upstream.UpstreamResponse}.
    """

    def __init__(self, code=200, length=None):
        self.code = code
        self.length = length
        self.headers = ()


def exchange(policy, method=b"GET", acceptEncoding=b"gzip", code=200, length=2048,
             **responseHeaders):
    """
    Run C{policy}'s response phase for a response with C{responseHeaders}
    (keyword names, underscores for dashes; C{content_type} defaults to
    C{text/html}).

    @return: C{(filter, responseHeaders)}.
    """
    request = DummyRequest([b""])
    request.method = method
    if acceptEncoding is not None:
        request.requestHeaders.setRawHeaders(b"accept-encoding", [acceptEncoding])
    responseHeaders.setdefault("content_type", b"text/html; charset=utf-8")
    if length is not None:
        responseHeaders.setdefault("content_length", b"%d" % (length,))
    for name, value in responseHeaders.items():
        request.responseHeaders.setRawHeaders(
            name.replace("_", "-").encode("ascii"),
            value if isinstance(value, list) else [value],
        )
    # The upstream reports a HEAD response's body as empty, whatever its headers say.
    bodyLength = 0 if method == b"HEAD" else length
    result = policy.onResponse(request, Context("r", b"/"), _Response(code, bodyLength))
    return result, request.responseHeaders


def gunzip(data: bytes) -> bytes:
    """
    Decompress one complete gzip member, failing on trailing garbage.
    """
    decompressor = zlib.decompressobj(31)
    result = decompressor.decompress(data) + decompressor.flush()
    if not decompressor.eof or decompressor.unused_data:
        raise ValueError("incomplete or trailing gzip data")
    return result


class AcceptEncodingTests(SynchronousTestCase):
    """
    L{acceptsGzip} reads C{Accept-Encoding} like RFC 9110 says.
    """

    def test_table(self):
        """
        gzip is accepted when named (or C{x-gzip}) with a non-zero q, or when
        not named and C{*} has a non-zero q.
        """
        cases = {
            b"gzip": True,
            b"GZip": True,
            b"x-gzip": True,
            b"gzip, deflate, br": True,
            b"br;q=1.0, gzip;q=0.8, *;q=0.1": True,
            b"gzip;q=0.001": True,
            b"gzip; q=0": False,
            b"gzip;q=0.000": False,
            b"gzip;q=0, *": False,
            b"*": True,
            b"*;q=0": False,
            b"identity": False,
            b"deflate, br": False,
            b"": False,
            b"gzip;q=nonsense": False,
            b"gzip;q=2": False,
            b"gzipper": False,
            b"deflate;q=0.5, gzip;level=1": True,
        }
        for value, expected in cases.items():
            self.assertEqual(acceptsGzip([value]), expected, value)

    def test_absentOrSplit(self):
        """
        No header means no gzip; several header lines are one list.
        """
        self.assertFalse(acceptsGzip(None))
        self.assertFalse(acceptsGzip([]))
        self.assertTrue(acceptsGzip([b"br", b"gzip"]))
        self.assertFalse(acceptsGzip([b"*", b"gzip;q=0"]))


class TypeMatcherTests(SynchronousTestCase):
    """
    L{TypeMatcher} matches media types against the C{types} globs.
    """

    def test_globs(self):
        """
        Exact types, C{type/*}, suffix globs and C{*/*}; parameters and case
        do not matter.
        """
        matcher = TypeMatcher(["text/*", "application/json", "application/*+xml",
                               "image/svg?xml"])
        for value in [b"text/html", b"TEXT/CSS; charset=utf-8", b"application/json;charset=utf-8",
                      b"application/atom+xml", b"image/svg+xml"]:
            self.assertTrue(matcher.matches(value), value)
        for value in [b"image/png", b"application/jsonp", b"application/octet-stream", b"",
                      b"text", b"; charset=utf-8"]:
            self.assertFalse(matcher.matches(value), value)
        self.assertTrue(TypeMatcher(["*/*"]).matches(b"image/png"))


class GzipFilterTests(SynchronousTestCase):
    """
    L{GzipFilter} compresses a streamed body into one gzip member.
    """

    def test_interface(self):
        """
        L{Compress} provides L{IPolicy} and L{GzipFilter} L{IBodyFilter}.
        """
        self.assertTrue(verifyObject(IPolicy, compress()))
        self.assertTrue(verifyObject(IBodyFilter, GzipFilter()))

    def test_roundTrip(self):
        """
        Whatever the pieces, the output decompresses to the input exactly
        (random and repetitive bodies, with and without per-piece flushes,
        with every window size).
        """
        rng = random.Random(7)
        bodies = [os.urandom(300000), b"All work and no play. " * 20000, b"x", b""]
        for body in bodies:
            for flushEach in (False, True):
                for length in (None, len(body), 100):
                    bodyFilter = GzipFilter(5, length, flushEach)
                    out = []
                    pos = 0
                    while pos < len(body):
                        size = rng.choice([1, 100, 4096, 65536])
                        out.append(bodyFilter.write(body[pos:pos + size]))
                        pos += size
                    out.append(bodyFilter.finish())
                    self.assertEqual(gzip.decompress(b"".join(out)), body)

    def test_flushEach(self):
        """
        With C{flushEach}, every piece written can be decompressed from the
        output so far: nothing waits inside zlib.
        """
        bodyFilter = GzipFilter(flushEach=True)
        decompressor = zlib.decompressobj(31)
        for i in range(5):
            event = b"data: event %d\n\n" % (i,)
            self.assertEqual(decompressor.decompress(bodyFilter.write(event)), event)
        decompressor.decompress(bodyFilter.finish())
        self.assertTrue(decompressor.eof)

    def test_window(self):
        """
        Small bodies get a small zlib window (less memory); large or unknown
        ones the full 32 KiB window.
        """
        self.assertEqual(windowFor(None), (15, 8))
        self.assertEqual(windowFor(10 * 2**20), (15, 8))
        self.assertEqual(windowFor(100), (9, 2))
        self.assertEqual(windowFor(4000), (13, 6))
        self.assertEqual(windowFor(3800), (12, 5))


class DecisionTests(SynchronousTestCase):
    """
    L{Compress.onResponse} decides which responses to gzip and fixes their
    headers.
    """

    def test_compressed(self):
        """
        A large enough text response to a client accepting gzip gets
        C{Content-Encoding: gzip}, loses C{Content-Length}, gains
        C{Vary: Accept-Encoding}, and gets a filter.
        """
        bodyFilter, headers = exchange(compress())
        self.assertIsInstance(bodyFilter, GzipFilter)
        self.assertEqual(headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertIsNone(headers.getRawHeaders(b"content-length"))
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])
        self.assertFalse(bodyFilter.flushEach)

    def test_etagWeakened(self):
        """
        A strong C{ETag} becomes weak; a weak one stays as it is.
        """
        _, headers = exchange(compress(), etag=b'"abc"')
        self.assertEqual(headers.getRawHeaders(b"etag"), [b'W/"abc"'])
        _, headers = exchange(compress(), etag=b'W/"abc"')
        self.assertEqual(headers.getRawHeaders(b"etag"), [b'W/"abc"'])
        _, headers = exchange(compress(), acceptEncoding=b"br", etag=b'"abc"')
        self.assertEqual(headers.getRawHeaders(b"etag"), [b'"abc"'])

    def test_varyAppended(self):
        """
        C{Accept-Encoding} is appended to the backend's C{Vary}, once.
        """
        _, headers = exchange(compress(), vary=b"Cookie")
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"Cookie, Accept-Encoding"])
        _, headers = exchange(compress(), vary=b"accept-encoding")
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"accept-encoding"])

    def test_clientRefuses(self):
        """
        A client that does not accept gzip gets the identity body with its
        C{Content-Length}, and C{Vary: Accept-Encoding} all the same.
        """
        for accept in [None, b"gzip;q=0", b"identity", b"br"]:
            bodyFilter, headers = exchange(compress(), acceptEncoding=accept)
            self.assertIsNone(bodyFilter, accept)
            self.assertIsNone(headers.getRawHeaders(b"content-encoding"))
            self.assertEqual(headers.getRawHeaders(b"content-length"), [b"2048"])
            self.assertEqual(headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])

    def test_head(self):
        """
        A HEAD response is not compressed (it keeps its identity
        C{Content-Length}) but says C{Vary: Accept-Encoding} like the GET would.
        """
        bodyFilter, headers = exchange(compress(), method=b"HEAD")
        self.assertIsNone(bodyFilter)
        self.assertIsNone(headers.getRawHeaders(b"content-encoding"))
        self.assertEqual(headers.getRawHeaders(b"content-length"), [b"2048"])
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])

    def test_untouched(self):
        """
        Responses that must not or need not be compressed are left exactly
        as they are (no C{Vary} added either): already encoded, small, empty,
        another type, no type, no-transform, ranges, 1xx, 204 and 304.
        """
        cases = [
            dict(content_encoding=b"br"),
            dict(content_encoding=b"gzip"),
            dict(length=1023),
            dict(length=0),
            dict(content_type=b"image/png"),
            dict(content_type=[]),
            dict(cache_control=b"public, No-Transform"),
            dict(code=206, content_range=b"bytes 0-2047/10000"),
            dict(content_range=b"bytes 0-2047/10000"),
            dict(code=204, length=None),
            dict(code=304, length=None),
            dict(code=103, length=None),
        ]
        for case in cases:
            bodyFilter, result = exchange(compress(), **case)
            self.assertIsNone(bodyFilter, case)
            self.assertIsNone(result.getRawHeaders(b"vary"), case)
            encoding = case.get("content_encoding")
            self.assertEqual(result.getRawHeaders(b"content-encoding"),
                             [encoding] if encoding else None, case)

    def test_identityEncoding(self):
        """
        C{Content-Encoding: identity} (which senders should not use) counts
        as no encoding: it is replaced by gzip.
        """
        bodyFilter, headers = exchange(compress(), content_encoding=b"identity")
        self.assertIsNotNone(bodyFilter)
        self.assertEqual(headers.getRawHeaders(b"content-encoding"), [b"gzip"])

    def test_unknownLength(self):
        """
        A body of unknown length is compressed whatever C{min_size}.
        """
        bodyFilter, headers = exchange(compress(min_size=10**9), length=None)
        self.assertIsNotNone(bodyFilter)

    def test_minSize(self):
        """
        C{min_size} is the smallest C{Content-Length} compressed.
        """
        self.assertIsNotNone(exchange(compress(min_size=100), length=100)[0])
        self.assertIsNone(exchange(compress(min_size=100), length=99)[0])

    def test_eventStreamFlushed(self):
        """
        Event streams are compressed with a flush after every piece.
        """
        for contentType in [b"text/event-stream", b"application/x-ndjson; charset=utf-8"]:
            bodyFilter, _ = exchange(compress(types=("*/*",)), content_type=contentType,
                                     length=None)
            self.assertTrue(bodyFilter.flushEach, contentType)

    def test_golbAnswer(self):
        """
        golb's own answers (no backend response) are never compressed.
        """
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip"])
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain"])
        self.assertIsNone(compress(min_size=0).onResponse(request, Context("r", b"/"), None))
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"content-encoding"))

    def test_configDefaults(self):
        """
        The config's defaults compress text, JSON, JavaScript and SVG of 1 KiB
        or more.
        """
        config = parseConfig(
            "server: {address: '127.0.0.1:0'}\n"
            "backend_pools: [{name: default, backends: [{url: 'http://127.0.0.1:1'}]}]\n"
            "policies: [{compress: {}}]\n", "test.yaml")
        policy = Compress(config.policies[0], None)
        self.assertEqual(policy.minSize, 1024)
        for value in [b"text/html", b"application/json", b"application/javascript",
                      b"image/svg+xml"]:
            self.assertTrue(policy.types.matches(value), value)
        self.assertFalse(policy.types.matches(b"image/jpeg"))


def compressYAML(backendPort: int, policy: str = "{compress: {}}") -> str:
    return f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{backendPort}"}}]
policies: [{policy}]
"""


REPETITIVE = b"".join(b'{"id": %d, "name": "item %d", "tags": ["a", "b"]}\n' % (i, i)
                      for i in range(20000))


class EndToEndTests(TestCase):
    """
    Compression through a real golb listener in front of a real backend.
    """

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        # A bare Agent: treq would decompress gzip bodies itself.
        self.agent = Agent(reactor, pool=self.pool)

    def listen(self, function, policy="{compress: {}}"):
        """
        A backend calling C{function(request)} behind a golb with C{policy}.
        """
        port, _ = listenBackend(self, FunctionResource(function))
        _, golbPort, _ = listenGolb(self, compressYAML(port.getHost().port, policy))
        self.base = f"http://127.0.0.1:{golbPort.getHost().port}"
        self.port = golbPort.getHost().port

    def request(self, path="/", acceptEncoding="gzip", headers=None):
        """
        Send a GET with C{acceptEncoding}.

        @param headers: more request headers (a L{Headers}).
        @return: a L{Deferred} firing with the response, its body unread.
        """
        headers = headers or Headers()
        if acceptEncoding is not None:
            headers.setRawHeaders(b"accept-encoding", [acceptEncoding.encode("ascii")])
        return self.agent.request(b"GET", (self.base + path).encode("ascii"), headers)

    @defer.inlineCallbacks
    def get(self, path="/", acceptEncoding="gzip"):
        response = yield self.request(path, acceptEncoding)
        body = yield treq.content(response)
        return response, body

    @defer.inlineCallbacks
    def test_contentLengthBackend(self):
        """
        A backend body with a C{Content-Length} (repetitive and random)
        reaches a gzip client compressed, chunked, and decompresses to
        exactly the backend's bytes.
        """
        randomBody = os.urandom(200000)

        def backend(request):
            request.setHeader(b"content-type", b"text/plain")
            request.setHeader(b"etag", b'"v1"')
            return REPETITIVE if request.path == b"/text" else randomBody

        self.listen(backend)
        for path, expected in [("/text", REPETITIVE), ("/random", randomBody)]:
            response, body = yield self.get(path)
            headers = response.headers
            self.assertEqual(headers.getRawHeaders(b"content-encoding"), [b"gzip"])
            self.assertEqual(response.length, UNKNOWN_LENGTH)
            self.assertEqual(headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])
            self.assertEqual(headers.getRawHeaders(b"etag"), [b'W/"v1"'])
            self.assertEqual(gunzip(body), expected)
        response, body = yield self.get("/text")
        self.assertLess(len(body), len(REPETITIVE) / 5)

    @defer.inlineCallbacks
    def test_chunkedBackend(self):
        """
        A body the backend sends chunked in many writes of all sizes is
        compressed as it comes and decompresses to exactly the backend's
        bytes.
        """
        body = REPETITIVE + os.urandom(100000) + REPETITIVE[:5000]
        sizes = random.Random(3)

        def backend(request):
            request.setHeader(b"content-type", b"application/json")
            pos = 0
            while pos < len(body):
                size = sizes.choice([1, 10, 1000, 30000])
                request.write(body[pos:pos + size])
                pos += size
            request.finish()
            return NOT_DONE_YET

        self.listen(backend)
        response, received = yield self.get()
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(gunzip(received), body)

    @defer.inlineCallbacks
    def test_streamsFiveMegabytes(self):
        """
        A 5 MB body sent in many writes is not held until the backend ends:
        the client decompresses most of the first half (2 of 2.5 MB) while the
        backend has not sent the second, and the whole decompresses exactly.
        """
        body = (REPETITIVE * 6)[:5 * 2**20]
        half = len(body) // 2
        started = defer.Deferred()

        def backend(request):
            request.setHeader(b"content-type", b"text/csv")
            request.setHeader(b"content-length", b"%d" % (len(body),))
            for pos in range(0, half, 16384):
                request.write(body[pos:min(pos + 16384, half)])
            started.callback(request)
            return NOT_DONE_YET

        self.listen(backend)
        response = yield self.request()
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        decompressor = zlib.decompressobj(31)
        plain = []
        done = treq.collect(response, lambda data: plain.append(decompressor.decompress(data)))
        backendRequest = yield started
        # zlib holds back at most one block (here about 90 KB of input).
        yield waitUntil(lambda: sum(map(len, plain)) >= 2 * 2**20)
        received = b"".join(plain)
        self.assertEqual(received, body[:len(received)])
        self.assertFalse(done.called)
        for pos in range(half, len(body), 16384):
            backendRequest.write(body[pos:pos + 16384])
        backendRequest.finish()
        yield done
        plain.append(decompressor.flush())
        self.assertTrue(decompressor.eof)
        self.assertEqual(b"".join(plain), body)

    test_streamsFiveMegabytes.timeout = 60

    @defer.inlineCallbacks
    def test_eventStream(self):
        """
        Each event of a compressed C{text/event-stream} reaches the client
        as soon as the backend sends it.
        """
        started = defer.Deferred()

        def backend(request):
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b"data: hello\n\n")
            started.callback(request)
            return NOT_DONE_YET

        self.listen(backend)
        response = yield self.request()
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        decompressor = zlib.decompressobj(31)
        plain = []
        done = treq.collect(response, lambda data: plain.append(decompressor.decompress(data)))
        backendRequest = yield started
        for i in range(3):
            event = b"data: %d\n\n" % (i,)
            backendRequest.write(event)
            yield waitUntil(lambda event=event: b"".join(plain).endswith(event))
        backendRequest.finish()
        yield done
        self.assertEqual(b"".join(plain), b"data: hello\n\ndata: 0\n\ndata: 1\n\ndata: 2\n\n")

    @defer.inlineCallbacks
    def test_refusedAndUntouched(self):
        """
        Clients that refuse gzip (C{gzip;q=0}, no header), already encoded,
        small and non-matching responses get the backend's bytes and
        C{Content-Length} unchanged.
        """
        def backend(request):
            kind = request.path
            if kind == b"/encoded":
                request.setHeader(b"content-type", b"text/plain")
                request.setHeader(b"content-encoding", b"gzip")
                return encoded
            if kind == b"/small":
                request.setHeader(b"content-type", b"text/plain")
                return b"tiny"
            if kind == b"/png":
                request.setHeader(b"content-type", b"image/png")
                return REPETITIVE
            request.setHeader(b"content-type", b"text/plain")
            return REPETITIVE

        # one gzip member, stamped once (gzip headers carry the time)
        encoded = gzip.compress(REPETITIVE, mtime=0)
        self.listen(backend)
        for path, accept, expected, vary in [
            ("/text", "gzip;q=0, deflate", REPETITIVE, [b"Accept-Encoding"]),
            ("/text", None, REPETITIVE, [b"Accept-Encoding"]),
            ("/text", "*;q=0", REPETITIVE, [b"Accept-Encoding"]),
            ("/encoded", "gzip", encoded, None),
            ("/small", "gzip", b"tiny", None),
            ("/png", "gzip", REPETITIVE, None),
        ]:
            response, body = yield self.get(path, accept)
            headers = response.headers
            self.assertEqual(body, expected, (path, accept))
            self.assertEqual(response.length, len(expected), (path, accept))
            self.assertEqual(headers.getRawHeaders(b"vary"), vary, (path, accept))

    @defer.inlineCallbacks
    def test_typesAndStar(self):
        """
        Configured C{types} globs decide, parameters ignored; C{*} in
        C{Accept-Encoding} counts as gzip.
        """
        def backend(request):
            request.setHeader(b"content-type", request.args[b"type"][0])
            return REPETITIVE

        self.listen(backend, "{compress: {types: ['application/*+json', text/csv], min_size: 10}}")
        for contentType, compressed in [("application/problem%2Bjson", True),
                                        ("text/csv;%20charset=utf-8", True),
                                        ("application/json", False),
                                        ("text/html", False)]:
            response, body = yield self.get("/?type=" + contentType, "*")
            encoding = response.headers.getRawHeaders(b"content-encoding")
            self.assertEqual(encoding, [b"gzip"] if compressed else None, contentType)
            self.assertEqual(gunzip(body) if compressed else body, REPETITIVE)

    @defer.inlineCallbacks
    def test_head(self):
        """
        A HEAD response keeps the identity C{Content-Length} and no
        C{Content-Encoding}, and says C{Vary: Accept-Encoding}.
        """
        def backend(request):
            request.setHeader(b"content-type", b"text/plain")
            return REPETITIVE

        self.listen(backend)
        data = yield rawRequest(
            self, self.port,
            b"HEAD / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        )
        head = data.split(b"\r\n\r\n")[0].lower()
        self.assertIn(b"content-length: %d" % (len(REPETITIVE),), head)
        self.assertNotIn(b"content-encoding", head)
        self.assertIn(b"vary: accept-encoding", head)
        self.assertTrue(data.endswith(b"\r\n\r\n"))

    @defer.inlineCallbacks
    def test_http10Client(self):
        """
        An HTTP/1.0 client gets the compressed body delimited by the end of
        the connection (it cannot take chunks).
        """
        def backend(request):
            request.setHeader(b"content-type", b"text/plain")
            return REPETITIVE

        self.listen(backend)
        data = yield rawRequest(
            self, self.port, b"GET / HTTP/1.0\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"content-encoding: gzip", head.lower())
        self.assertNotIn(b"content-length", head.lower())
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertEqual(gunzip(body), REPETITIVE)

    @defer.inlineCallbacks
    def test_keepAliveAfterCompressed(self):
        """
        A compressed response is chunked, so the HTTP/1.1 connection stays
        usable: two compressed responses on one connection both decompress.
        """
        def backend(request):
            request.setHeader(b"content-type", b"text/plain")
            return REPETITIVE

        self.listen(backend)
        client = yield rawConnect(self, self.port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n" * 2)
        data = yield client.waitForBytes(b"\r\n0\r\n\r\n", 2)
        responses = parseResponses(data)
        self.assertEqual(len(responses), 2)
        for status, headers, body in responses:
            self.assertEqual(status, 200)
            self.assertEqual(dict(headers)[b"transfer-encoding"], b"chunked")
            self.assertEqual(gunzip(body), REPETITIVE)

    @defer.inlineCallbacks
    def test_withCors(self):
        """
        With C{cors} and C{compress} on one route, the response is gzipped
        and its C{Vary} names both C{Accept-Encoding} and C{Origin}, after the
        backend's own.
        """
        def backend(request):
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"vary", b"Cookie")
            return REPETITIVE

        self.listen(backend, "{cors: {allow_origins: ['https://app.example.com']}}, {compress: {}}")
        response = yield self.request(
            headers=Headers({b"origin": [b"https://app.example.com"]}))
        body = yield treq.content(response)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example.com"])
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"Cookie, Accept-Encoding, Origin"])
        self.assertEqual(gunzip(body), REPETITIVE)
