"""
Tests for L{golb.policies.headers}: the C{headers} policy, on its own and
end to end through a real golb listener in front of a demo backend.
"""

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers as HTTPHeaders
from zope.interface.verify import verifyObject

from golb.config import HeaderOps, HeadersPolicy, parseConfig
from golb.policies import Context, IPolicy
from golb.policies.headers import Headers, headersProblems
from golb.test.support import (
    freePort,
    listenBackend,
    listenGolb,
    parseResponses,
    rawRequest,
)
from golb.test.test_proxy import ProxyTestCase


class FakeRequest:
    """
    The parts of a L{golb.listener.GolbRequest} policies use.
    """

    def __init__(self, uri=b"/", host=b"example.com", headers=(), secure=False,
                 client="192.0.2.7", method=b"GET"):
        self.uri = uri
        self.method = method
        self.requestHeaders = HTTPHeaders()
        if host is not None:
            self.requestHeaders.setRawHeaders(b"host", [host])
        for name, value in headers:
            self.requestHeaders.addRawHeader(name, value)
        self.responseHeaders = HTTPHeaders()
        self.secure = secure
        self.client = client

    def clientAddress(self):
        return self.client

    def scheme(self):
        return "https" if self.secure else "http"

    def isSecure(self):
        return self.secure

    def getHost(self):
        return IPv4Address("TCP", "10.1.2.3", 8080)


def policy(request=None, response=None):
    """
    A L{Headers} policy from keyword dictionaries for each direction.
    """
    return Headers(
        HeadersPolicy(
            request=HeaderOps(**(request or {})),
            response=HeaderOps(**(response or {})),
        ),
        None,
    )


def context(route="api"):
    return Context(route, b"/")


class HeadersUnitTests(SynchronousTestCase):
    """
    The edits of one policy on one request and its response.
    """

    def test_interface(self):
        """
        L{Headers} provides L{IPolicy}.
        """
        self.assertTrue(verifyObject(IPolicy, policy()))

    def test_order(self):
        """
        Within one block, C{remove} runs first, then C{set} (replacing every
        value), then C{add} (appending): a header both removed and added
        ends up with only the added value.
        """
        headersPolicy = policy(request={
            "remove": ("X-A",),
            "set": {"X-B": "set", "X-C": "set"},
            "add": {"X-A": "added", "X-C": "added"},
        })
        request = FakeRequest(headers=[
            (b"X-A", b"1"), (b"X-A", b"2"), (b"X-B", b"1"), (b"X-B", b"2"), (b"X-C", b"1"),
        ])
        self.assertIsNone(headersPolicy.onRequest(request, context()))
        headers = request.requestHeaders
        self.assertEqual(headers.getRawHeaders(b"x-a"), [b"added"])
        self.assertEqual(headers.getRawHeaders(b"x-b"), [b"set"])
        self.assertEqual(headers.getRawHeaders(b"x-c"), [b"set", b"added"])

    def test_caseInsensitive(self):
        """
        Header names match whatever their case in the config or the request.
        """
        headersPolicy = policy(request={"remove": ("x-debug",), "set": {"x-env": "prod"}})
        request = FakeRequest(headers=[(b"X-DEBUG", b"1"), (b"X-Env", b"dev")])
        headersPolicy.onRequest(request, context())
        self.assertFalse(request.requestHeaders.hasHeader(b"x-debug"))
        self.assertEqual(request.requestHeaders.getRawHeaders(b"X-ENV"), [b"prod"])

    def test_responseEdits(self):
        """
        Response edits apply in the response phase, to a backend's response
        as to golb's own answer (C{response} L{None}); the request headers
        are left alone.
        """
        headersPolicy = policy(response={
            "remove": ("Server",), "set": {"X-Frame-Options": "DENY"},
            "add": {"Set-Cookie": "b=2"},
        })
        for response in (object(), None):
            request = FakeRequest(headers=[(b"Server", b"should-stay")])
            request.responseHeaders.setRawHeaders(b"server", [b"nginx"])
            request.responseHeaders.setRawHeaders(b"set-cookie", [b"a=1"])
            self.assertIsNone(headersPolicy.onRequest(request, context()))
            self.assertIsNone(headersPolicy.onResponse(request, context(), response))
            headers = request.responseHeaders
            self.assertFalse(headers.hasHeader(b"server"))
            self.assertEqual(headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
            self.assertEqual(headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])
            self.assertEqual(request.requestHeaders.getRawHeaders(b"server"),
                             [b"should-stay"])

    def test_placeholders(self):
        """
        C{{client_ip}}, C{{host}} (without port), C{{scheme}} and C{{route}}
        are filled in from the request.
        """
        headersPolicy = policy(request={"set": {
            "X-Real-IP": "{client_ip}",
            "X-Where": "{scheme}://{host} via {route}",
        }})
        request = FakeRequest(host=b"Shop.example:8443", secure=True, client="2001:db8::1")
        headersPolicy.onRequest(request, context("shop"))
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-real-ip"), [b"2001:db8::1"])
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-where"),
                         [b"https://Shop.example via shop"])

    def test_hostPlaceholderIPv6AndMissing(self):
        """
        C{{host}} keeps the brackets of an IPv6 literal; with no Host at all
        (HTTP/1.0) it is the address of the listener the client reached.
        """
        headersPolicy = policy(response={"set": {"X-Host": "{host}"}})
        request = FakeRequest(host=b"[2001:db8::2]:8080")
        headersPolicy.onResponse(request, context(), None)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-host"), [b"[2001:db8::2]"])
        request = FakeRequest(host=None)
        headersPolicy.onResponse(request, context(), None)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-host"), [b"10.1.2.3"])

    def test_otherBracesLiteral(self):
        """
        Text in braces that is not a placeholder, and values computed from
        the request, are sent as written: nothing is interpreted twice.
        """
        headersPolicy = policy(request={"set": {
            "X-Json": '{"a": 1} {unknown} {{host}}', "X-Route": "{route}",
        }})
        request = FakeRequest(host=b"{route}")
        headersPolicy.onRequest(request, context("r1"))
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-json"),
                         [b'{"a": 1} {unknown} {{route}}'])
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-route"), [b"r1"])

    def test_precomputed(self):
        """
        A value without placeholders is encoded once, at construction.
        """
        headersPolicy = policy(request={"set": {"X-A": "plain"}, "add": {"X-B": "{host}"}})
        self.assertEqual(headersPolicy.request.set, ((b"X-A", b"plain"),))
        self.assertTrue(callable(headersPolicy.request.add[0][1]))

    def test_valueEncoding(self):
        """
        Values are sent as UTF-8, without leading or trailing blanks; inner
        tabs and spaces stay.
        """
        headersPolicy = policy(request={"set": {"X-Name": "  caf\u00e9\tau lait \t"}})
        request = FakeRequest()
        headersPolicy.onRequest(request, context())
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-name"),
                         [b"caf\xc3\xa9\tau lait"])

    def test_emptyPolicy(self):
        """
        A policy without edits in a direction does nothing there.
        """
        headersPolicy = policy()
        self.assertIsNone(headersPolicy.request)
        self.assertIsNone(headersPolicy.response)
        request = FakeRequest(headers=[(b"X-A", b"1")])
        headersPolicy.onRequest(request, context())
        headersPolicy.onResponse(request, context(), None)
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-a"), [b"1"])

    def test_connectionCannotDropSetHeaders(self):
        """
        A client naming a header in C{Connection} cannot make golb drop a
        header this policy set or added; the other names stay.
        """
        headersPolicy = policy(request={"set": {"X-Auth": "ok"}, "add": {"X-Tag": "t"}})
        request = FakeRequest(headers=[(b"Connection", b"X-AUTH, keep-alive, x-tag, X-Other")])
        headersPolicy.onRequest(request, context())
        self.assertEqual(request.requestHeaders.getRawHeaders(b"connection"),
                         [b"keep-alive, X-Other"])
        request = FakeRequest(headers=[(b"Connection", b"x-auth")])
        headersPolicy.onRequest(request, context())
        self.assertFalse(request.requestHeaders.hasHeader(b"connection"))
        request = FakeRequest(headers=[(b"Connection", b"close")])
        headersPolicy.onRequest(request, context())
        self.assertEqual(request.requestHeaders.getRawHeaders(b"connection"), [b"close"])


class HeadersProblemTests(SynchronousTestCase):
    """
    Edits that would break framing, be silently undone, or inject lines are
    refused when the policy is built, with a message naming the field.
    """

    def assertRefused(self, fragment, **ops):
        with self.assertRaises(ValueError) as caught:
            policy(**ops)
        self.assertIn(fragment, str(caught.exception))
        self.assertTrue(str(caught.exception).startswith("headers policy: "))

    def test_controlCharacters(self):
        """
        A value with CR, LF or NUL is refused.
        """
        for value in ("a\r\nX-Evil: 1", "a\nb", "a\x00"):
            self.assertRefused("request.set.X-A: the value contains a control character",
                               request={"set": {"X-A": value}})
        self.assertRefused("response.add.X-B: the value contains a control character",
                           response={"add": {"X-B": "a\rb"}})

    def test_framingHeaders(self):
        """
        Content-Length, Transfer-Encoding and Connection cannot be edited in
        either direction.
        """
        for name in ("Content-Length", "Transfer-Encoding", "connection", "Upgrade"):
            for kind in ("set", "add"):
                self.assertRefused(f"request.{kind}: {name} cannot be edited",
                                   request={kind: {name: "1"}})
                self.assertRefused(f"response.{kind}: {name} cannot be edited",
                                   response={kind: {name: "1"}})
            self.assertRefused(f"response.remove: {name} cannot be edited",
                               response={"remove": (name,)})

    def test_forwardingHeaders(self):
        """
        The request headers golb computes itself (X-Forwarded-*, Forwarded,
        Via) cannot be edited: the edit would be undone.
        """
        for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                     "Forwarded", "Via"):
            self.assertRefused(f"request.set: {name} cannot be edited: golb sets it",
                               request={"set": {name: "x"}})

    def test_host(self):
        """
        The request Host may be set, not added nor removed.
        """
        policy(request={"set": {"Host": "internal.example"}})
        self.assertRefused("request.add: Host cannot be edited: a request has exactly one Host",
                           request={"add": {"Host": "x"}})
        self.assertRefused("request.remove: host cannot be edited", request={"remove": ("host",)})

    def test_problemsListsEach(self):
        """
        L{headersProblems} lists every problem, one line each.
        """
        config = HeadersPolicy(
            request=HeaderOps(set={"Content-Length": "1", "X-A": "\n"}),
            response=HeaderOps(remove=("Transfer-Encoding",)),
        )
        self.assertEqual(len(headersProblems(config)), 3)
        self.assertEqual(headersProblems(HeadersPolicy()), [])


class HeadersEndToEndTests(ProxyTestCase):
    """
    The policy in a real golb, in front of a demo backend that echoes the
    request it received.
    """

    def start(self, policies, backendPort=None, routePolicies="[]"):
        if backendPort is None:
            port, backend = listenBackend(self)
            backendPort = port.getHost().port
        golb, listening, site = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{backendPort}"}}]
policies:
{policies}
routing_rules:
  - name: api
    match: {{path: "/*"}}
    target_pool: default
    policies: {routePolicies}
""")
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        self.port = listening.getHost().port
        return golb

    @defer.inlineCallbacks
    def test_requestEdits(self):
        """
        The backend receives the edited request headers: removed, set and
        added, with placeholders filled in.
        """
        self.start("""\
  - headers:
      request:
        remove: [X-Debug]
        set: {X-Env: prod, X-Real-IP: "{client_ip}"}
        add: {X-Tag: "{route}"}
""")
        data = yield rawRequest(
            self, self.port,
            b"GET /x HTTP/1.1\r\nHost: shop.example\r\nX-Debug: 1\r\nX-Env: dev\r\n"
            b"X-Tag: client\r\nConnection: close\r\n\r\n",
        )
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual(status, 200)
        self.assertNotIn(b"X-Debug", body)
        self.assertIn(b"\nX-Env: prod\n", body)
        self.assertNotIn(b"X-Env: dev", body)
        self.assertIn(b"\nX-Real-Ip: 127.0.0.1\n", body)
        self.assertIn(b"\nX-Tag: client\nX-Tag: api\n", body)

    @defer.inlineCallbacks
    def test_hopByHopStillDropped(self):
        """
        Request edits happen before golb builds the forwarded headers: a
        header the client names in C{Connection} is still dropped, unless
        the policy gave it a value.
        """
        self.start("""\
  - headers: {request: {set: {X-Auth: policy}}}
""")
        data = yield rawRequest(
            self, self.port,
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, X-Auth, close\r\n"
            b"X-Secret: 1\r\nX-Auth: client\r\n\r\n",
        )
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual(status, 200)
        self.assertNotIn(b"X-Secret", body)
        self.assertIn(b"\nX-Auth: policy\n", body)
        self.assertNotIn(b"X-Auth: client", body)

    @defer.inlineCallbacks
    def test_setHost(self):
        """
        C{set: {Host: ...}} changes the Host the backend receives, also with
        C{preserve_host: false}; X-Forwarded-Host and Forwarded keep the
        client's.
        """
        golb = self.start("""\
  - headers: {request: {set: {Host: internal.example}}}
""")
        for preserve in (True, False):
            if not preserve:
                from golb.config import parseConfig

                config = parseConfig(f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    preserve_host: false
    backends: [{{url: "http://127.0.0.1:{golb.pools['default'].backends[0].port}"}}]
policies:
  - headers: {{request: {{set: {{Host: internal.example}}}}}}
""", "test.yaml")
                golb.reload(config)
            data = yield rawRequest(
                self, self.port,
                b"GET /x HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
            )
            [(status, headers, body)] = parseResponses(data)
            self.assertIn(b"\nHost: internal.example\n", body)
            self.assertIn(b"\nX-Forwarded-Host: public.example\n", body)
            self.assertIn(b'host="public.example"', body)

    @defer.inlineCallbacks
    def test_responseEdits(self):
        """
        The client receives the edited backend response headers.
        """
        self.start("""\
  - headers:
      response:
        remove: [X-Demo-Backend]
        set: {Content-Type: text/x-golb}
        add: {X-Served-By: "{route}"}
""")
        response, body = yield self.get("/x")
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.headers.getRawHeaders(b"x-demo-backend"))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/x-golb"])
        self.assertEqual(response.headers.getRawHeaders(b"x-served-by"), [b"api"])
        self.assertIn(b"GET /x HTTP/1.1", body)

    @defer.inlineCallbacks
    def test_golbsOwnAnswer(self):
        """
        Response edits apply to golb's own answers too (here a 502 from a
        backend that is down), without hiding golb's error headers.
        """
        self.start("""\
  - headers: {response: {set: {X-Frame-Options: DENY}, remove: [X-Nothing]}}
""", backendPort=freePort())
        response, body = yield self.get("/x")
        self.assertEqual(response.code, 502)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"connect-failure"])

    @defer.inlineCallbacks
    def test_routeAfterGlobal(self):
        """
        A route's headers policy runs after the global one on requests and
        before it on responses.
        """
        self.start(
            "  - headers: {request: {set: {X-Layer: global}}, response: {set: {X-Layer: global}}}",
            routePolicies="[{headers: {request: {set: {X-Layer: route}},"
                          " response: {set: {X-Layer: route}}}}]",
        )
        response, body = yield self.get("/x")
        self.assertIn(b"\nX-Layer: route\n", body)
        self.assertEqual(response.headers.getRawHeaders(b"x-layer"), [b"global"])

    def test_refusedConfig(self):
        """
        A configuration editing a header golb owns is refused when it is
        loaded, with its line and the reason.
        """
        from golb.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            parseConfig("""\
listeners: [{name: web, address: "127.0.0.1:0"}]
backend_pools: [{name: default, backends: [{url: "http://127.0.0.1:1"}]}]
policies: [{headers: {response: {set: {Content-Length: "0"}}}}]
""", "test.yaml")
        [problem] = caught.exception.problems
        self.assertIn("test.yaml:3: policies[0].headers: response.set: Content-Length cannot be"
                      " edited", str(problem))
