"""
Tests for L{golb.policies}: the chain of policies of a route, end to end
through a real golb listener, with small policies defined here.
"""

from twisted.internet import defer
from zope.interface.verify import verifyObject

from golb.errors import GolbError
from golb.policies import POLICIES, Answer, Chain, Context, IPolicy, Policy, States
from golb.test.support import header, listenBackend, listenGolb, parseResponses, rawRequest
from golb.test.test_proxy import ProxyTestCase


class Recorder(Policy):
    """
    Records its calls in C{log}; answers with C{answer} when set.
    """

    def __init__(self, name, log, answer=None, bodyFilter=None):
        Policy.__init__(self, None, None)
        self.name = name
        self.log = log
        self.answer = answer
        self.bodyFilter = bodyFilter

    def onRequest(self, request, context):
        self.log.append(("request", self.name))
        return self.answer

    def onResponse(self, request, context, response):
        self.log.append(("response", self.name, response is None))
        request.responseHeaders.addRawHeader(b"x-policy", self.name.encode())
        return self.bodyFilter


class Upper:
    """
    A body filter that upper-cases and counts its calls.
    """

    def __init__(self):
        self.finished = False

    def write(self, data):
        return data.upper()

    def finish(self):
        self.finished = True
        return b"<END>"


class ChainTests(ProxyTestCase):
    """
    A route's chain runs request phases in order and response phases in
    reverse, for real requests.
    """

    def start(self, policies):
        port, backend = listenBackend(self, name="b1")
        golb, listening, site = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
routing_rules:
  - match: {{path: "/*"}}
    target_pool: default
    name: all
""")
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        self.port = listening.getHost().port
        [route] = golb.runtime.router.routes
        route.chain = Chain(policies)
        return golb, backend

    def test_interface(self):
        """
        The base L{Policy} provides L{IPolicy}.
        """
        self.assertTrue(verifyObject(IPolicy, Policy(None, None)))

    @defer.inlineCallbacks
    def test_order(self):
        """
        Request phases run in chain order, response phases in reverse; their
        header edits reach the client.
        """
        log = []
        self.start([Recorder("a", log), Recorder("b", log)])
        response, body = yield self.get("/x")
        self.assertEqual(response.code, 200)
        self.assertEqual(log, [("request", "a"), ("request", "b"),
                               ("response", "b", False), ("response", "a", False)])
        self.assertEqual(response.headers.getRawHeaders(b"x-policy"), [b"b", b"a"])

    @defer.inlineCallbacks
    def test_answerStopsTheChain(self):
        """
        A policy's error answer stops the chain: later policies and the
        backend never see the request; earlier policies' response phase
        still runs on golb's answer.
        """
        log = []
        _, backend = self.start([
            Recorder("a", log),
            Recorder("b", log, GolbError("rate-limited", headers=[(b"Retry-After", b"3")])),
            Recorder("c", log),
        ])
        response, body = yield self.get("/x")
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"3"])
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"rate-limited"])
        self.assertEqual(response.headers.getRawHeaders(b"x-policy"), [b"a"])
        self.assertEqual(log, [("request", "a"), ("request", "b"), ("response", "a", True)])
        self.assertEqual(backend.site.openProtocols, [])

    @defer.inlineCallbacks
    def test_plainAnswer(self):
        """
        A policy may answer with a plain L{Answer} (a redirect).
        """
        log = []
        self.start([Recorder("r", log, Answer(308, [(b"Location", b"https://x/")], b"moved"))])
        data = yield rawRequest(self, self.port, b"GET /old HTTP/1.1\r\nHost: x\r\n\r\n",
                                until=b"moved")
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual((status, body), (308, b"moved"))
        self.assertEqual(header(headers, b"location"), [b"https://x/"])

    @defer.inlineCallbacks
    def test_deferred(self):
        """
        A policy may decide later: the chain waits for its L{Deferred}, then
        goes on.
        """
        log = []
        later = defer.Deferred()

        class Later(Policy):
            def onRequest(self, request, context):
                log.append("asked")
                return later

        self.start([Later(None, None), Recorder("after", log)])
        pending = self.get("/x")
        from golb.test.support import waitUntil

        yield waitUntil(lambda: log == ["asked"])
        later.callback(None)
        response, body = yield pending
        self.assertEqual(response.code, 200)
        self.assertEqual(log[:2], ["asked", ("request", "after")])

    @defer.inlineCallbacks
    def test_policyBug(self):
        """
        A policy that raises answers 500 internal-error and is logged; golb
        goes on serving.
        """

        class Broken(Policy):
            def onRequest(self, request, context):
                raise ZeroDivisionError()

        self.start([Broken(None, None)])
        response, body = yield self.get("/x")
        self.assertEqual(response.code, 500)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"internal-error"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @defer.inlineCallbacks
    def test_bodyFilter(self):
        """
        Body filters from the response phase transform the streamed body,
        and their final bytes are sent at its end.
        """
        upper = Upper()
        self.start([Recorder("u", [], bodyFilter=upper)])
        response, body = yield self.get("/shout")
        self.assertIn(b"GET /SHOUT HTTP/1.1", body)
        self.assertTrue(body.endswith(b"<END>"))
        self.assertTrue(upper.finished)

    @defer.inlineCallbacks
    def test_target(self):
        """
        A policy that changes C{context.target} changes what the backend is
        asked for.
        """

        class Retarget(Policy):
            def onRequest(self, request, context):
                context.target = b"/elsewhere?q=1"

        self.start([Retarget(None, None)])
        response, body = yield self.get("/x")
        self.assertIn(b"GET /elsewhere?q=1 HTTP/1.1", body)


class ConfiguredChainTests(ProxyTestCase):
    """
    Chains built from configuration: global policies first, then the
    route's; state kept across reloads.
    """

    def test_registry(self):
        """
        Every policy kind of the configuration has a class registered.
        """
        from golb.config import POLICY_CLASSES

        self.assertEqual(set(POLICIES), set(POLICY_CLASSES))

    @defer.inlineCallbacks
    def test_maxBody(self):
        """
        A route's max_body refuses larger bodies with 413 (also when only
        Content-Length says so) and passes smaller ones; other routes keep
        the listener's limit.
        """
        port, backend = listenBackend(self, name="b1")
        golb, listening, site = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
routing_rules:
  - match: {{path: "/small/*"}}
    target_pool: default
    policies: [{{max_body: 100B}}]
""")
        base = f"http://127.0.0.1:{listening.getHost().port}"
        response = yield self.client.post(base + "/small/x", data=b"x" * 101)
        body = yield response.content()
        self.assertEqual(response.code, 413)
        self.assertIn(b"limit of 100 bytes", body)
        response = yield self.client.post(base + "/small/x", data=b"x" * 100)
        yield response.content()
        self.assertEqual(response.code, 200)
        response = yield self.client.post(base + "/big", data=b"x" * 1000)
        yield response.content()
        self.assertEqual(response.code, 200)

    def test_statesKept(self):
        """
        State asked for with the same key survives a reload; state a reload
        no longer asks for is closed.
        """
        states = States()
        closed = []

        class State:
            def __init__(self, name):
                self.name = name

            def close(self):
                closed.append(self.name)

        states.begin()
        first = states.keep(("global", "a"), lambda: State("a"))
        states.keep(("global", "b"), lambda: State("b"))
        states.commit()
        states.begin()
        again = states.keep(("global", "a"), lambda: State("a2"))
        states.commit()
        self.assertIs(again, first)
        self.assertEqual(closed, ["b"])
        states.begin()
        states.keep(("global", "c"), lambda: State("c"))
        states.abandon()
        self.assertEqual(closed, ["b"])


class ContextTests(ProxyTestCase):
    def test_context(self):
        """
        A L{Context} starts with nothing passed and no filters.
        """
        context = Context("api", b"/x")
        self.assertEqual((context.route, context.target, context.passed, context.filters),
                         ("api", b"/x", 0, []))
