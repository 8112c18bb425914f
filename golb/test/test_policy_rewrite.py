"""
Tests for L{golb.policies.rewrite}: the C{rewrite} and C{redirect}
policies, on their own and end to end through a real golb listener in front
of a demo backend that echoes the request line it received.
"""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from golb.config import RedirectPolicy, RewritePolicy
from golb.errors import GolbError
from golb.policies import Answer, Context, IPolicy
from golb.policies.rewrite import Redirect, Rewrite, redirectProblems, rewriteProblems
from golb.test.support import header, listenBackend, listenGolb, parseResponses, rawRequest
from golb.test.test_policy_headers import FakeRequest
from golb.test.test_proxy import ProxyTestCase


def rewritten(target, request=None, **config):
    """
    The target a L{Rewrite} built from C{config} forwards for C{target}.
    """
    policy = Rewrite(RewritePolicy(**config), None)
    context = Context("r", target)
    if request is None:
        request = FakeRequest(uri=target)
    result = policy.onRequest(request, context)
    assert result is None, result
    return context.target


class RewriteUnitTests(SynchronousTestCase):
    """
    Exact results of each rewrite step on tricky paths.
    """

    def assertRewrites(self, cases, **config):
        for target, expected in cases:
            self.assertEqual((target, rewritten(target, **config)), (target, expected))

    def test_interface(self):
        """
        L{Rewrite} provides L{IPolicy}.
        """
        self.assertTrue(verifyObject(IPolicy, Rewrite(RewritePolicy(strip_prefix="/a"), None)))

    def test_stripPrefix(self):
        """
        C{strip_prefix} removes whole leading path segments, leaves C{/}
        rather than an empty path, keeps trailing slashes and the query
        exactly, and does not strip a longer segment (C{/apix}), an encoded
        slash (C{/api%2Fx}), another case or a path not starting with it.
        """
        self.assertRewrites([
            (b"/api", b"/"),
            (b"/api/", b"/"),
            (b"/api/x", b"/x"),
            (b"/api/x/", b"/x/"),
            (b"/api/x/y%20z", b"/x/y%20z"),
            (b"/api?", b"/?"),
            (b"/api?a=1&b=/api/x%2F", b"/?a=1&b=/api/x%2F"),
            (b"/api/x?q=%E2%9C%93#", b"/x?q=%E2%9C%93#"),
            (b"/api//x", b"//x"),
            (b"/apix", b"/apix"),
            (b"/apix/y", b"/apix/y"),
            (b"/api%2Fx", b"/api%2Fx"),
            (b"/api%2fx", b"/api%2fx"),
            (b"/API/x", b"/API/x"),
            (b"//api/x", b"//api/x"),
            (b"/x/api", b"/x/api"),
            (b"/", b"/"),
            (b"*", b"*"),
        ], strip_prefix="/api")

    def test_stripPrefixTrailingSlash(self):
        """
        A configured prefix with a trailing slash strips the same way as
        without it; C{/} strips nothing.
        """
        self.assertRewrites([(b"/api", b"/"), (b"/api/x", b"/x"), (b"/apix", b"/apix")],
                            strip_prefix="/api/")
        self.assertRewrites([(b"/", b"/"), (b"/x/", b"/x/")], strip_prefix="/")

    def test_stripPrefixNonASCII(self):
        """
        A prefix with non-ASCII letters matches their UTF-8 percent-encoding,
        in either case of hex digit; an encoded slash in the prefix matches
        only itself.
        """
        self.assertRewrites([
            (b"/caf%C3%A9/x", b"/x"),
            (b"/caf%c3%a9/x", b"/x"),
            (b"/caf%C3%A9", b"/"),
            (b"/caf%C3%A9s/x", b"/caf%C3%A9s/x"),
            (b"/cafe/x", b"/cafe/x"),
        ], strip_prefix="/caf\u00e9")
        self.assertRewrites([
            (b"/a%2Fb/x", b"/x"),
            (b"/a%2fb/x", b"/x"),
            (b"/a/b/x", b"/a/b/x"),
        ], strip_prefix="/a%2Fb")

    def test_forwardedPrefix(self):
        """
        When C{strip_prefix} removed something the backend gets the raw
        prefix in C{X-Forwarded-Prefix}, replacing the client's; otherwise
        the policy leaves the header alone.
        """
        request = FakeRequest(headers=[(b"X-Forwarded-Prefix", b"/spoofed")])
        rewritten(b"/API/x", request, strip_prefix="/API")
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-forwarded-prefix"), [b"/API"])
        request = FakeRequest(headers=[(b"X-Forwarded-Prefix", b"/client")])
        rewritten(b"/other", request, strip_prefix="/api")
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-forwarded-prefix"),
                         [b"/client"])
        request = FakeRequest()
        rewritten(b"/caf%c3%a9/x", request, strip_prefix="/caf\u00e9")
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-forwarded-prefix"),
                         [b"/caf%c3%a9"])

    def test_forwardedPrefixAccumulates(self):
        """
        Two rewrite policies stripping in turn (global, then route) tell the
        backend the whole prefix removed.
        """
        request = FakeRequest(headers=[(b"X-Forwarded-Prefix", b"/spoofed")])
        context = Context("r", b"/api/v1/users?x")
        for prefix in ("/api", "/v1"):
            Rewrite(RewritePolicy(strip_prefix=prefix), None).onRequest(request, context)
        self.assertEqual(context.target, b"/users?x")
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-forwarded-prefix"),
                         [b"/api/v1"])

    def test_addPrefix(self):
        """
        C{add_prefix} prepends without doubling the slash between, also when
        written with a trailing slash; the root becomes the prefix with a
        trailing slash.
        """
        cases = [
            (b"/", b"/v1/"),
            (b"/x", b"/v1/x"),
            (b"/x/?q=/a", b"/v1/x/?q=/a"),
            (b"//x", b"/v1//x"),
            (b"/%2F", b"/v1/%2F"),
            (b"*", b"*"),
        ]
        self.assertRewrites(cases, add_prefix="/v1")
        self.assertRewrites(cases, add_prefix="/v1/")
        self.assertRewrites([(b"/x?y", b"/x?y")], add_prefix="/")

    def test_stripThenAdd(self):
        """
        C{strip_prefix} applies before C{add_prefix}.
        """
        self.assertRewrites([
            (b"/api/users?id=3", b"/v2/users?id=3"),
            (b"/api", b"/v2/"),
            (b"/apix", b"/v2/apix"),
        ], strip_prefix="/api", add_prefix="/v2")

    def test_replacePath(self):
        """
        C{replace_path} replaces the whole path and keeps the query; spaces
        and non-ASCII letters in it are percent-encoded as UTF-8, existing
        escapes kept, a lone C{%} encoded.
        """
        self.assertRewrites([
            (b"/anything/else?q=1&r=%2F", b"/new?q=1&r=%2F"),
            (b"/", b"/new"),
            (b"/a%2Fb", b"/new"),
        ], replace_path="/new")
        self.assertRewrites([(b"/x?a", b"/my%20caf%C3%A9/%41/100%25?a")],
                            replace_path="/my caf\u00e9/%41/100%")

    def test_regex(self):
        """
        C{regex} and C{replacement} rewrite the raw path (percent escapes as
        sent) with numbered or named groups; the query is never touched;
        no match leaves the path alone.
        """
        self.assertRewrites([
            (b"/users/42?users=1", b"/u/42?users=1"),
            (b"/users/42/", b"/u/42"),
            (b"/users/x", b"/users/x"),
        ], regex=r"^/users/(\d+)/?$", replacement=r"/u/\1")
        self.assertRewrites([(b"/a/b/c?a=a", b"/c/b/a?a=a")],
                            regex=r"^/(?P<x>\w)/(\w)/(?P<z>\w)$", replacement=r"/\g<z>/\2/\g<x>")
        self.assertRewrites([(b"/a%2Fb%2fc", b"/a/b%2fc")], regex="%2F", replacement="/")
        self.assertRewrites([(b"/a/a?a", b"/b/b?a")], regex="a", replacement="b")

    def test_regexResultPath(self):
        """
        A regex result is always a path: an empty or relative result gets a
        leading C{/}; spaces and non-ASCII letters of the replacement are
        percent-encoded.
        """
        self.assertRewrites([(b"/old?x", b"/?x")], regex="^/old$", replacement="")
        self.assertRewrites([(b"/old", b"/new")], regex="^/old", replacement="new")
        self.assertRewrites([(b"/old", b"/n%C3%BC%20w")], regex="^/old", replacement="/n\u00fc w")

    def test_order(self):
        """
        The steps apply in field order: strip, add, replace, regex.
        """
        self.assertRewrites([(b"/api/x?q", b"/fixed/done?q")],
                            strip_prefix="/api", add_prefix="/v1", replace_path="/fixed/path",
                            regex="path$", replacement="done")

    def test_problems(self):
        """
        Paths with C{?}, C{#} or control characters, and a replacement
        naming a group the regex lacks, are refused with the field named.
        """
        self.assertEqual(rewriteProblems(RewritePolicy(strip_prefix="/a")), [])
        for field in ("strip_prefix", "add_prefix", "replace_path"):
            for bad in ("/a?b=1", "/a#b", "/a\nb"):
                with self.assertRaises(ValueError) as caught:
                    Rewrite(RewritePolicy(**{field: bad}), None)
                self.assertIn(f"rewrite policy: {field}: ", str(caught.exception))
        for replacement in (r"/\2", r"/\g<nope>", "\\"):
            with self.assertRaises(ValueError) as caught:
                Rewrite(RewritePolicy(regex="^/(a)", replacement=replacement), None)
            self.assertIn("replacement: ", str(caught.exception))
        self.assertEqual(
            len(rewriteProblems(RewritePolicy(strip_prefix="/?", replace_path="/#"))), 2)


def redirect(to, code=308):
    return Redirect(RedirectPolicy(to=to, code=code), None)


def redirected(policy, target, **requestArgs):
    """
    The answer of C{policy} to a request for C{target}.
    """
    requestArgs.setdefault("uri", target)
    return policy.onRequest(FakeRequest(**requestArgs), Context("r", target))


class RedirectUnitTests(SynchronousTestCase):
    """
    The C{Location} and answer of a redirect.
    """

    def location(self, to, target, **requestArgs):
        answer = redirected(redirect(to), target, **requestArgs)
        self.assertIsInstance(answer, Answer)
        [location] = [value for name, value in answer.headers if name == b"Location"]
        return location

    def test_interface(self):
        """
        L{Redirect} provides L{IPolicy}.
        """
        self.assertTrue(verifyObject(IPolicy, redirect("/")))

    def test_answer(self):
        """
        The answer has the configured code, the C{Location}, and a short
        plain-text body naming it.
        """
        answer = redirected(redirect("https://{host}{uri}", 301), b"/a?b=c", host=b"ex.org")
        self.assertEqual(answer.status, 301)
        self.assertEqual(
            list(answer.headers),
            [(b"Location", b"https://ex.org/a?b=c"),
             (b"Content-Type", b"text/plain; charset=utf-8")],
        )
        self.assertEqual(answer.body, b"301 Moved Permanently: https://ex.org/a?b=c\n")

    def test_placeholders(self):
        """
        C{{scheme}}, C{{host}} (without port), C{{path}}, C{{query}} (with
        its C{?}, or nothing) and C{{uri}} expand from the request; the query
        is kept exactly.
        """
        to = "https://new.example/{scheme}/{host}{path}{query}|{uri}"
        self.assertEqual(
            self.location(to, b"/a/b?x=1&y=%20&z", host=b"Old.example:8080"),
            b"https://new.example/http/Old.example/a/b?x=1&y=%20&z|/a/b?x=1&y=%20&z",
        )
        self.assertEqual(self.location(to, b"/p", host=b"h", secure=True),
                         b"https://new.example/https/h/p|/p")
        self.assertEqual(self.location(to, b"/p?", host=b"h"),
                         b"https://new.example/http/h/p?|/p?")

    def test_host(self):
        """
        C{{host}} keeps the brackets of an IPv6 literal; without a Host it is
        the address of the listener reached.
        """
        self.assertEqual(self.location("https://{host}/", b"/", host=b"[::1]:8080"),
                         b"https://[::1]/")
        self.assertEqual(self.location("https://{host}/", b"/", host=None),
                         b"https://10.1.2.3/")

    def test_requestDataIsNotATemplate(self):
        """
        Braces and placeholder names in the request are copied, never
        expanded.
        """
        self.assertEqual(
            self.location("https://x{uri}", b"/{host}/%7Bpath%7D?q={query}", host=b"{path}"),
            b"https://x/{host}/%7Bpath%7D?q={query}",
        )

    def test_trickyPaths(self):
        """
        Encoded slashes, double slashes inside, trailing slashes and
        percent-encoded non-ASCII bytes are kept as sent; a leading run of
        slashes or backslashes becomes one slash, so a relative redirect can
        never point to another site (C{//evil.example}).
        """
        self.assertEqual(self.location("https://x{path}", b"/a%2Fb//c/%C3%A9/"),
                         b"https://x/a%2Fb//c/%C3%A9/")
        self.assertEqual(self.location("{path}", b"//evil.example/x"), b"/evil.example/x")
        self.assertEqual(self.location("{uri}", b"/\\evil.example?x"), b"/evil.example?x")
        self.assertEqual(self.location("{path}", b"/\\/\\evil.example"), b"/evil.example")

    def test_slashBeforePath(self):
        """
        A template with a slash right before C{{path}} or C{{uri}} does not
        double it; a leading C{//} makes a Location protocol-relative only
        when the template itself starts so.
        """
        self.assertEqual(self.location("https://x/{path}", b"/a/b/"), b"https://x/a/b/")
        self.assertEqual(self.location("https://x/v2/{uri}", b"//a?q"), b"https://x/v2/a?q")
        self.assertEqual(self.location("/{path}", b"/\\evil.example/"), b"/evil.example/")
        self.assertEqual(self.location("/{uri}", b"/?x", uri=b"/old/?x"), b"/?x")
        self.assertEqual(self.location("//{host}{uri}", b"/a?b", host=b"h:1"), b"//h/a?b")

    def test_usesRewrittenTarget(self):
        """
        The path is the one the chain has so far, after a rewrite placed
        before the redirect.
        """
        request = FakeRequest(uri=b"/old/page?x=1", host=b"h")
        context = Context("r", b"/old/page?x=1")
        Rewrite(RewritePolicy(strip_prefix="/old"), None).onRequest(request, context)
        answer = redirect("https://new.example{uri}").onRequest(request, context)
        self.assertIn((b"Location", b"https://new.example/page?x=1"), list(answer.headers))

    def test_literalEncoding(self):
        """
        Spaces and non-ASCII letters written in the template are
        percent-encoded as UTF-8.
        """
        self.assertEqual(self.location("/caf\u00e9 menu{query}", b"/x?a"),
                         b"/caf%C3%A9%20menu?a")

    def test_noLoop(self):
        """
        A request already at the place it would be redirected to is passed on
        rather than redirected forever (an http-to-https redirect on a route
        also served over https); another port or scheme is redirected.
        """
        policy = redirect("https://{host}{uri}")
        self.assertIsNone(redirected(policy, b"/a?b", host=b"ex.org", secure=True))
        self.assertIsInstance(redirected(policy, b"/a?b", host=b"ex.org"), Answer)
        self.assertIsInstance(redirected(policy, b"/a?b", host=b"ex.org:8443", secure=True),
                              Answer)
        self.assertIsNone(redirected(redirect("{uri}"), b"/a?b"))
        self.assertIsNone(redirected(redirect("/{path}"), b"/a"))
        self.assertIsInstance(redirected(redirect("/new{path}"), b"/a"), Answer)

    def test_badHost(self):
        """
        A Host that could change where the C{Location} points (a backslash,
        an C{@}, a slash - possible only in an absolute-form target) is
        answered 400 instead of redirected.
        """
        for host in (b"a\\b", b"user@evil", b"a/b"):
            error = redirected(redirect("https://{host}{uri}"), b"/x", host=host)
            self.assertIsInstance(error, GolbError)
            self.assertEqual(error.status, 400)
        self.assertIsInstance(redirected(redirect("/x{uri}"), b"/y", host=b"a\\b"), Answer)

    def test_unsafeLocation(self):
        """
        A Location with a control character, space or non-ASCII byte (which
        no client target holds, but an earlier policy might produce) is never
        sent.
        """
        for target in (b"/a\r\nSet-Cookie: x", b"/a b", b"/\xff"):
            error = redirected(redirect("https://x{uri}"), target)
            self.assertIsInstance(error, GolbError)

    def test_problems(self):
        """
        Unknown placeholders, stray braces and control characters in C{to}
        are refused with the reason.
        """
        self.assertEqual(redirectProblems(RedirectPolicy(to="https://{host}{uri}")), [])
        for to, fragment in [
            ("https://x{paht}", "unknown placeholder {paht}"),
            ("https://x{}", "unknown placeholder {}"),
            ("https://x/{path", "unmatched brace"),
            ("https://x/}", "unmatched brace"),
            ("https://x/\r\n", "control character"),
        ]:
            with self.assertRaises(ValueError) as caught:
                redirect(to)
            self.assertIn(fragment, str(caught.exception))


PLAIN = """\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port}"}}]
routing_rules:
  - name: api
    match: {{path: "/api*"}}
    target_pool: default
    policies: {policies}
"""


class RewriteEndToEndTests(ProxyTestCase):
    """
    What the backend is asked for, through a real golb.
    """

    def start(self, policies):
        port, backend = listenBackend(self)
        golb, listening, site = listenGolb(
            self, PLAIN.format(port=port.getHost().port, policies=policies))
        self.port = listening.getHost().port
        return backend

    @defer.inlineCallbacks
    def requestLine(self, target, host=b"a.example"):
        data = yield rawRequest(
            self, self.port,
            b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n",
        )
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual(status, 200, body)
        return body

    @defer.inlineCallbacks
    def test_stripPrefix(self):
        """
        The backend is asked for the path without the prefix, with the query
        exactly as sent, and is told the prefix in C{X-Forwarded-Prefix}.
        """
        self.start('[{rewrite: {strip_prefix: /api}}]')
        body = yield self.requestLine(b"/api/users/%2F%C3%A9/?q=/api/x&r=%2f")
        self.assertIn(b"GET /users/%2F%C3%A9/?q=/api/x&r=%2f HTTP/1.1", body)
        self.assertIn(b"\nX-Forwarded-Prefix: /api\n", body)
        body = yield self.requestLine(b"/api")
        self.assertIn(b"GET / HTTP/1.1", body)
        body = yield self.requestLine(b"/api%2Fusers")
        self.assertIn(b"GET /api%2Fusers HTTP/1.1", body)
        self.assertNotIn(b"X-Forwarded-Prefix", body)
        body = yield self.requestLine(b"/apix")
        self.assertIn(b"GET /apix HTTP/1.1", body)

    @defer.inlineCallbacks
    def test_absoluteForm(self):
        """
        A request with an absolute-form target is rewritten like its
        origin form.
        """
        self.start('[{rewrite: {strip_prefix: /api, add_prefix: /v2}}]')
        body = yield self.requestLine(b"http://b.example:8080/api/x?y=1")
        self.assertIn(b"GET /v2/x?y=1 HTTP/1.1", body)
        self.assertIn(b"\nHost: b.example:8080\n", body)

    @defer.inlineCallbacks
    def test_regex(self):
        """
        A regex rewrite reaches the backend, query untouched.
        """
        self.start(r"""[{rewrite: {regex: '^/api/users/(?P<id>\d+)$', """
                   r"""replacement: '/v1/user/\g<id>'}}]""")
        body = yield self.requestLine(b"/api/users/42?users=7")
        self.assertIn(b"GET /v1/user/42?users=7 HTTP/1.1", body)

    @defer.inlineCallbacks
    def test_replacePath(self):
        """
        C{replace_path} asks the backend for that path, with the client's
        query.
        """
        self.start("[{rewrite: {replace_path: /status}}]")
        body = yield self.requestLine(b"/api/anything/at/all?verbose=1")
        self.assertIn(b"GET /status?verbose=1 HTTP/1.1", body)


class RedirectEndToEndTests(ProxyTestCase):
    """
    What the client receives from a redirect, through a real golb.
    """

    def start(self, policies):
        port, backend = listenBackend(self)
        golb, listening, site = listenGolb(
            self, PLAIN.format(port=port.getHost().port, policies=policies))
        self.port = listening.getHost().port
        return backend

    @defer.inlineCallbacks
    def test_httpToHttps(self):
        """
        An http-to-https redirect keeps the host (without port), path and
        query, uses the configured code, and never reaches the backend.
        """
        backend = self.start('[{redirect: {to: "https://{host}{uri}", code: 301}}]')
        data = yield rawRequest(
            self, self.port,
            b"GET /api/a%2Fb/?x=1&y=%C3%A9 HTTP/1.1\r\nHost: shop.example:8080\r\n"
            b"Connection: close\r\n\r\n",
        )
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual(status, 301)
        self.assertEqual(header(headers, b"location"),
                         [b"https://shop.example/api/a%2Fb/?x=1&y=%C3%A9"])
        self.assertEqual(header(headers, b"content-type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(body, b"301 Moved Permanently: https://shop.example/api/a%2Fb/?x=1&y=%C3%A9\n")
        self.assertEqual(backend.requests, 0)

    @defer.inlineCallbacks
    def test_head(self):
        """
        A HEAD request gets the redirect without a body.
        """
        self.start('[{redirect: {to: "https://{host}{uri}", code: 307}}]')
        data = yield rawRequest(
            self, self.port,
            b"HEAD /api?x HTTP/1.1\r\nHost: h\r\n\r\nGET /api/next HTTP/1.1\r\nHost: h\r\n"
            b"Connection: close\r\n\r\n",
        )
        [(status, headers, body), (nextStatus, nextHeaders, nextBody)] = parseResponses(
            data, bodyless=(0,))
        self.assertEqual((status, body), (307, b""))
        self.assertEqual(header(headers, b"location"), [b"https://h/api?x"])
        self.assertEqual(nextStatus, 307)
        self.assertEqual(header(nextHeaders, b"location"), [b"https://h/api/next"])
        self.assertTrue(data.endswith(b"307 Temporary Redirect: https://h/api/next\n"))

    @defer.inlineCallbacks
    def test_absoluteForm(self):
        """
        An absolute-form request is redirected with the host and path of
        its target.
        """
        self.start('[{redirect: {to: "https://{host}{uri}"}}]')
        data = yield rawRequest(
            self, self.port,
            b"GET http://abs.example:80/api/x?q HTTP/1.1\r\nHost: abs.example\r\n"
            b"Connection: close\r\n\r\n",
        )
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual(status, 308)
        self.assertEqual(header(headers, b"location"), [b"https://abs.example/api/x?q"])

    @defer.inlineCallbacks
    def test_rewriteThenRedirect(self):
        """
        A redirect after a rewrite in the same chain sends the client to the
        rewritten path.
        """
        self.start('[{rewrite: {strip_prefix: /api}}, '
                   '{redirect: {to: "https://new.example/v2{uri}", code: 302}}]')
        data = yield rawRequest(
            self, self.port,
            b"GET /api/users?id=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual(status, 302)
        self.assertEqual(header(headers, b"location"), [b"https://new.example/v2/users?id=1"])
