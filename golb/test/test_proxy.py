"""
Tests for L{golb.proxy}: real loopback backends behind a real golb listener.
"""

import base64
import hashlib
from http.cookiejar import CookieJar, DefaultCookiePolicy

import treq
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from golb.test.support import (
    freePort,
    header,
    listenBackend,
    listenGolb,
    parseResponses,
    rawConnect,
    rawRequest,
    waitUntil,
)


def poolYAML(*ports, extra="", listener=""):
    backends = "".join(f"      - url: http://127.0.0.1:{port}\n" for port in ports)
    return (
        "listeners:\n  - name: web\n    address: '127.0.0.1:0'\n" + listener
        + "backend_pools:\n  - name: default\n    backends:\n" + backends + extra
    )


class FunctionResource(Resource):
    """
    A backend resource that calls C{function(request)} for every request.
    """

    isLeaf = True

    def __init__(self, function):
        Resource.__init__(self)
        self.function = function
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        return self.function(request)


class ProxyTestCase(TestCase):
    """
    Common set-up: an HTTP client with its own persistent pool.
    """

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    def golb(self, *ports, **kw):
        golb, port, site = listenGolb(self, poolYAML(*ports, **kw))
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.port = port.getHost().port
        return golb

    @defer.inlineCallbacks
    def get(self, path="/", **kw):
        response = yield self.client.get(self.base + path, **kw)
        body = yield response.content()
        return response, body


class ForwardingTests(ProxyTestCase):
    """
    Requests reach a backend and its answer reaches the client intact.
    """

    @defer.inlineCallbacks
    def test_get(self):
        """
        A GET returns the backend's status, headers and body.
        """
        port, backend = listenBackend(self, name="b1")
        self.golb(port.getHost().port)
        response, body = yield self.get("/hello?x=1")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"x-demo-backend"), [b"b1"])
        self.assertIn(b"GET /hello?x=1 HTTP/1.1", body)

    @defer.inlineCallbacks
    def test_post(self):
        """
        A POST body reaches the backend byte for byte.
        """
        port, backend = listenBackend(self)
        self.golb(port.getHost().port)
        payload = bytes(range(256)) * 1000
        response = yield self.client.post(self.base + "/upload", data=payload)
        body = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertTrue(body.endswith(b"\n\n" + payload))
        self.assertIn(b"Content-Length: 256000", body)

    @defer.inlineCallbacks
    def test_roundRobin(self):
        """
        Requests alternate between the pool's backends.
        """
        port1, _ = listenBackend(self, name="b1")
        port2, _ = listenBackend(self, name="b2")
        self.golb(port1.getHost().port, port2.getHost().port)
        seen = []
        for _ in range(4):
            response, body = yield self.get()
            seen.append(response.headers.getRawHeaders(b"x-demo-backend")[0])
        self.assertEqual(seen, [b"b1", b"b2", b"b1", b"b2"])

    @defer.inlineCallbacks
    def test_forwardingHeaders(self):
        """
        The backend sees X-Forwarded-For (the real peer, not a spoofed value
        from an untrusted client), X-Forwarded-Proto/-Host, Forwarded and Via;
        hop-by-hop headers and those named in Connection are removed; Host is
        preserved.
        """
        port, backend = listenBackend(self)
        self.golb(port.getHost().port)
        response, body = yield self.get(
            "/",
            headers={
                b"X-Forwarded-For": [b"6.6.6.6"],
                b"Connection": [b"keep-alive, X-Secret"],
                b"X-Secret": [b"hop"],
                b"Keep-Alive": [b"timeout=5"],
                b"Host": [b"example.com"],
                b"X-Kept": [b"end-to-end"],
                b"X-Forwarded-Prefix": [b"/spoofed"],
            },
        )
        lines = body.decode("latin-1").split("\n\n")[1].splitlines()
        self.assertNotIn("spoofed", body.decode("latin-1"))
        self.assertIn("X-Forwarded-For: 127.0.0.1", lines)
        self.assertNotIn("6.6.6.6", body.decode("latin-1"))
        self.assertIn("X-Forwarded-Proto: http", lines)
        self.assertIn("X-Forwarded-Host: example.com", lines)
        self.assertIn('Forwarded: for=127.0.0.1;proto=http;host="example.com"', lines)
        self.assertIn("Via: 1.1 golb", lines)
        self.assertIn("Host: example.com", lines)
        self.assertIn("X-Kept: end-to-end", lines)
        for name in ("X-Secret", "Keep-Alive"):
            self.assertFalse([line for line in lines if line.startswith(name + ":")], name)

    @defer.inlineCallbacks
    def test_trustedProxyAppends(self):
        """
        From a trusted proxy, X-Forwarded-For is appended to.
        """
        port, backend = listenBackend(self)
        golb, listening, site = listenGolb(
            self, "trusted_proxies: ['127.0.0.0/8']\n" + poolYAML(port.getHost().port)
        )
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        response, body = yield self.get("/", headers={b"X-Forwarded-For": [b"10.1.2.3"],
                                                      b"X-Forwarded-Prefix": [b"/outer"]})
        self.assertIn(b"X-Forwarded-For: 10.1.2.3, 127.0.0.1\n", body)
        self.assertIn(b"X-Forwarded-Prefix: /outer\n", body)

    @defer.inlineCallbacks
    def test_rewriteHost(self):
        """
        With C{preserve_host: false} the backend sees its own host.
        """
        port, backend = listenBackend(self)
        number = port.getHost().port
        self.golb(number, extra="    preserve_host: false\n")
        response, body = yield self.get("/", headers={b"Host": [b"example.com"]})
        self.assertIn(f"Host: 127.0.0.1:{number}\n".encode(), body)

    @defer.inlineCallbacks
    def test_repeatedHeaders(self):
        """
        Repeated response headers (Set-Cookie) arrive in order, each intact.
        """

        def cookies(request):
            request.responseHeaders.setRawHeaders(
                b"set-cookie", [b"a=1; Path=/", b"b=2, c=3; HttpOnly"]
            )
            return b"ok"

        port, _ = listenBackend(self, FunctionResource(cookies))
        self.golb(port.getHost().port)
        response, body = yield self.get()
        self.assertEqual(
            response.headers.getRawHeaders(b"set-cookie"),
            [b"a=1; Path=/", b"b=2, c=3; HttpOnly"],
        )
        self.assertEqual(response.headers.getRawHeaders(b"via"), [b"1.1 golb"])

    @defer.inlineCallbacks
    def test_bodylessResponses(self):
        """
        HEAD, 204 and 304 responses carry no body, and the connection stays
        usable for the next request.
        """

        def answer(request):
            if request.path == b"/204":
                request.setResponseCode(204)
                return b""
            if request.path == b"/304":
                request.setResponseCode(304)
                return b""
            return b"x" * 10

        port, _ = listenBackend(self, FunctionResource(answer))
        self.golb(port.getHost().port)
        client = yield rawConnect(self, self.port)
        client.transport.write(
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /204 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /304 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        yield client.waitFor(lambda data: len(parseResponses(data, bodyless=[0])) == 4)
        responses = parseResponses(client.received, bodyless=[0])
        self.assertEqual([r[0] for r in responses], [200, 204, 304, 200])
        self.assertEqual(header(responses[0][1], b"content-length"), [b"10"])
        self.assertEqual([r[2] for r in responses], [b"", b"", b"", b"x" * 10])

    @defer.inlineCallbacks
    def test_keepAliveBothSides(self):
        """
        200 GETs over one client connection cost the backend at most a
        handful of TCP connections.
        """
        port, backend = listenBackend(self)
        self.golb(port.getHost().port)
        client = yield rawConnect(self, self.port)
        for i in range(200):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % (i,))
            yield client.waitFor(lambda data, n=i + 1: len(parseResponses(data)) >= n)
        self.assertEqual(len(parseResponses(client.received)), 200)
        self.assertEqual(backend.requests, 200)
        self.assertLessEqual(len(backend.site.openProtocols), 2)

    @defer.inlineCallbacks
    def test_informational(self):
        """
        A backend's 103 Early Hints reaches the client before the final
        response.
        """
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"

        def early(request):
            request.channel.transport.write(hints)
            return b"final"

        port, _ = listenBackend(self, FunctionResource(early))
        self.golb(port.getHost().port)
        data = yield rawRequest(
            self, self.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", until=b"final"
        )
        responses = parseResponses(data)
        self.assertEqual([r[0] for r in responses], [103, 200])
        self.assertEqual(header(responses[0][1], b"link"), [b"</s.css>; rel=preload"])


class FailureTests(ProxyTestCase):
    """
    Dead, slow and broken backends give clear errors, and retries hide the
    dead ones.
    """

    @defer.inlineCallbacks
    def test_deadPool(self):
        """
        When the only backend refuses connections the client gets 502 with
        C{X-Golb-Error: connect-failure} and a generic message: the backend's
        address is in golb's log, not in the answer.
        """
        dead = freePort()
        self.golb(dead)
        response, body = yield self.get()
        self.assertEqual(response.code, 502)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"connect-failure"])
        self.assertEqual(body, b"502 Bad Gateway: The backend refused or failed the connection.\n")
        self.assertNotIn(str(dead).encode(), body)

    @defer.inlineCallbacks
    def test_noBackend(self):
        """
        When every backend is in maintenance the client gets 503 no-backend,
        as JSON when it prefers JSON.
        """
        port, _ = listenBackend(self)
        golb = self.golb(port.getHost().port)
        for backend in golb.backends:
            backend.state = "maint"
        response, body = yield self.get("/", headers={b"Accept": [b"application/json"]})
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"no-backend"])
        self.assertIn(b'"error": "no-backend"', body)

    @defer.inlineCallbacks
    def test_retriesHideDeadBackend(self):
        """
        With one of two backends dead and retries on, 1000 GETs give 0 errors.
        """
        port, backend = listenBackend(self)
        self.golb(freePort(), port.getHost().port)
        semaphore = defer.DeferredSemaphore(10)
        codes = []

        @defer.inlineCallbacks
        def one(i):
            response, body = yield self.get(f"/{i}")
            codes.append(response.code)

        yield defer.gatherResults([semaphore.run(one, i) for i in range(1000)])
        self.assertEqual(codes, [200] * 1000)
        self.assertEqual(backend.requests, 1000)

    @defer.inlineCallbacks
    def test_postNotRetriedAfterReset(self):
        """
        A POST whose backend resets the connection after reading it is not
        replayed on another backend: the client gets 502.
        """

        def reset(request):
            request.channel.transport.abortConnection()
            return NOT_DONE_YET

        port1, resetter = listenBackend(self, FunctionResource(reset))
        port2, resetter2 = listenBackend(self, FunctionResource(reset))
        self.golb(port1.getHost().port, port2.getHost().port)
        response = yield self.client.post(self.base + "/", data=b"pay")
        yield response.content()
        self.assertEqual(response.code, 502)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"upstream-reset"])
        self.assertEqual(len(resetter.requests) + len(resetter2.requests), 1)

    @defer.inlineCallbacks
    def test_statusRetry(self):
        """
        A 503 from one backend is retried on the other for an idempotent
        request.
        """

        def unavailable(request):
            request.setResponseCode(503)
            return b"busy"

        port1, _ = listenBackend(self, FunctionResource(unavailable))
        port2, good = listenBackend(self, name="good")
        self.golb(port1.getHost().port, port2.getHost().port)
        for _ in range(4):
            response, body = yield self.get()
            self.assertEqual(response.code, 200)
        self.assertEqual(good.requests, 4)

    @defer.inlineCallbacks
    def test_responseHeaderTimeout(self):
        """
        A backend that never answers yields 504 upstream-timeout after the
        pool's C{timeouts.response_header}.
        """
        port, silent = listenBackend(self, FunctionResource(lambda request: NOT_DONE_YET))
        self.golb(
            port.getHost().port,
            extra="    timeouts: {response_header: 200ms}\n    retries: {attempts: 0}\n",
        )
        response, body = yield self.get()
        self.assertEqual(response.code, 504)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"upstream-timeout"])

    @defer.inlineCallbacks
    def test_smugglingNeverForwarded(self):
        """
        A request with both Content-Length and Transfer-Encoding gets 400 and
        the backend never sees it.
        """
        port, backend = listenBackend(self)
        self.golb(port.getHost().port)
        data = yield rawRequest(
            self,
            self.port,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        )
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data)
        self.assertIn(b"X-Golb-Error: bad-request", data)
        self.assertEqual(backend.requests, 0)

    @defer.inlineCallbacks
    def test_backendDiesMidBody(self):
        """
        When the backend goes away in the middle of a body the client
        connection is closed, so the client sees the truncation.
        """

        started = defer.Deferred()

        def partial(request):
            request.setHeader(b"content-length", b"1000")
            request.write(b"x" * 100)
            started.callback(request)
            return NOT_DONE_YET

        port, _ = listenBackend(self, FunctionResource(partial))
        self.golb(port.getHost().port)
        client = yield rawConnect(self, self.port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        request = yield started
        yield client.waitForBytes(b"x" * 100)
        request.channel.transport.abortConnection()
        data = yield client.lost
        self.assertIn(b"200 OK", data)
        self.assertTrue(data.endswith(b"x" * 100))
        self.assertEqual(parseResponses(data), [])

    @defer.inlineCallbacks
    def test_clientGoneCancelsUpstream(self):
        """
        A client that disconnects while the backend is still thinking frees the
        backend connection, and the backend's in-flight count returns to 0.
        """
        started = defer.Deferred()
        lost = defer.Deferred()

        def slow(request):
            request.notifyFinish().addErrback(lambda _: lost.callback(None))
            started.callback(None)
            return NOT_DONE_YET

        port, _ = listenBackend(self, FunctionResource(slow))
        golb = self.golb(port.getHost().port)
        client = yield rawConnect(self, self.port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        yield started
        (backend,) = list(golb.backends)
        self.assertEqual(backend.inFlight, 1)
        client.transport.loseConnection()
        yield lost
        self.assertEqual(backend.inFlight, 0)


class StreamingTests(ProxyTestCase):
    """
    Response bodies stream through golb as they come, with backpressure.
    """

    @defer.inlineCallbacks
    def test_chunksArriveAsSent(self):
        """
        Each chunk of a slowly streamed response reaches the client before the
        backend sends the next.
        """
        started = defer.Deferred()

        def stream(request):
            started.callback(request)
            return NOT_DONE_YET

        port, _ = listenBackend(self, FunctionResource(stream))
        self.golb(port.getHost().port)
        client = yield rawConnect(self, self.port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        request = yield started
        for i in range(3):
            request.write(b"part-%d;" % (i,))
            yield client.waitForBytes(b"part-%d;" % (i,))
        request.finish()
        yield client.waitForBytes(b"0\r\n\r\n")
        (response,) = parseResponses(client.received)
        self.assertEqual(response[2], b"part-0;part-1;part-2;")

    @defer.inlineCallbacks
    def test_slowClientPausesBackend(self):
        """
        A client that stops reading makes golb pause the backend connection
        instead of buffering the response: the backend's producer is paused
        while golb holds only a bounded amount.
        """
        paused = defer.Deferred()
        state = {"sent": 0}

        class Producer:
            def __init__(self, request):
                self.request = request
                self.paused = False

            def pauseProducing(self):
                self.paused = True
                if not paused.called:
                    paused.callback(None)

            def resumeProducing(self):
                self.paused = False

            def stopProducing(self):
                self.paused = True

            def pump(self):
                chunk = b"y" * 65536
                while not self.paused and state["sent"] < 512 * 2**20:
                    self.request.write(chunk)
                    state["sent"] += len(chunk)
                if not self.paused:
                    self.request.finish()

        def big(request):
            request.setHeader(b"content-length", b"%d" % (512 * 2**20,))
            producer = Producer(request)
            request.registerProducer(producer, True)
            reactor.callLater(0, producer.pump)
            return NOT_DONE_YET

        port, _ = listenBackend(self, FunctionResource(big))
        self.golb(port.getHost().port)
        client = yield rawConnect(self, self.port)
        client.transport.pauseProducing()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        # A proxy that buffered would keep reading from the backend, whose
        # producer would then never be paused.
        yield paused
        self.assertLess(state["sent"], 64 * 2**20)
        client.transport.abortConnection()

    test_slowClientPausesBackend.timeout = 30


class UpgradeTests(ProxyTestCase):
    """
    WebSocket and other upgrades become a byte tunnel after the backend's 101.
    """

    @defer.inlineCallbacks
    def test_websocketEcho(self):
        """
        A WebSocket handshake and a masked text frame go through golb; the
        backend's echo comes back.
        """

        class Echo(Protocol):
            def dataReceived(self, data):
                # unmask a small client frame and echo it unmasked
                length = data[1] & 0x7F
                mask = data[2:6]
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[6:6 + length]))
                self.transport.write(bytes([0x81, len(payload)]) + payload)

        def upgrade(request):
            key = request.requestHeaders.getRawHeaders(b"sec-websocket-key")[0]
            accept = base64.b64encode(
                hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            )
            transport = request.channel.transport
            transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            echo = Echo()
            request.channel.transport = None
            transport.protocol = echo
            echo.makeConnection(transport)
            return NOT_DONE_YET

        port, _ = listenBackend(self, FunctionResource(upgrade))
        self.golb(port.getHost().port)
        client = yield rawConnect(self, self.port)
        key = base64.b64encode(b"0123456789abcdef")
        client.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        yield client.waitForBytes(b"\r\n\r\n")
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), client.received)
        expected = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        self.assertIn(b"Sec-WebSocket-Accept: " + expected, client.received)
        head = len(client.received)
        mask = b"\x01\x02\x03\x04"
        payload = b"hello golb"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        client.transport.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        yield client.waitFor(lambda data: len(data) >= head + 2 + len(payload))
        self.assertEqual(client.received[head:], bytes([0x81, len(payload)]) + payload)


class SplitMirrorTests(ProxyTestCase):
    """
    Weighted splits and mirrors.
    """

    def yaml(self, main, shadow, canary):
        return f"""\
listeners:
  - name: web
    address: '127.0.0.1:0'
backend_pools:
  - name: main
    backends: [{{url: "http://127.0.0.1:{main}"}}]
  - name: canary
    backends: [{{url: "http://127.0.0.1:{canary}"}}]
  - name: shadow
    backends: [{{url: "http://127.0.0.1:{shadow}"}}]
routing_rules:
  - match: {{path_prefix: /split}}
    split: [{{pool: main, weight: 90}}, {{pool: canary, weight: 10}}]
  - match: {{path_prefix: /}}
    target_pool: main
    mirror: {{pool: shadow, percent: 100%}}
"""

    @defer.inlineCallbacks
    def test_mirror(self):
        """
        A mirrored request reaches the shadow pool with its body; the client
        gets the main pool's answer.
        """
        port1, main = listenBackend(self, name="main")
        port2, shadow = listenBackend(self, name="shadow")
        received = defer.Deferred()
        original = shadow.render

        def render(request):
            result = original(request)
            received.callback(result)
            return result

        shadow.render = render
        golb, listening, site = listenGolb(
            self, self.yaml(port1.getHost().port, port2.getHost().port, freePort()))
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        response = yield self.client.post(self.base + "/m", data=b"copy me")
        body = yield response.content()
        self.assertEqual(response.headers.getRawHeaders(b"x-demo-backend"), [b"main"])
        shadowBody = yield received
        self.assertTrue(shadowBody.endswith(b"copy me"))
        self.assertTrue(body.endswith(b"copy me"))

    @defer.inlineCallbacks
    def test_deadMirrorHarmless(self):
        """
        A dead shadow pool never fails the real request.
        """
        port1, main = listenBackend(self, name="main")
        golb, listening, site = listenGolb(
            self, self.yaml(port1.getHost().port, freePort(), freePort()))
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        for _ in range(5):
            response, body = yield self.get("/")
            self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_split(self):
        """
        A 90/10 split sends 10% +-5% of 400 requests to the canary pool.
        """
        port1, main = listenBackend(self, name="main")
        port2, canary = listenBackend(self, name="canary")
        golb, listening, site = listenGolb(
            self, self.yaml(port1.getHost().port, freePort(), port2.getHost().port))
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        for _ in range(400):
            response, body = yield self.get("/split")
            self.assertEqual(response.code, 200)
        self.assertLess(abs(canary.requests / 400 - 0.1), 0.05)
        self.assertEqual(main.requests + canary.requests, 400)


class StickyTests(ProxyTestCase):
    """
    Sticky sessions by cookie.
    """

    @defer.inlineCallbacks
    def test_roundTrip(self):
        """
        The first response sets the sticky cookie; requests carrying it keep
        reaching the same backend, even after it is drained; a maintenance
        backend loses its sessions.
        """
        # a client that keeps no cookies: each request says what it carries
        jar = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool), cookiejar=jar)
        port1, b1 = listenBackend(self, name="b1")
        port2, b2 = listenBackend(self, name="b2")
        golb = self.golb(port1.getHost().port, port2.getHost().port,
                         extra="    sticky: {cookie: GOLBID, ttl: 1h}\n")
        response, body = yield self.get()
        first = response.headers.getRawHeaders(b"x-demo-backend")[0]
        (cookie,) = response.headers.getRawHeaders(b"set-cookie")
        self.assertIn(b"Max-Age=3600", cookie)
        self.assertIn(b"HttpOnly", cookie)
        value = cookie.split(b";")[0]
        seen = set()
        for _ in range(4):
            response, body = yield self.get("/", headers={b"Cookie": [value]})
            seen.add(response.headers.getRawHeaders(b"x-demo-backend")[0])
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        self.assertEqual(seen, {first})
        ports = {b"b1": port1.getHost().port, b"b2": port2.getHost().port}
        (mine,) = [b for b in golb.backends if b.port == ports[first]]
        mine.state = "drain"
        response, body = yield self.get("/", headers={b"Cookie": [value]})
        self.assertEqual(response.headers.getRawHeaders(b"x-demo-backend"), [first])
        response, body = yield self.get("/")
        self.assertNotEqual(response.headers.getRawHeaders(b"x-demo-backend"), [first])
        mine.state = "maint"
        response, body = yield self.get("/", headers={b"Cookie": [value]})
        self.assertNotEqual(response.headers.getRawHeaders(b"x-demo-backend"), [first])
        self.assertEqual(len(response.headers.getRawHeaders(b"set-cookie")), 1)


class QueueTests(ProxyTestCase):
    """
    max_connections with a waiting room.
    """

    @defer.inlineCallbacks
    def test_queue(self):
        """
        Beyond max_connections requests wait in the queue and go through when
        a slot frees; beyond queue.max they get 503 queue-full; a request that
        waits longer than queue.timeout gets 503 queue-timeout.
        """
        held = []
        arrived = defer.Deferred()

        def hold(request):
            held.append(request)
            if not arrived.called:
                arrived.callback(None)
            return NOT_DONE_YET

        port, backend = listenBackend(self, FunctionResource(hold))
        number = port.getHost().port
        golb, listening, site = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{number}", max_connections: 1}}]
    queue: {{max: 1, timeout: 300ms}}
""")
        base = f"http://127.0.0.1:{listening.getHost().port}"
        first = self.client.get(base + "/1")
        yield arrived
        second = self.client.get(base + "/2")
        (pool,) = golb.pools.values()
        while not pool.waiting:
            yield deferLater(reactor, 0.01, lambda: None)
        third = yield self.client.get(base + "/3")
        yield third.content()
        self.assertEqual(third.code, 503)
        self.assertEqual(third.headers.getRawHeaders(b"x-golb-error"), [b"queue-full"])
        held[0].write(b"one")
        held[0].finish()
        response = yield first
        self.assertEqual((yield response.content()), b"one")
        while len(held) < 2:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(held[1].path, b"/2")
        held[1].write(b"two")
        held[1].finish()
        response = yield second
        self.assertEqual((yield response.content()), b"two")
        fourth = self.client.get(base + "/4")
        fifth = yield self.client.get(base + "/5")
        yield fifth.content()
        self.assertEqual(fifth.code, 503)
        self.assertEqual(fifth.headers.getRawHeaders(b"x-golb-error"), [b"queue-timeout"])
        held[2].finish()
        yield (yield fourth).content()


class CircuitBreakerTests(ProxyTestCase):
    """
    A pool's C{circuit_breaker} answers 503 C{circuit-open} beyond its
    limits, and lets requests through again once below them.
    """

    def holdingBackends(self, count=1):
        held = []

        def hold(request):
            held.append(request)
            return NOT_DONE_YET

        ports = []
        for _ in range(count):
            port, _ = listenBackend(self, FunctionResource(hold))
            ports.append(port.getHost().port)
        return held, ports

    def start(self, ports, breaker, extra="", backendExtra=""):
        backends = ", ".join(f'{{url: "http://127.0.0.1:{p}"{backendExtra}}}' for p in ports)
        golb, listening, site = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{backends}]
    circuit_breaker: {breaker}
{extra}""")
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        return golb.pools["default"]

    @defer.inlineCallbacks
    def assertOpen(self, path, limit):
        response, body = yield self.get(path)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"circuit-open"])
        self.assertIn(f"circuit open: {limit}".encode(), body)

    @defer.inlineCallbacks
    def test_maxRequests(self):
        """
        With max_requests 2, a third concurrent request is refused at once;
        when one finishes, the next goes through.
        """
        held, ports = self.holdingBackends(2)
        pool = self.start(ports, "{max_requests: 2}")

        def heldFor(path):
            # the backends may see the requests in either order
            return [request for request in held if request.path == path][0]

        first = self.get("/1")
        second = self.get("/2")
        yield waitUntil(lambda: len(held) == 2)
        yield self.assertOpen("/3", "max_requests")
        self.assertEqual(pool.overflows["max_requests"], 1)
        heldFor(b"/1").finish()
        yield first
        fourth = self.get("/4")
        yield waitUntil(lambda: len(held) == 3)
        heldFor(b"/2").finish()
        heldFor(b"/4").finish()
        yield second
        response, _ = yield fourth
        self.assertEqual(response.code, 200)
        self.assertEqual(pool.inFlight, 0)

    @defer.inlineCallbacks
    def test_maxConnections(self):
        """
        With max_connections 1 over two backends: while one connection is
        busy, a request for the other backend is refused; once it is idle, it
        is closed to make room for a connection to the other backend.
        """
        held, ports = self.holdingBackends(2)
        pool = self.start(ports, "{max_connections: 1}")
        first = self.get("/1")
        yield waitUntil(lambda: len(held) == 1)
        yield self.assertOpen("/2", "max_connections")
        held[0].finish()
        yield first
        b1, b2 = pool.backends
        self.assertEqual(b1.upstream.idleCount, 1)
        # round robin: /2 was b2's turn, so /3 reuses b1's idle connection
        # and /4 needs a connection to b2, for which b1's is closed.
        for path, index in [("/3", 1), ("/4", 2)]:
            pending = self.get(path)
            yield waitUntil(lambda index=index: len(held) == index + 1)
            held[index].finish()
            response, _ = yield pending
            self.assertEqual(response.code, 200)
        self.assertEqual(held[2].getHost().port, ports[1])
        self.assertEqual(b1.upstream.connectionCount, 0)
        self.assertEqual(b1.upstream.totalConnectionsMade, 1)
        self.assertEqual(pool.overflows["max_connections"], 1)

    @defer.inlineCallbacks
    def test_maxPending(self):
        """
        max_pending bounds the requests waiting in the queue: beyond it they
        are refused with circuit-open even though the queue has room.
        """
        held, ports = self.holdingBackends(1)
        pool = self.start(ports, "{max_pending: 1}", "    queue: {max: 10, timeout: 5s}\n",
                          backendExtra=", max_connections: 1")
        first = self.get("/1")
        yield waitUntil(lambda: len(held) == 1)
        second = self.get("/2")
        yield waitUntil(lambda: len(pool.waiting) == 1)
        yield self.assertOpen("/3", "max_pending")
        held[0].finish()
        yield first
        yield waitUntil(lambda: len(held) == 2)
        held[1].finish()
        response, _ = yield second
        self.assertEqual(response.code, 200)
        self.assertEqual(pool.overflows["max_pending"], 1)


class NoTimeoutTests(ProxyTestCase):
    """
    A pool timeout of 0 is none, as the configuration documents.
    """

    @defer.inlineCallbacks
    def test_zeroTimeoutsAreNone(self):
        """
        With C{connect}, C{response_header} and C{idle} at 0, a backend that
        takes its time to answer and to stream is waited for.
        """
        def slow(request):
            def head():
                request.write(b"first ")
                return deferLater(reactor, 0.05, rest)

            def rest():
                request.write(b"second")
                request.finish()

            deferLater(reactor, 0.05, head)
            return NOT_DONE_YET

        port, _ = listenBackend(self, FunctionResource(slow))
        self.golb(port.getHost().port,
                  extra="    timeouts: {connect: 0s, response_header: 0s, idle: 0s}\n")
        response, body = yield self.get("/")
        self.assertEqual((response.code, body), (200, b"first second"))


class _NoFormRequest(Request):
    def __init__(self, *args, **kwargs):
        kwargs["parsePOSTFormSubmission"] = False
        Request.__init__(self, *args, **kwargs)


class FormBodyTests(ProxyTestCase):
    """
    golb forwards request bodies as they are: it does not parse forms.
    """

    @defer.inlineCallbacks
    def test_formsUntouched(self):
        """
        A multipart body Twisted would reject as malformed, and a urlencoded
        one, reach the backend byte for byte.
        """
        port, backend = listenBackend(self)
        # the backend must not parse forms either: Twisted's would 400 too
        backend.site.requestFactory = _NoFormRequest
        self.golb(port.getHost().port)
        for contentType, payload in [
            (b"multipart/form-data; boundary=zzz", b"--zzz\r\nnot a valid part\r\n"),
            (b"multipart/form-data", b"no boundary: not multipart to Twisted"),
            (b"application/x-www-form-urlencoded", b"a=1&b=%zz&&c"),
        ]:
            response = yield self.client.post(
                self.base + "/form", data=payload, headers={b"Content-Type": [contentType]})
            body = yield response.content()
            self.assertEqual(response.code, 200, body)
            self.assertTrue(body.endswith(b"\n\n" + payload), body)


class _Response:
    def __init__(self, headers, length):
        self.headers = headers
        self.length = length


class _Request:
    def __init__(self):
        from twisted.web.http_headers import Headers

        self.responseHeaders = Headers({b"server": [b"golb"], b"date": [b"then"]})


class ResponseHeadersTests(SynchronousTestCase):
    """
    L{responseHeaders} copies a backend's end-to-end response headers.
    """

    def copy(self, headers, length=5):
        from golb.proxy import responseHeaders

        request = _Request()
        responseHeaders(_Response(headers, length), request)
        return [(name.lower(), value) for name, values in
                request.responseHeaders.getAllRawHeaders() for value in values]

    def test_hopByHop(self):
        """
        Hop-by-hop headers and those a Connection header names (before or
        after it) are dropped; the rest keep their order and values, the
        same on every response (the lines are remembered).
        """
        headers = [(b"X-Early", b"1"), (b"Keep-Alive", b"timeout=5"),
                   (b"Connection", b"keep-alive, X-Early, x-late"),
                   (b"Set-Cookie", b"a=1"), (b"X-Late", b"2"), (b"Set-Cookie", b"b=2"),
                   (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")]
        for _ in range(3):
            self.assertEqual(self.copy(headers), [
                (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                (b"content-length", b"5"), (b"via", b"1.1 golb")])
        # the same lines without the Connection header are kept
        self.assertEqual(self.copy(headers[:1] + headers[4:5]), [
            (b"x-early", b"1"), (b"x-late", b"2"), (b"via", b"1.1 golb")])

    def test_viaAndLength(self):
        """
        golb joins the backend's Via; a body of unknown length loses
        Content-Length; golb's own Server and Date give way to the
        backend's.
        """
        headers = [(b"Via", b"1.0 cache"), (b"Content-Length", b"5"),
                   (b"Server", b"nginx"), (b"Date", b"now")]
        for _ in range(2):
            self.assertEqual(self.copy(headers, length=None), [
                (b"via", b"1.0 cache, 1.1 golb"), (b"server", b"nginx"), (b"date", b"now")])

    def test_unusualNames(self):
        """
        A header name never seen before arrives as the backend spelled it,
        and a value holding a line break cannot split the response head.
        """
        name = b"X-Never-Seen-Before-%d" % (id(self),)
        copied = self.copy([(name, b"one"), (b"X-Broken", b"a\rb")])
        self.assertEqual(copied[0], (name.lower(), b"one"))
        self.assertNotIn(b"\r", copied[1][1])
