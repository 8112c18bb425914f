"""
gRPC through golb's proxy, in process: golb's HTTP/2 client (L{H2Pool}) as
the gRPC client, golb (an h2c listener and an h2c pool) in the middle, and a
backend served by golb's own HTTP/2 server with a test resource playing the
gRPC server.  No grpcio: these run on PyPy too.
"""

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from golb.grpc import frameMessage
from golb.h2client import H2Pool
from golb.listener import GolbSite
from golb.streams import BodyStream
from golb.test.support import _closeSite, _trackProtocols, listenGolb, waitUntil
from golb.upstream import UpstreamRequest

GRPC = [(b"Content-Type", b"application/grpc"), (b"TE", b"trailers")]


class _Echo:
    """
    Writes each piece of a streamed request body back at once, then ends
    the response with trailers.
    """

    def __init__(self, request):
        self.request = request

    def dataReceived(self, data):
        self.request.write(data)

    def bodyDone(self, reason, trailers):
        if reason is not None:
            return
        self.request.responseTrailers = [(b"grpc-status", b"0"), (b"x-echoed", b"yes")]
        self.request.finish()


class FakeGrpcServer(Resource):
    """
    A gRPC-ish backend: C{/Echo} streams the request back as it arrives;
    C{/Fail} answers a status in the head; C{/Hang} never answers; C{/Break}
    sends a message then resets its stream.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []
        self.finished = []

    def render(self, request):
        self.requests.append(request)
        # the stream may be cancelled before the test sees the response
        request.notifyFinish().addBoth(self.finished.append)
        request.setHeader(b"content-type", b"application/grpc")
        if request.path == b"/Echo":
            request.bodyStream.deliver(_Echo(request))
        elif request.path == b"/Fail":
            request.setHeader(b"grpc-status", b"5")
            request.setHeader(b"grpc-message", b"no such thing")
            request.finish()
        elif request.path == b"/Break":
            request.write(frameMessage(b"one"))

            def reset():
                request.channel.transport.abortConnection()

            deferLater(reactor, 0.01, reset)
        return NOT_DONE_YET


class ProxyGrpcTests(TestCase):
    def setUp(self):
        self.server = FakeGrpcServer()
        site = GolbSite(self.server, reactor=reactor, h2c=True)
        _trackProtocols(site)
        backend = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(_closeSite, backend, site)
        self.backendPort = backend.getHost().port

    def golb(self, protocol="h2c", extra=""):
        golb, port, _ = listenGolb(self, f"""\
listeners:
  - {{name: grpc, address: "127.0.0.1:0", http2: {{h2c: true}}}}
backend_pools:
  - name: svc
    protocol: {protocol}
    backends: [{{url: "http://127.0.0.1:{self.backendPort}"}}]
{extra}""", h2c=True)
        pool = H2Pool(reactor, "127.0.0.1", port.getHost().port)
        self.addCleanup(pool.close)
        return pool

    @defer.inlineCallbacks
    def call(self, pool, path, body=b"", headers=()):
        response = yield pool.request(UpstreamRequest(
            method=b"POST", target=path,
            headers=[(b"Host", b"grpc.test")] + GRPC + list(headers), body=body))
        chunks = []
        done = defer.Deferred()

        class Collect:
            def dataReceived(self, data):
                chunks.append(data)

            def bodyDone(self, reason):
                done.callback(reason)

        response.deliverBody(Collect())
        reason = yield done
        return response, b"".join(chunks), reason

    @defer.inlineCallbacks
    def test_streamedBothWaysWithTrailers(self):
        """
        Request messages reach the backend while the client is still
        sending, the backend's replies reach the client before the call
        ends, and its trailers arrive intact.
        """
        pool = self.golb()
        stream = BodyStream()
        d = self.call(pool, b"/Echo", body=stream)
        stream.write(frameMessage(b"ping-1"))
        # the first message goes through golb to the backend while the
        # request is still open
        first = len(frameMessage(b"ping-1"))
        yield from waitUntil(lambda: self.server.requests
                             and self.server.requests[0].bodyStream.received >= first)
        self.assertFalse(self.server.requests[0].bodyStream.ended)
        stream.write(frameMessage(b"ping-2"))
        stream.finish()
        response, body, reason = yield d
        self.assertIsNone(reason)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, frameMessage(b"ping-1") + frameMessage(b"ping-2"))
        self.assertEqual(response.trailers, [(b"grpc-status", b"0"), (b"x-echoed", b"yes")])

    @defer.inlineCallbacks
    def test_statusInHead(self):
        """
        A backend's trailers-only error reaches the client as sent.
        """
        pool = self.golb()
        response, body, reason = yield self.call(pool, b"/Fail", frameMessage(b"x"))
        self.assertEqual(response.getHeader(b"grpc-status"), b"5")
        self.assertEqual(response.getHeader(b"grpc-message"), b"no such thing")
        self.assertEqual(body, b"")

    @defer.inlineCallbacks
    def test_deadline(self):
        """
        A call whose grpc-timeout runs out while the backend says nothing
        ends with DEADLINE_EXCEEDED from golb, and the backend's stream is
        cancelled.
        """
        pool = self.golb()
        response, body, reason = yield self.call(
            pool, b"/Hang", frameMessage(b"x"), headers=[(b"grpc-timeout", b"100m")])
        self.assertEqual(response.code, 200)
        self.assertEqual(response.getHeader(b"grpc-status"), b"4")
        self.assertEqual(response.getHeader(b"x-golb-error"), b"upstream-timeout")
        self.assertEqual(len(self.server.requests), 1)
        yield from waitUntil(lambda: self.server.finished)

    @defer.inlineCallbacks
    def test_backendBreaks(self):
        """
        A backend stream reset after the response began ends the call with
        UNAVAILABLE in trailers, after the messages that came.
        """
        pool = self.golb()
        response, body, reason = yield self.call(pool, b"/Break", frameMessage(b"x"))
        self.assertIsNone(reason)
        self.assertEqual(body, frameMessage(b"one"))
        self.assertEqual(dict(response.trailers)[b"grpc-status"], b"14")

    @defer.inlineCallbacks
    def test_http1Pool(self):
        """
        A gRPC call to an HTTP/1.1 pool gets UNAVAILABLE saying why.
        """
        pool = self.golb(protocol="http1")
        response, body, reason = yield self.call(pool, b"/Echo", body=BodyStream())
        self.assertEqual(response.getHeader(b"grpc-status"), b"14")
        self.assertIn(b"h2", response.getHeader(b"grpc-message"))

    @defer.inlineCallbacks
    def test_noRoute(self):
        """
        golb's own errors reach gRPC clients as gRPC statuses.
        """
        pool = self.golb(extra=f"""\
  - name: other
    protocol: h2c
    backends: [{{url: "http://127.0.0.1:{self.backendPort}"}}]
routing_rules:
  - match: {{path: "/only/*"}}
    target_pool: svc
""")
        response, body, reason = yield self.call(pool, b"/Echo", frameMessage(b"x"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.getHeader(b"grpc-status"), b"12")
        self.assertEqual(response.getHeader(b"x-golb-error"), b"no-route")
