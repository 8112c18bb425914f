"""
Tests for L{golb.policies.cors}: origin matching, preflights answered by golb,
and C{Access-Control-*} headers on forwarded and golb-made responses.
"""

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from golb.config import CorsPolicy
from golb.policies import Answer, Context, IPolicy
from golb.policies.cors import Cors, OriginMatcher, normalizeOrigin
from golb.test.support import (
    freePort,
    header,
    listenBackend,
    listenGolb,
    parseResponses,
    rawRequest,
)
from golb.test.test_proxy import FunctionResource


def cors(**kw) -> Cors:
    """
    A L{Cors} policy built from C{CorsPolicy(**kw)}.
    """
    kw.setdefault("allow_origins", ("https://app.example.com",))
    return Cors(CorsPolicy(**kw), None)


def request(method=b"GET", **headers) -> DummyRequest:
    """
    A request with C{headers} (keyword names, underscores for dashes).
    """
    req = DummyRequest([b""])
    req.method = method
    for name, value in headers.items():
        req.requestHeaders.setRawHeaders(
            name.replace("_", "-").encode("ascii"),
            value if isinstance(value, list) else [value],
        )
    return req


def preflight(origin=b"https://app.example.com", method=b"PUT", **headers) -> DummyRequest:
    """
    A preflight request from C{origin} asking for C{method}.
    """
    return request(b"OPTIONS", origin=origin, access_control_request_method=method, **headers)


class _Response:
    """
    A stand-in for L{golb.upstream.UpstreamResponse}.
    """

    code = 200
    headers = ()
    length = None


class OriginMatcherTests(SynchronousTestCase):
    """
    Which C{Origin} values a configured list allows.
    """

    def test_exactIsCaseInsensitive(self):
        """
        Exact origins match whatever the case of scheme and host, with or
        without the scheme's default port or a trailing slash.
        """
        matcher = OriginMatcher(["https://App.Example.com"])
        for origin in [b"https://app.example.com", b"HTTPS://APP.EXAMPLE.COM",
                       b"https://app.example.com:443", b"https://app.example.com/"]:
            self.assertTrue(matcher.allows(origin), origin)
        for origin in [b"http://app.example.com", b"https://app.example.com:8443",
                       b"https://app.example.com.evil.net", b"https://xapp.example.com",
                       b"null", b""]:
            self.assertFalse(matcher.allows(origin), origin)

    def test_defaultPortInConfig(self):
        """
        A configured origin with its default port matches the browser's
        serialization, which omits it.
        """
        matcher = OriginMatcher(["http://localhost:80", "http://localhost:3000"])
        self.assertTrue(matcher.allows(b"http://localhost"))
        self.assertTrue(matcher.allows(b"http://localhost:3000"))
        self.assertFalse(matcher.allows(b"http://localhost:3001"))

    def test_wildcard(self):
        """
        C{https://*.example.com} matches subdomains at any depth over https
        on the default port, and nothing that only looks similar.
        """
        matcher = OriginMatcher(["https://*.example.com"])
        self.assertEqual(matcher.wildcards, ((b"https://", b".example.com"),))
        for origin in [b"https://a.example.com", b"https://a.b.example.com",
                       b"https://A-1.Example.COM"]:
            self.assertTrue(matcher.allows(origin), origin)
        for origin in [b"https://example.com", b"http://a.example.com",
                       b"https://a.example.com:8443", b"https://evil-example.com",
                       b"https://a.example.com.evil.net", b"https://evil.net/.example.com",
                       b"https://user@a.example.com", b"https://.example.com",
                       b"https://a.example.com, https://b.example.com"]:
            self.assertFalse(matcher.allows(origin), origin)

    def test_wildcardWithPort(self):
        """
        A wildcard origin with a port matches only that port.
        """
        matcher = OriginMatcher(["http://*.local.test:8080"])
        self.assertTrue(matcher.allows(b"http://api.local.test:8080"))
        self.assertFalse(matcher.allows(b"http://api.local.test"))
        self.assertFalse(matcher.allows(b"http://api.local.test:80801"))

    def test_badWildcardsIgnored(self):
        """
        A wildcard in the scheme or port, or more than one, is ignored (with a
        warning) rather than matching too much.
        """
        matcher = OriginMatcher(["*://a.example.com", "https://*.*.example.com",
                                 "http://localhost:*"])
        self.assertEqual(matcher.wildcards, ())
        self.assertFalse(matcher.allows(b"http://localhost:1234"))
        self.assertFalse(matcher.allows(b"https://a.b.example.com"))

    def test_star(self):
        """
        C{*} allows every origin, C{null} included.
        """
        matcher = OriginMatcher(["*"])
        self.assertTrue(matcher.allows(b"https://anything.test"))
        self.assertTrue(matcher.allows(b"null"))

    def test_normalizeOrigin(self):
        """
        Normalization lowercases and drops only the scheme's own default port.
        """
        self.assertEqual(normalizeOrigin(b"HTTP://X.test:80"), b"http://x.test")
        self.assertEqual(normalizeOrigin(b"https://x.test:80"), b"https://x.test:80")
        self.assertEqual(normalizeOrigin(b"http://x.test:443"), b"http://x.test:443")


class PreflightTests(SynchronousTestCase):
    """
    The request phase answers preflights and passes everything else on.
    """

    def test_interface(self):
        """
        L{Cors} provides L{IPolicy}.
        """
        self.assertTrue(verifyObject(IPolicy, cors()))

    def test_allowed(self):
        """
        A preflight from an allowed origin is answered 204 with the origin
        echoed, the configured methods and headers, max age, credentials and
        a Vary covering every request header the answer depends on.
        """
        policy = cors(allow_methods=("GET", "PUT"), allow_headers=("Content-Type", "X-Token"),
                      allow_credentials=True, max_age=3600.0)
        answer = policy.onRequest(preflight(), Context("r", b"/"))
        self.assertIsInstance(answer, Answer)
        self.assertEqual(answer.status, 204)
        self.assertEqual(answer.body, b"")
        self.assertEqual(dict(answer.headers), {
            b"Access-Control-Allow-Origin": b"https://app.example.com",
            b"Access-Control-Allow-Credentials": b"true",
            b"Access-Control-Allow-Methods": b"GET, PUT",
            b"Access-Control-Allow-Headers": b"Content-Type, X-Token",
            b"Access-Control-Max-Age": b"3600",
            b"Vary": b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        })

    def test_echoOriginAsSent(self):
        """
        The origin is echoed exactly as the browser sent it (browsers compare
        it byte for byte with their own serialization).
        """
        answer = cors().onRequest(preflight(b"https://APP.example.com"), Context("r", b"/"))
        self.assertEqual(dict(answer.headers)[b"Access-Control-Allow-Origin"],
                         b"https://APP.example.com")

    def test_noCredentialsHeaderByDefault(self):
        """
        Without C{allow_credentials}, no C{Access-Control-Allow-Credentials}
        is sent.
        """
        answer = cors().onRequest(preflight(), Context("r", b"/"))
        self.assertNotIn(b"Access-Control-Allow-Credentials", dict(answer.headers))

    def test_echoRequestedHeaders(self):
        """
        With an empty C{allow_headers}, the headers the preflight asks for are
        allowed: echoed lowercased, anything that is not a header name
        dropped.
        """
        answer = cors().onRequest(
            preflight(access_control_request_headers=[b"Content-Type, X-Token", b"bad name, x-b"]),
            Context("r", b"/"),
        )
        self.assertEqual(dict(answer.headers)[b"Access-Control-Allow-Headers"],
                         b"content-type, x-token, x-b")

    def test_echoWithStar(self):
        """
        C{allow_headers: ["*"]} echoes the requested headers too (a literal
        C{*} would mean nothing to a browser sending credentials).
        """
        answer = cors(allow_headers=("*",), allow_credentials=True).onRequest(
            preflight(access_control_request_headers=b"authorization"), Context("r", b"/"))
        self.assertEqual(dict(answer.headers)[b"Access-Control-Allow-Headers"], b"authorization")

    def test_noRequestedHeaders(self):
        """
        A preflight that asks for no headers gets no C{Allow-Headers} when the
        list is empty.
        """
        answer = cors().onRequest(preflight(), Context("r", b"/"))
        self.assertNotIn(b"Access-Control-Allow-Headers", dict(answer.headers))

    def test_anyOrigin(self):
        """
        With C{allow_origins: ["*"]} the preflight answer says C{*}.
        """
        answer = cors(allow_origins=("*",)).onRequest(
            preflight(b"https://x.test"), Context("r", b"/"))
        self.assertEqual(dict(answer.headers)[b"Access-Control-Allow-Origin"], b"*")

    def test_refused(self):
        """
        A preflight from an origin that is not allowed is answered 204
        without any C{Access-Control-*} header, so the browser refuses the
        real request; it never reaches the backend.
        """
        for origin in [b"https://evil.test", [b"https://app.example.com", b"https://evil.test"]]:
            answer = cors().onRequest(preflight(origin), Context("r", b"/"))
            self.assertEqual(answer.status, 204)
            names = [name.lower() for name, value in answer.headers]
            self.assertEqual(names, [b"vary"])

    def test_notPreflights(self):
        """
        Requests that are not preflights pass on: other methods, and OPTIONS
        without C{Origin} or without C{Access-Control-Request-Method}.
        """
        policy = cors()
        for req in [
            request(b"GET", origin=b"https://app.example.com"),
            request(b"PUT", origin=b"https://app.example.com",
                    access_control_request_method=b"PUT"),
            request(b"OPTIONS", origin=b"https://app.example.com"),
            request(b"OPTIONS", access_control_request_method=b"PUT"),
        ]:
            self.assertIsNone(policy.onRequest(req, Context("r", b"/")))


class ResponseHeaderTests(SynchronousTestCase):
    """
    The response phase adds C{Access-Control-*} headers for allowed origins.
    """

    def respond(self, policy, req, response=_Response()):
        self.assertIsNone(policy.onResponse(req, Context("r", b"/"), response))
        return req.responseHeaders

    def test_allowed(self):
        """
        A response to an allowed origin carries the echoed origin,
        credentials, exposed headers and C{Vary: Origin}.
        """
        headers = self.respond(
            cors(allow_credentials=True, expose_headers=("X-Total", "X-Page")),
            request(origin=b"https://app.example.com"),
        )
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example.com"])
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-credentials"), [b"true"])
        self.assertEqual(headers.getRawHeaders(b"access-control-expose-headers"),
                         [b"X-Total, X-Page"])
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"Origin"])

    def test_varyAppended(self):
        """
        C{Origin} is appended to the backend's C{Vary}, not put in its place,
        and not repeated.
        """
        req = request(origin=b"https://app.example.com")
        req.responseHeaders.setRawHeaders(b"vary", [b"Accept-Encoding"])
        self.assertEqual(self.respond(cors(), req).getRawHeaders(b"vary"),
                         [b"Accept-Encoding, Origin"])
        req = request(origin=b"https://app.example.com")
        req.responseHeaders.setRawHeaders(b"vary", [b"Cookie", b"origin"])
        self.assertEqual(self.respond(cors(), req).getRawHeaders(b"vary"), [b"Cookie", b"origin"])
        req = request(origin=b"https://app.example.com")
        req.responseHeaders.setRawHeaders(b"vary", [b"*"])
        self.assertEqual(self.respond(cors(), req).getRawHeaders(b"vary"), [b"*"])

    def test_disallowed(self):
        """
        A response to an origin that is not allowed (or to a request without
        one) gets no CORS headers, only C{Vary: Origin} so caches keep it apart;
        the backend's own C{Access-Control-*} headers are removed.
        """
        for req in [request(origin=b"https://evil.test"), request()]:
            req.responseHeaders.setRawHeaders(b"access-control-allow-origin", [b"*"])
            req.responseHeaders.setRawHeaders(b"access-control-allow-credentials", [b"true"])
            headers = self.respond(cors(allow_credentials=True), req)
            self.assertEqual(
                sorted(name.lower() for name, values in headers.getAllRawHeaders()), [b"vary"])

    def test_backendHeadersReplaced(self):
        """
        For an allowed origin, golb's value replaces the backend's.
        """
        req = request(origin=b"https://app.example.com")
        req.responseHeaders.setRawHeaders(b"access-control-allow-origin", [b"https://other.test"])
        headers = self.respond(cors(), req)
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example.com"])

    def test_golbAnswer(self):
        """
        golb's own answers (no backend response) get the CORS headers too.
        """
        headers = self.respond(cors(), request(origin=b"https://app.example.com"), None)
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example.com"])

    def test_anyOrigin(self):
        """
        With C{allow_origins: ["*"]} every response says C{*} and does not
        vary by origin.
        """
        headers = self.respond(cors(allow_origins=("*",), expose_headers=("X-Total",)),
                               request(origin=b"https://x.test"))
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertEqual(headers.getRawHeaders(b"access-control-expose-headers"), [b"X-Total"])
        self.assertIsNone(headers.getRawHeaders(b"vary"))


def corsYAML(backendPort: int, policies: str) -> str:
    return f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{backendPort}"}}]
routing_rules:
  - match: {{path: "/api/*"}}
    target_pool: default
    policies: {policies}
"""


class EndToEndTests(TestCase):
    """
    CORS through a real golb listener in front of a real backend.
    """

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.seen = []

        def backend(request):
            self.seen.append(request.method)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"vary", b"Accept")
            request.setHeader(b"x-total", b"7")
            request.setHeader(b"access-control-allow-origin", b"*")
            return b'{"ok": true}'

        port, _ = listenBackend(self, FunctionResource(backend))
        self.backendPort = port.getHost().port

    def listen(self, policies, backendPort=None):
        if backendPort is None:
            backendPort = self.backendPort
        _, port, _ = listenGolb(self, corsYAML(backendPort, policies))
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        return port.getHost().port

    @defer.inlineCallbacks
    def fetch(self, method, path, headers, data=None):
        response = yield self.client.request(method, self.base + path, headers=headers, data=data)
        body = yield response.content()
        return response, body

    @defer.inlineCallbacks
    def test_preflightAnsweredByGolb(self):
        """
        A browser's preflight from an allowed origin is answered 204 by golb
        with the CORS headers; the backend never sees it.
        """
        self.listen('[{cors: {allow_origins: ["https://*.example.com"], allow_methods: [GET, PUT],'
                    ' allow_headers: [Content-Type], max_age: 1h, allow_credentials: true}}]')
        response, body = yield self.fetch("OPTIONS", "/api/items", {
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        })
        headers = response.headers
        self.assertEqual(response.code, 204)
        self.assertEqual(body, b"")
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example.com"])
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-methods"), [b"GET, PUT"])
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-headers"), [b"Content-Type"])
        self.assertEqual(headers.getRawHeaders(b"access-control-max-age"), [b"3600"])
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-credentials"), [b"true"])
        self.assertIn(b"Origin", headers.getRawHeaders(b"vary")[0])
        self.assertEqual(self.seen, [])

    @defer.inlineCallbacks
    def test_preflightRefused(self):
        """
        A preflight from another origin gets a bare 204 (the browser then
        refuses the real request); the backend never sees it.
        """
        self.listen('[{cors: {allow_origins: ["https://app.example.com"]}}]')
        response, body = yield self.fetch("OPTIONS", "/api/items", {
            "Origin": "https://evil.test", "Access-Control-Request-Method": "DELETE",
        })
        self.assertEqual(response.code, 204)
        names = [name.lower() for name, _ in response.headers.getAllRawHeaders()]
        self.assertFalse([name for name in names if name.startswith(b"access-control-")], names)
        self.assertEqual(self.seen, [])

    @defer.inlineCallbacks
    def test_plainOptionsForwarded(self):
        """
        An OPTIONS request without C{Access-Control-Request-Method} is not a
        preflight: it reaches the backend, and gets the CORS headers back.
        """
        self.listen('[{cors: {allow_origins: ["https://app.example.com"]}}]')
        response, body = yield self.fetch("OPTIONS", "/api/items",
                                          {"Origin": "https://app.example.com"})
        self.assertEqual(self.seen, [b"OPTIONS"])
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example.com"])

    @defer.inlineCallbacks
    def test_simpleRequest(self):
        """
        A cross-origin GET from an allowed origin reaches the backend; the
        response carries the echoed origin, the exposed headers and the
        backend's C{Vary} with C{Origin} appended.
        """
        self.listen('[{cors: {allow_origins: ["https://app.example.com"],'
                    ' expose_headers: [X-Total]}}]')
        response, body = yield self.fetch("GET", "/api/items",
                                          {"Origin": "https://app.example.com"})
        self.assertEqual(body, b'{"ok": true}')
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example.com"])
        self.assertEqual(headers.getRawHeaders(b"access-control-expose-headers"), [b"X-Total"])
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"Accept, Origin"])

    @defer.inlineCallbacks
    def test_otherOriginForwardedWithoutHeaders(self):
        """
        A request from an origin that is not allowed still reaches the
        backend (the browser hides the answer from the page), without any
        CORS header: not even the backend's own C{Access-Control-Allow-Origin: *}.
        """
        self.listen('[{cors: {allow_origins: ["https://app.example.com"]}}]')
        response, body = yield self.fetch("GET", "/api/items", {"Origin": "https://evil.test"})
        self.assertEqual(self.seen, [b"GET"])
        self.assertEqual(body, b'{"ok": true}')
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))
        self.assertEqual(response.headers.getRawHeaders(b"vary"), [b"Accept, Origin"])

    @defer.inlineCallbacks
    def test_golbErrorReadable(self):
        """
        An error golb answers itself for a policy listed after C{cors} (here
        413 from C{max_body}) carries the CORS headers, so the page's script
        can read it.
        """
        self.listen('[{cors: {allow_origins: ["https://app.example.com"]}}, {max_body: 10}]')
        response, body = yield self.fetch("POST", "/api/items",
                                          {"Origin": "https://app.example.com"}, data=b"x" * 100)
        self.assertEqual(response.code, 413)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example.com"])
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"body-too-large"])
        self.assertEqual(self.seen, [])

    @defer.inlineCallbacks
    def test_backendDownReadable(self):
        """
        A 502 golb answers when the backend cannot be reached carries the
        CORS headers too.
        """
        port = self.listen('[{cors: {allow_origins: ["https://app.example.com"]}}]',
                           backendPort=freePort())
        data = yield rawRequest(
            self, port,
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example.com\r\n"
            b"Connection: close\r\n\r\n",
        )
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual(status, 502)
        self.assertEqual(header(headers, b"access-control-allow-origin"),
                         [b"https://app.example.com"])
        self.assertEqual(header(headers, b"vary"), [b"Origin"])

    @defer.inlineCallbacks
    def test_anyOrigin(self):
        """
        With C{allow_origins: ["*"]} any page may read the response.
        """
        self.listen('[{cors: {allow_origins: ["*"]}}]')
        response, body = yield self.fetch("GET", "/api/items", {"Origin": "https://x.test"})
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
