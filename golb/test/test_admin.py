"""
Tests for L{golb.admin}: the admin site's JSON API, its pages, actions,
authentication, CSRF protection, audit trail and service.
"""

import base64
import hashlib
import json
import os
import re
from http.cookiejar import CookieJar, DefaultCookiePolicy

import bcrypt
import treq
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from golb._units import Address
from golb.admin import AdminService, AdminStartError, AuditLog, RateMeter
from golb.admin.site import allRoutes
from golb.app import Golb
from golb.config import loadConfig, parseConfig
from golb.health import ProbeResult
from golb.observe.metrics import metricsFor
from golb.test.support import listenGolb, rawConnect

SHA_SECRET = b"{SHA}" + base64.b64encode(hashlib.sha1(b"secret").digest())
TOKEN = b"tok-0123456789abcdef"


def basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + password)


def adminYAML(extra: str = "", pool: str = "", auth: str = "") -> str:
    """
    A configuration with pool C{web} (backends C{b1} and C{127.0.0.1:2}),
    pool C{other}, one routing rule and global policies.
    """
    text = f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: web
    backends:
      - {{url: "http://127.0.0.1:1", name: b1}}
      - {{url: "http://127.0.0.1:2", weight: 2}}
{pool}  - name: other
    backends: [{{url: "http://127.0.0.1:3"}}]
routing_rules:
  - name: api
    match: {{host: "*.example.com", path: "/api/*", headers: {{X-Env: canary}}}}
    target_pool: web
    policies: [{{rewrite: {{strip_prefix: /api}}}},
               {{headers: {{request: {{set: {{Authorization: "Bearer backend-s3cret",
                                               X-Env: canary}}}}}}}}]
  - name: split
    match: {{host: split.example.org}}
    split: [{{pool: web, weight: 3}}, {{pool: other, weight: 1}}]
policies:
  - rate_limit: {{rate: 10/second, store: "redis://golb:s3cret@127.0.0.1:6379/0"}}
monitoring:
  prometheus: {{enabled: false}}
  tracing: {{headers: {{Authorization: "Bearer collector-secret"}}}}
"""
    if auth:
        text += f"admin:\n  auth: {auth}\n"
    return text + extra


class AdminTestCase(TestCase):
    """
    A running admin service on an ephemeral loopback port, and a client.
    """

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        noCookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool), cookiejar=noCookies)
        self.readyFlag = True

    def files(self):
        """
        An htpasswd file (alice: SHA, bob: bcrypt) and a token file.

        @return: C{(usersPath, tokenPath)}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users.htpasswd")
        with open(users, "wb") as f:
            f.write(b"alice:" + SHA_SECRET + b"\n")
            f.write(b"bob:" + bcrypt.hashpw(b"hunter2", bcrypt.gensalt(4)) + b"\n")
        tokens = os.path.join(directory, "tokens")
        with open(tokens, "wb") as f:
            f.write(b"# admin tokens\n" + TOKEN + b"\n\nother-token\n")
        return users, tokens

    def start(self, yaml: str = None, golb=None, **kw):
        if golb is None:
            golb = Golb(parseConfig(yaml or adminYAML(), "test.yaml"), reactor=reactor)
            self.addCleanup(golb.close)
        self.golb = golb
        service = AdminService(golb, reactor, ready=lambda: self.readyFlag,
                               address=Address("127.0.0.1", 0), **kw)
        service.startService()
        self.addCleanup(service.stopService)
        self.service = service
        self.base = f"http://127.0.0.1:{service.port.getHost().port}"
        return service

    def startWithAuth(self):
        users, tokens = self.files()
        return self.start(adminYAML(auth=f"{{users_file: {users}, token_file: {tokens}}}"))

    @defer.inlineCallbacks
    def call(self, method, path, body=None, headers=None, **kw):
        """
        @return: C{(response, body bytes, decoded JSON or None)}.
        """
        allHeaders = {}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            allHeaders[b"Content-Type"] = [b"application/json"]
        for name, value in (headers or {}).items():
            allHeaders[name] = [value]
        kw.setdefault("allow_redirects", False)
        response = yield self.client.request(method, self.base + path, data=body,
                                             headers=allHeaders, **kw)
        content = yield response.content()
        data = None
        contentType = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if contentType.startswith(b"application/json"):
            data = json.loads(content)
        return response, content, data

    def backend(self, backendId, pool="web"):
        for backend in self.golb.runtime.pools[pool].backends:
            if backend.id == backendId:
                return backend


class ReadTests(AdminTestCase):
    """
    The JSON API shows pools, backends, routes, the configuration and the
    overview from live state.
    """

    @defer.inlineCallbacks
    def test_pools(self):
        """
        C{GET /api/v1/pools} lists every pool with its algorithm and totals.
        """
        self.start()
        self.backend("b1").requests = 7
        self.backend("b1").failures = 2
        response, _, data = yield self.call("GET", "/api/v1/pools")
        self.assertEqual(response.code, 200)
        self.assertEqual([pool["name"] for pool in data["pools"]], ["web", "other"])
        web = data["pools"][0]
        self.assertEqual((web["algorithm"], web["backends"], web["available"], web["requests"],
                          web["errors"]), ("round_robin", 2, 2, 7, 2))

    @defer.inlineCallbacks
    def test_pool(self):
        """
        C{GET /api/v1/pools/{pool}} shows each backend: id (its name, else
        host:port), url, state, health with its probe history, weight,
        in-flight requests, counters and latency.
        """
        self.start()
        b1 = self.backend("b1")
        b1.inFlight, b1.requests, b1.failures, b1.latency = 3, 10, 1, 0.025
        b1.health.history.append(ProbeResult(False, "connection refused", 0.001, 1000.0))
        b1.health.reason = "3 probes failed in a row"
        response, _, data = yield self.call("GET", "/api/v1/pools/web")
        self.assertEqual(response.code, 200)
        self.assertEqual(data["name"], "web")
        self.assertEqual(data["algorithm"], "round_robin")
        first, second = data["backends"]
        self.assertEqual(
            {key: first[key] for key in ("id", "url", "state", "healthy", "weight", "in_flight",
                                         "requests", "errors", "latency")},
            {"id": "b1", "url": "http://127.0.0.1:1", "state": "ready", "healthy": True,
             "weight": 1, "in_flight": 3, "requests": 10, "errors": 1, "latency": 0.025})
        self.assertEqual(first["health"]["reason"], "3 probes failed in a row")
        self.assertEqual(first["health"]["history"][0]["detail"], "connection refused")
        self.assertEqual((second["id"], second["weight"]), ("127.0.0.1:2", 2))
        response, _, data = yield self.call("GET", "/api/v1/pools/web/backends/127.0.0.1:2")
        self.assertEqual((response.code, data["id"]), (200, "127.0.0.1:2"))

    @defer.inlineCallbacks
    def test_unknownNames(self):
        """
        Unknown pools, backends and paths answer 404 with a JSON message
        that says what exists.
        """
        self.start()
        response, _, data = yield self.call("GET", "/api/v1/pools/nope")
        self.assertEqual((response.code, data["error"]), (404, "no-such-pool"))
        self.assertIn("'nope'", data["message"])
        response, _, data = yield self.call("PATCH", "/api/v1/pools/web/backends/b9",
                                            {"state": "drain"})
        self.assertEqual((response.code, data["error"]), (404, "no-such-backend"))
        self.assertIn("b1, 127.0.0.1:2", data["message"])
        response, _, data = yield self.call("GET", "/api/v1/nothing")
        self.assertEqual((response.code, data["error"]), (404, "not-found"))
        response, _, _ = yield self.call("GET", "/pools/nope", headers={b"Accept": b"text/html"})
        self.assertEqual(response.code, 404)

    @defer.inlineCallbacks
    def test_wrongMethod(self):
        """
        A method an endpoint does not take answers 405 with C{Allow}.
        """
        self.start()
        response, _, data = yield self.call("GET", "/api/v1/reload")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        self.assertEqual(data["error"], "method-not-allowed")
        response, _, _ = yield self.call("DELETE", "/api/v1/pools/web")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        response, _, _ = yield self.call("POST", "/healthz")
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_routes(self):
        """
        C{GET /api/v1/routes} is the route table in the order rules are
        tried, each with its match, target pool or split, and the kinds of
        the policies applied (global first).
        """
        self.start()
        response, _, data = yield self.call("GET", "/api/v1/routes")
        self.assertEqual(response.code, 200)
        api, split = data["routes"]
        self.assertEqual((api["name"], api["host"], api["pool"]), ("api", "*.example.com", "web"))
        self.assertEqual(api["match"]["path"], "/api/*")
        self.assertEqual(api["match"]["headers"], {"X-Env": "canary"})
        self.assertEqual(api["policies"], [{"kind": "rate_limit", "scope": "global"},
                                           {"kind": "rewrite", "scope": "route"},
                                           {"kind": "headers", "scope": "route"}])
        self.assertEqual(split["split"], [{"pool": "web", "weight": 3},
                                          {"pool": "other", "weight": 1}])
        self.assertIsNone(data["default"])

    @defer.inlineCallbacks
    def test_configRedacted(self):
        """
        C{GET /api/v1/config} shows the running configuration with secrets
        redacted: the password of a Redis URL, the tracing headers' values
        and credential headers set by headers policies.  Auth files are
        shown by path, never their contents.
        """
        users, tokens = self.files()
        self.start(adminYAML(auth=f"{{users_file: {users}, token_file: {tokens}}}"))
        response, body, data = yield self.call("GET", "/api/v1/config",
                                               headers={b"Authorization": b"Bearer " + TOKEN})
        self.assertEqual(response.code, 200)
        self.assertNotIn(b"s3cret", body)
        self.assertNotIn(b"collector-secret", body)
        self.assertNotIn(TOKEN, body)
        self.assertNotIn(SHA_SECRET, body)
        store = data["policies"][0]["rate_limit"]["store"]
        self.assertEqual(store, "redis://golb:<redacted>@127.0.0.1:6379/0")
        self.assertEqual(data["monitoring"]["tracing"]["headers"],
                         {"Authorization": "<redacted>"})
        self.assertNotIn(b"backend-s3cret", body)
        self.assertEqual(data["routing_rules"][0]["policies"][1]["headers"]["request"]["set"],
                         {"Authorization": "<redacted>", "X-Env": "canary"})
        self.assertEqual(data["admin"]["auth"]["users_file"], users)
        self.assertEqual(data["backend_pools"][0]["backends"][0]["name"], "b1")
        response, body, _ = yield self.call("GET", "/api/v1/config?format=yaml",
                                            headers={b"Authorization": b"Bearer " + TOKEN})
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/yaml; charset=utf-8"])
        self.assertIn(b"redis://golb:<redacted>@127.0.0.1:6379/0", body)
        self.assertNotIn(b"s3cret", body)
        response, _, data = yield self.call("GET", "/api/v1/config?format=xml",
                                            headers={b"Authorization": b"Bearer " + TOKEN})
        self.assertEqual((response.code, data["error"]), (400, "bad-format"))
        response, body, _ = yield self.call("GET", "/config",
                                            headers={b"Authorization": b"Bearer " + TOKEN})
        self.assertIn(b"redis://golb:&lt;redacted&gt;@127.0.0.1:6379/0", body)
        self.assertNotIn(b"s3cret", body)
        self.assertNotIn(b"collector-secret", body)

    @defer.inlineCallbacks
    def test_overview(self):
        """
        C{GET /api/v1/overview} has the listeners, pools, routes, totals,
        recent errors and changes, and whether golb is ready.
        """
        self.start()
        self.backend("b1").requests = 4
        response, _, data = yield self.call("GET", "/api/v1/overview")
        self.assertEqual(response.code, 200)
        self.assertEqual(data["listeners"][0]["name"], "web")
        self.assertEqual(data["listeners"][0]["address"], "127.0.0.1:0")
        self.assertEqual(data["totals"]["requests"], 4)
        self.assertEqual(data["totals"]["backends"], 3)
        self.assertEqual(data["routes"], 2)
        self.assertEqual([pool["name"] for pool in data["pools"]], ["web", "other"])
        self.assertEqual((data["ready"], data["audit"], data["errors"]["recent"]),
                         (True, [], []))

    @defer.inlineCallbacks
    def test_openapi(self):
        """
        C{/api/v1/openapi.json} is an OpenAPI 3 document describing every
        API endpoint the site answers.
        """
        self.start()
        response, _, data = yield self.call("GET", "/api/v1/openapi.json")
        self.assertEqual(response.code, 200)
        self.assertTrue(data["openapi"].startswith("3."))
        served = {re.sub(r"\{(\w+)\}", r"{\1}", path) for path in allRoutes()
                  if path.startswith("/api/v1/")}
        self.assertEqual(set(data["paths"]), served)
        self.assertEqual(sorted(data["paths"]["/api/v1/pools/{pool}/backends/{backend}"]),
                         ["get", "patch"])

    @defer.inlineCallbacks
    def test_health(self):
        """
        C{/healthz} answers 200 "ok" while the process runs; C{/readyz}
        answers 200 once golb serves its listeners and 503 before.  Neither
        needs credentials.
        """
        self.startWithAuth()
        response, body, _ = yield self.call("GET", "/healthz")
        self.assertEqual((response.code, body), (200, b"ok\n"))
        self.readyFlag = False
        response, body, _ = yield self.call("GET", "/readyz")
        self.assertEqual(response.code, 503)
        self.readyFlag = True
        response, body, _ = yield self.call("GET", "/readyz")
        self.assertEqual((response.code, body), (200, b"ready\n"))
        response, _, _ = yield self.call("HEAD", "/readyz")
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_metrics(self):
        """
        C{/metrics} serves golb's Prometheus metrics when it has them, and
        answers 404 when metrics are off.
        """
        self.start()
        response, _, data = yield self.call("GET", "/metrics")
        self.assertEqual((response.code, data["error"]), (404, "no-metrics"))
        metricsFor(self.golb)
        response, body, _ = yield self.call("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn(b'golb_backend_up{backend="b1",pool="web"} 1.0', body)


class ExplainTests(AdminTestCase):
    """
    C{GET /api/v1/explain} tells which route, policies and backends a
    request would get, without sending it or moving the balancer.
    """

    @defer.inlineCallbacks
    def test_explain(self):
        """
        The matching route, its policy kinds, every backend with whether it
        is a candidate (and why not), and the backend the next such request
        would get.
        """
        self.start()
        self.backend("b1").state = "drain"
        response, _, data = yield self.call(
            "GET", "/api/v1/explain?method=GET&host=a.example.com&path=/api/x%3Fq%3D1"
            "&header=X-Env:canary&client=10.1.2.3")
        self.assertEqual(response.code, 200)
        self.assertEqual(data["route"]["name"], "api")
        self.assertEqual(data["request"]["target"], "/api/x?q=1")
        self.assertEqual([p["kind"] for p in data["policies"]],
                         ["rate_limit", "rewrite", "headers"])
        [pool] = data["pools"]
        self.assertEqual(pool["candidates"], ["127.0.0.1:2"])
        self.assertEqual(pool["backends"][0]["excluded_because"], "admin state drain")
        self.assertEqual(pool["pick"], "127.0.0.1:2")
        self.assertEqual(data["outcome"], "forwarded to web/127.0.0.1:2")

    @defer.inlineCallbacks
    def test_noDisturbance(self):
        """
        Explaining does not advance round robin: the real picks that follow
        are those that would have come without it, and the first of them is
        the one explain named.
        """
        self.start()
        pool = self.golb.runtime.pools["web"]
        names = []
        for _ in range(3):
            response, _, data = yield self.call(
                "GET", "/api/v1/explain?host=a.example.com&path=/api/x&header=X-Env:canary")
            names.append(data["pools"][0]["pick"])
        self.assertEqual(len(set(names)), 1)
        picks = [pool.pick(None).id for _ in range(3)]
        self.assertEqual(picks, ["b1", "127.0.0.1:2", "127.0.0.1:2"])
        self.assertEqual(names[0], picks[0])

    @defer.inlineCallbacks
    def test_noRouteAndSplit(self):
        """
        A request no rule matches (and no default pool) explains as a 404;
        a split route lists each pool with its share.
        """
        self.start()
        _, _, data = yield self.call("GET", "/api/v1/explain?host=nowhere.test")
        self.assertIsNone(data["route"])
        self.assertIn("404", data["outcome"])
        _, _, data = yield self.call("GET", "/api/v1/explain?url=http://split.example.org/")
        self.assertEqual([(p["pool"], p["share"]) for p in data["pools"]],
                         [("web", 0.75), ("other", 0.25)])

    @defer.inlineCallbacks
    def test_badInput(self):
        """
        A malformed description answers 400 saying what is wrong.
        """
        self.start()
        for query, words in [("client=nope", "not an IP address"),
                             ("header=NoColon", "is not Name:Value"),
                             ("path=relative", "must start with /"),
                             ("colour=red", "unknown parameter(s) colour"),
                             ("method=G%20T", "is not an HTTP method")]:
            response, _, data = yield self.call("GET", "/api/v1/explain?" + query)
            self.assertEqual(response.code, 400, query)
            self.assertIn(words, data["message"])


class ActionTests(AdminTestCase):
    """
    C{PATCH /api/v1/pools/{pool}/backends/{id}} and C{POST /api/v1/reload}
    change the running golb, and every change is audited.
    """

    @defer.inlineCallbacks
    def test_drainAndReady(self):
        """
        Setting C{drain} takes the backend out of new picks; C{ready} puts it
        back and starts its slow-start ramp.  Both are in the audit trail.
        """
        self.start()
        b1 = self.backend("b1")
        response, _, data = yield self.call("PATCH", "/api/v1/pools/web/backends/b1",
                                            {"state": "drain"})
        self.assertEqual((response.code, data["state"], data["available"]),
                         (200, "drain", False))
        self.assertEqual(b1.state, "drain")
        self.assertEqual(self.golb.runtime.pools["web"].candidates(), [self.backend("127.0.0.1:2")])
        b1.readySince = 0.0
        response, _, data = yield self.call("PATCH", "/api/v1/pools/web/backends/b1",
                                            {"state": "ready"})
        self.assertEqual((response.code, b1.state), (200, "ready"))
        self.assertGreater(b1.readySince, 0)
        response, _, data = yield self.call("GET", "/api/v1/audit")
        self.assertEqual([(e["who"], e["action"], e["target"], e["detail"], e["via"])
                          for e in data["audit"]],
                         [("anonymous@127.0.0.1", "set-state", "web/b1", "drain -> ready", "api"),
                          ("anonymous@127.0.0.1", "set-state", "web/b1", "ready -> drain",
                           "api")])

    @defer.inlineCallbacks
    def test_weightUntilReload(self):
        """
        A weight set through the API applies at once and lasts until the
        next reload, which sets the configured weight again.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(adminYAML())
        golb = Golb(loadConfig(path), reactor=reactor)
        self.addCleanup(golb.close)
        self.start(golb=golb)
        response, _, data = yield self.call("PATCH", "/api/v1/pools/web/backends/b1",
                                            {"weight": 5, "state": "maint"})
        self.assertEqual((response.code, data["weight"], data["configured_weight"]),
                         (200, 5, 1))
        self.assertEqual((self.backend("b1").weight, self.backend("b1").state), (5, "maint"))
        response, _, data = yield self.call("POST", "/api/v1/reload", {})
        self.assertEqual((response.code, data["ok"], data["problems"]), (200, True, []))
        self.assertEqual(self.backend("b1").weight, 1)
        self.assertEqual(self.backend("b1").state, "maint")

    @defer.inlineCallbacks
    def test_badInput(self):
        """
        Bad bodies answer 400 with a message and change nothing: not JSON,
        not an object, unknown fields, an unknown state, a weight outside
        0..256 or not a whole number, nothing to change.
        """
        self.start()
        url = "/api/v1/pools/web/backends/b1"
        response, _, data = yield self.call("PATCH", url, b"{nope",
                                            headers={b"Content-Type": b"application/json"})
        self.assertEqual((response.code, data["error"]), (400, "bad-json"))
        self.assertIn("not valid JSON", data["message"])
        cases = [
            (["drain"], "bad-request", "expected a JSON object"),
            ({"state": "drain", "colour": 1}, "unknown-field", "'colour'"),
            ({"state": "sleeping"}, "bad-state", "ready, drain, maint"),
            ({"weight": 257}, "bad-weight", "0 to 256"),
            ({"weight": -1}, "bad-weight", "0 to 256"),
            ({"weight": 1.5}, "bad-weight", "whole number"),
            ({"weight": True}, "bad-weight", "whole number"),
            ({"weight": "3"}, "bad-weight", "whole number"),
            ({}, "bad-request", "nothing to change"),
        ]
        for body, code, words in cases:
            response, _, data = yield self.call("PATCH", url, body)
            self.assertEqual((response.code, data["error"]), (400, code), body)
            self.assertIn(words, data["message"])
        self.assertEqual((self.backend("b1").state, self.backend("b1").weight), ("ready", 1))
        _, _, data = yield self.call("GET", "/api/v1/audit")
        self.assertEqual(data["audit"], [])

    @defer.inlineCallbacks
    def test_reloadFailure(self):
        """
        A reload of a broken file answers 422 listing its problems, changes
        nothing, and is audited as failed.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(adminYAML())
        golb = Golb(loadConfig(path), reactor=reactor)
        self.addCleanup(golb.close)
        self.start(golb=golb)
        runtime = golb.runtime
        with open(path, "w") as f:
            f.write("backend_pools: [{name: web, backends: []}]\nbogus: 1\n")
        response, _, data = yield self.call("POST", "/api/v1/reload", {})
        self.assertEqual((response.code, data["ok"]), (422, False))
        self.assertTrue(any("bogus" in problem for problem in data["problems"]),
                        data["problems"])
        self.assertIs(golb.runtime, runtime)
        _, _, data = yield self.call("GET", "/api/v1/audit")
        [entry] = data["audit"]
        self.assertEqual((entry["action"], entry["ok"], entry["target"]), ("reload", False, path))
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_auditLogged(self):
        """
        Every change is logged in the C{golb.admin.audit} namespace with who
        made it, what and when.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.start()
        yield self.call("PATCH", "/api/v1/pools/other/backends/127.0.0.1:3", {"weight": 9})
        [event] = [e for e in events if e.get("log_namespace") == "golb.admin.audit"]
        self.assertEqual(event["audit"]["who"], "anonymous@127.0.0.1")
        self.assertEqual(event["audit"]["action"], "set-weight")
        self.assertEqual(event["audit"]["target"], "other/127.0.0.1:3")
        self.assertEqual(event["audit"]["detail"], "1 -> 9 (until the next reload)")
        self.assertGreater(event["audit"]["at"], 0)


class AuthTests(AdminTestCase):
    """
    With C{admin.auth}, everything but C{/healthz} and C{/readyz} needs
    HTTP Basic credentials of the users file or a bearer token.
    """

    @defer.inlineCallbacks
    def test_required(self):
        """
        Without credentials the answer is 401 with challenges for both
        schemes, on pages and API alike.
        """
        self.startWithAuth()
        for path in ("/api/v1/pools", "/", "/metrics", "/api/v1/nothing"):
            response, _, data = yield self.call("GET", path)
            self.assertEqual(response.code, 401, path)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Basic realm="golb admin", charset="UTF-8"',
                              b'Bearer realm="golb admin"'])
            self.assertEqual(data["error"], "unauthorized")
        response, _, _ = yield self.call("PATCH", "/api/v1/pools/web/backends/b1",
                                         {"state": "drain"})
        self.assertEqual(response.code, 401)
        self.assertEqual(self.backend("b1").state, "ready")

    @defer.inlineCallbacks
    def test_basic(self):
        """
        Basic credentials of the users file (SHA or bcrypt) are let in;
        wrong passwords and unknown users get 401; changes are audited under
        the user's name.
        """
        self.startWithAuth()
        for user, password, status in [(b"alice", b"secret", 200), (b"alice", b"wrong", 401),
                                       (b"bob", b"hunter2", 200), (b"bob", b"hunter3", 401),
                                       (b"carol", b"secret", 401)]:
            response, _, _ = yield self.call(
                "GET", "/api/v1/pools", headers={b"Authorization": basic(user, password)})
            self.assertEqual(response.code, status, (user, password))
        response, _, _ = yield self.call("PATCH", "/api/v1/pools/web/backends/b1",
                                         {"state": "drain"},
                                         headers={b"Authorization": basic(b"bob", b"hunter2")})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.service.audit.recent()[0]["who"], "bob")

    @defer.inlineCallbacks
    def test_bearer(self):
        """
        A token of the token file is let in and audited by its fingerprint
        (never the token); any other token gets 401.
        """
        self.startWithAuth()
        response, _, _ = yield self.call("GET", "/api/v1/pools",
                                         headers={b"Authorization": b"Bearer nope"})
        self.assertEqual(response.code, 401)
        response, _, _ = yield self.call("GET", "/api/v1/pools",
                                         headers={b"Authorization": b"Bearer " + TOKEN[:-1]})
        self.assertEqual(response.code, 401)
        response, _, data = yield self.call("POST", "/api/v1/reload",
                                            headers={b"Authorization": b"Bearer " + TOKEN})
        self.assertEqual(response.code, 422)  # test.yaml does not exist: nothing reloads
        who = self.service.audit.recent()[0]["who"]
        self.assertEqual(who, "token:" + hashlib.sha256(TOKEN).hexdigest()[:12])
        self.assertNotIn(TOKEN.decode(), json.dumps(self.service.audit.recent()))
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_reloadChangesAuth(self):
        """
        A reload that adds (or changes) C{admin.auth} applies to the running
        admin site at once.
        """
        users, tokens = self.files()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(adminYAML())
        golb = Golb(loadConfig(path), reactor=reactor)
        self.addCleanup(golb.close)
        self.start(golb=golb)
        response, _, _ = yield self.call("GET", "/api/v1/pools")
        self.assertEqual(response.code, 200)
        with open(path, "w") as f:
            f.write(adminYAML(auth=f"{{token_file: {tokens}}}"))
        response, _, data = yield self.call("POST", "/api/v1/reload", {})
        self.assertEqual((response.code, data["ok"]), (200, True))
        response, _, _ = yield self.call("GET", "/api/v1/pools")
        self.assertEqual(response.code, 401)
        response, _, _ = yield self.call("GET", "/api/v1/pools",
                                         headers={b"Authorization": b"Bearer " + TOKEN})
        self.assertEqual(response.code, 200)

    def test_refusesOpenOffLoopback(self):
        """
        The service refuses to start on an address other than loopback
        without authentication.
        """
        golb = Golb(parseConfig(adminYAML(), "test.yaml"), reactor=reactor)
        self.addCleanup(golb.close)
        service = AdminService(golb, reactor, address=Address("0.0.0.0", 0))
        error = self.assertRaises(AdminStartError, service.startService)
        self.assertIn("not loopback", str(error))
        self.assertFalse(service.running)
        self.assertIsNone(service.port)

    @defer.inlineCallbacks
    def test_openAnswersLoopbackHostsOnly(self):
        """
        An open (loopback, no auth) site answers only requests whose Host
        names this machine, so a web page cannot reach it by DNS rebinding.
        """
        self.start()
        response, _, data = yield self.call("GET", "/api/v1/pools",
                                            headers={b"Host": b"evil.example:8081"})
        self.assertEqual((response.code, data["error"]), (403, "forbidden-host"))
        for host in (b"localhost:8081", b"[::1]:8081", b"127.0.0.1"):
            response, _, _ = yield self.call("GET", "/api/v1/pools", headers={b"Host": host})
            self.assertEqual(response.code, 200, host)


def formToken(page: bytes) -> bytes:
    return re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1)


class CSRFTests(AdminTestCase):
    """
    Changes made with ambient credentials must come from the admin pages
    (a form with the CSRF token of its cookie) or be JSON, and never from
    another origin.
    """

    @defer.inlineCallbacks
    def page(self, path="/pools/web", headers=None):
        response, body, _ = yield self.call("GET", path, headers=headers)
        self.assertEqual(response.code, 200)
        [cookie] = response.headers.getRawHeaders(b"set-cookie")
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        value = cookie.split(b";")[0].split(b"=", 1)[1]
        self.assertEqual(formToken(body), value)
        return value

    @defer.inlineCallbacks
    def post(self, path, fields, cookie=None, origin=None, referer=None, headers=None):
        allHeaders = {b"Content-Type": b"application/x-www-form-urlencoded",
                      b"Accept": b"text/html"}
        if cookie is not None:
            allHeaders[b"Cookie"] = b"golb_admin_csrf=" + cookie
        if origin is not None:
            allHeaders[b"Origin"] = origin
        if referer is not None:
            allHeaders[b"Referer"] = referer
        allHeaders.update(headers or {})
        from urllib.parse import urlencode

        result = yield self.call("POST", path, urlencode(fields).encode(), headers=allHeaders)
        return result

    @defer.inlineCallbacks
    def test_formWithToken(self):
        """
        A form POST from the pool page, with its token and cookie and the
        site's own origin, drains the backend and redirects back (303); the
        change is audited as made from the page.
        """
        self.start()
        token = yield self.page()
        origin = self.base.encode()
        response, _, _ = yield self.post("/pools/web/backends/b1",
                                         {"state": "drain", "csrf_token": token},
                                         cookie=token, origin=origin)
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/pools/web"])
        self.assertEqual(self.backend("b1").state, "drain")
        response, _, _ = yield self.post("/pools/web/backends/127.0.0.1%3A2",
                                         {"weight": "7", "csrf_token": token}, cookie=token,
                                         referer=self.base.encode() + b"/pools/web")
        self.assertEqual(response.code, 303)
        self.assertEqual(self.backend("127.0.0.1:2").weight, 7)
        self.assertEqual([(e["via"], e["action"]) for e in self.service.audit.recent()],
                         [("page", "set-weight"), ("page", "set-state")])

    @defer.inlineCallbacks
    def test_formWithoutToken(self):
        """
        A form POST without the token, with a token but no cookie, with a
        token that is not its cookie's, or with a forged token, is refused
        with 403 and changes nothing.
        """
        self.start()
        token = yield self.page()
        other = yield self.page("/")
        forged = b"0" * 32 + b"." + b"1" * 32
        for fields, cookie in [({"state": "drain"}, token),
                               ({"state": "drain", "csrf_token": token}, None),
                               ({"state": "drain", "csrf_token": other}, token),
                               ({"state": "drain", "csrf_token": forged}, forged)]:
            response, body, _ = yield self.post("/pools/web/backends/b1", fields, cookie=cookie,
                                                origin=self.base.encode())
            self.assertEqual(response.code, 403, (fields, cookie))
            self.assertIn(b"CSRF check failed", body)
        self.assertEqual(self.backend("b1").state, "ready")

    @defer.inlineCallbacks
    def test_foreignOrigin(self):
        """
        A change from another origin is refused with 403 even with a valid
        token, and so is JSON sent from another origin.
        """
        self.start()
        token = yield self.page()
        for origin, referer in [(b"http://evil.example", None), (b"null", None),
                                (None, b"http://evil.example/page")]:
            response, body, _ = yield self.post("/pools/web/backends/b1",
                                                {"state": "drain", "csrf_token": token},
                                                cookie=token, origin=origin, referer=referer)
            self.assertEqual(response.code, 403)
            self.assertIn(b"cross-origin request refused", body)
        response, _, data = yield self.call("PATCH", "/api/v1/pools/web/backends/b1",
                                            {"state": "drain"},
                                            headers={b"Origin": b"http://evil.example"})
        self.assertEqual((response.code, data["error"]), (403, "csrf"))
        self.assertEqual(self.backend("b1").state, "ready")

    @defer.inlineCallbacks
    def test_apiNeedsJSON(self):
        """
        A reload POSTed as a plain (cross-site-able) request with ambient
        credentials is refused; as JSON, or with a bearer token, it is
        accepted.
        """
        users, tokens = self.files()
        self.start(adminYAML(auth=f"{{users_file: {users}, token_file: {tokens}}}"))
        alice = basic(b"alice", b"secret")
        response, _, data = yield self.call("POST", "/api/v1/reload", b"",
                                            headers={b"Authorization": alice,
                                                     b"Content-Type": b"text/plain"})
        self.assertEqual((response.code, data["error"]), (403, "csrf"))
        self.assertEqual(self.golb.reloads, 0)
        response, _, data = yield self.call("POST", "/api/v1/reload", {},
                                            headers={b"Authorization": alice})
        self.assertEqual(response.code, 422)
        response, _, data = yield self.call("POST", "/api/v1/reload",
                                            headers={b"Authorization": b"Bearer " + TOKEN})
        self.assertEqual(response.code, 422)
        self.assertEqual(self.golb.reloads, 2)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_pageHeaders(self):
        """
        Pages forbid framing and inline code other than their own (a CSP
        nonce); their forms carry the CSRF token; no external asset is
        referenced.
        """
        self.start()
        response, body, _ = yield self.call("GET", "/pools/web")
        [csp] = response.headers.getRawHeaders(b"content-security-policy")
        nonce = re.search(rb"'nonce-([0-9a-f]+)'", csp).group(1)
        self.assertIn(b"frame-ancestors 'none'", csp)
        self.assertIn(b'<script nonce="' + nonce + b'">', body)
        self.assertIn(b'<style nonce="' + nonce + b'">', body)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
        self.assertNotRegex(body, rb'(src|href)="(https?:)?//')
        self.assertEqual(len(re.findall(rb'name="csrf_token"', body)), 4)


class PageTests(AdminTestCase):
    """
    The HTML pages show live state and link to each other.
    """

    @defer.inlineCallbacks
    def test_pages(self):
        """
        The overview lists listeners and pools (linking to their pages); the
        pool page lists backends with their state, health, probes, weight and
        actions; the route table and recent errors have pages.
        """
        self.start()
        self.backend("b1").state = "maint"
        self.backend("b1").health.history.append(ProbeResult(True, "HTTP 200", 0.002, 1.0))
        _, body, _ = yield self.call("GET", "/")
        self.assertIn(b'<a href="/pools/web">web</a>', body)
        self.assertIn(b'<dt>ready</dt><dd><span data-path="[&quot;ready&quot;]"'
                      b' data-format="bool">yes</span></dd>', body)
        self.assertIn(b'data-poll="/api/v1/overview"', body)
        _, body, _ = yield self.call("GET", "/pools/web")
        self.assertIn(b'data-poll="/api/v1/pools/web"', body)
        self.assertIn(b'class="state state-maint"', body)
        self.assertIn(b'<strong>127.0.0.1:2</strong>', body)
        self.assertIn(b'class="probe probe-ok" title="00:00:01 HTTP 200 (2.0 ms)"', body)
        self.assertIn(b'action="/pools/web/backends/127.0.0.1%3A2"', body)
        _, body, _ = yield self.call("GET", "/routes")
        self.assertIn(b"*.example.com", body)
        self.assertIn(b"rate_limit, rewrite", body)
        _, body, _ = yield self.call("GET", "/errors")
        self.assertIn(b'data-poll="/api/v1/errors"', body)


class ErrorLogTests(AdminTestCase):
    """
    The admin site keeps the recent errors golb answered itself.
    """

    @defer.inlineCallbacks
    def test_recorded(self):
        """
        A request golb answers with an error of its own (no route) shows in
        C{GET /api/v1/errors} and the overview, newest first, with its
        error code, status, method, host and target.
        """
        golb, port, _ = listenGolb(self, adminYAML())
        self.start(golb=golb)
        response = yield self.client.get(f"http://127.0.0.1:{port.getHost().port}/x?y=1",
                                         headers={b"Host": [b"nowhere.test"]})
        yield response.content()
        self.assertEqual(response.code, 404)
        _, _, data = yield self.call("GET", "/api/v1/errors")
        [entry] = data["errors"]
        self.assertEqual((entry["error"], entry["status"], entry["method"], entry["host"],
                          entry["target"]), ("no-route", 404, "GET", "nowhere.test", "/x?y=1"))
        self.assertEqual(data["by_code"], {"no-route": 1})
        _, _, data = yield self.call("GET", "/api/v1/overview")
        self.assertEqual(data["totals"]["golb_errors"], 1)
        self.assertEqual(data["errors"]["recent"][0]["error"], "no-route")


class ServiceTests(AdminTestCase):
    """
    The C{admin} service listens while running and closes everything when
    stopped.
    """

    @defer.inlineCallbacks
    def test_stop(self):
        """
        Stopping closes the port and open connections and unplugs the error
        recorder from golb's observatory.
        """
        service = self.start()
        self.assertEqual(service.name, "admin")
        self.assertIn(service.errors, self.golb.observatory.observers)
        self.assertEqual(len(service.rates.samples), 1)
        client = yield rawConnect(self, service.port.getHost().port)
        client.transport.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        yield client.waitForBytes(b"ok\n")
        yield service.stopService()
        yield client.lost
        self.assertIsNone(service.port)
        self.assertNotIn(service.errors, self.golb.observatory.observers)
        self.assertEqual(self.golb.reloadObservers, [])

    def test_disabled(self):
        """
        With C{enabled: false} nothing listens.
        """
        golb = Golb(parseConfig(adminYAML("admin: {enabled: false}\n"), "t.yaml"),
                    reactor=reactor)
        self.addCleanup(golb.close)
        service = AdminService(golb, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsNone(service.port)
        self.assertFalse(golb.observatory.active)

    @defer.inlineCallbacks
    def test_readyFromGolb(self):
        """
        C{/readyz} answers 200 while C{golb.ready} (set by the service tree
        once it has started, cleared when it starts shutting down), 503
        otherwise; C{/healthz} answers 200 either way.
        """
        golb = Golb(parseConfig(adminYAML(), "t.yaml"), reactor=reactor)
        self.addCleanup(golb.close)
        service = AdminService(golb, reactor, address=Address("127.0.0.1", 0))
        self.assertFalse(service.isReady())
        service.startService()
        self.addCleanup(service.stopService)
        self.base = f"http://127.0.0.1:{service.port.getHost().port}"
        response, _, _ = yield self.call("GET", "/readyz")
        self.assertEqual(response.code, 503)
        golb.ready = True
        response, _, _ = yield self.call("GET", "/readyz")
        self.assertEqual(response.code, 200)
        golb.ready = False
        response, _, _ = yield self.call("GET", "/readyz")
        self.assertEqual(response.code, 503)
        response, _, _ = yield self.call("GET", "/healthz")
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_readyAfterFirstProbes(self):
        """
        With health checks, C{/readyz} waits for every backend's first
        probe; then it stays 200 even when a probe fails later.
        """
        from golb.health import ProbeResult

        golb = Golb(parseConfig(adminYAML(pool="    health_check: {interval: 10s}\n"), "t.yaml"),
                    reactor=reactor, upstreamFactory=lambda b, p, c: None)
        self.addCleanup(golb.close)
        service = AdminService(golb, reactor, address=Address("127.0.0.1", 0))
        service.startService()
        self.addCleanup(service.stopService)
        self.base = f"http://127.0.0.1:{service.port.getHost().port}"
        golb.ready = True
        probed = [b for b in golb.pools["web"].backends]
        self.assertTrue(probed)
        response, _, _ = yield self.call("GET", "/readyz")
        self.assertEqual(response.code, 503)
        for backend in probed[:-1]:
            backend.health.lastResult = ProbeResult(True, "HTTP 200")
        response, _, _ = yield self.call("GET", "/readyz")
        self.assertEqual(response.code, 503)
        probed[-1].health.lastResult = ProbeResult(False, "HTTP 500")
        response, _, _ = yield self.call("GET", "/readyz")
        self.assertEqual(response.code, 200)

    def test_portTaken(self):
        """
        A port that cannot be had fails the start.
        """
        from twisted.internet.error import CannotListenError

        taken = reactor.listenTCP(0, Site(None), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        golb = Golb(parseConfig(adminYAML(), "t.yaml"), reactor=reactor)
        self.addCleanup(golb.close)
        service = AdminService(golb, reactor,
                               address=Address("127.0.0.1", taken.getHost().port))
        self.assertRaises(CannotListenError, service.startService)
        self.assertFalse(service.running)
        self.assertFalse(golb.observatory.active)


class RateMeterTests(SynchronousTestCase):
    """
    L{RateMeter} computes request rates from counter samples.
    """

    def test_rates(self):
        """
        The rate is the increase over the sampled window (at most 10 s);
        unknown until two samples exist.
        """
        clock = task.Clock()
        golb = Golb(parseConfig(adminYAML(), "t.yaml"), reactor=clock,
                    upstreamFactory=lambda backend, pool, current: None)
        meter = RateMeter(golb, clock)
        b1 = golb.runtime.pools["web"].backends[0]
        meter.sample()
        self.assertEqual(meter.rates(), (None, None))
        self.assertIsNone(meter.backendRate("web", "b1"))
        for _ in range(20):
            clock.advance(1)
            b1.requests += 5
            b1.failures += 1
            meter.sample()
        self.assertEqual(meter.rates(), (5.0, 1.0))
        self.assertEqual(meter.rates("other"), (0.0, 0.0))
        self.assertEqual(meter.backendRate("web", "b1"), 5.0)
        self.assertLessEqual(len(meter.samples), 12)


class AuditLogTests(SynchronousTestCase):
    """
    L{AuditLog} keeps a bounded trail, newest first.
    """

    def test_bounded(self):
        """
        Only the last C{size} entries are kept.
        """
        clock = task.Clock()
        audit = AuditLog(clock, size=3)
        for number in range(5):
            clock.advance(1)
            audit.record("alice", "set-weight", "web/b1", f"-> {number}")
        self.assertEqual([entry["detail"] for entry in audit.recent()],
                         ["-> 4", "-> 3", "-> 2"])
        self.assertEqual(audit.recent(1)[0]["at"], 5)
