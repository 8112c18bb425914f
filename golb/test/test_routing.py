"""
Tests for L{golb.routing}.
"""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from golb.config import parseConfig
from golb.pool import BackendRegistry
from golb.runtime import Runtime

CONFIG = """\
server: {address: "127.0.0.1:0"}
backend_pools:
  - {name: api, backends: [{url: "http://127.0.0.1:1"}]}
  - {name: wild, backends: [{url: "http://127.0.0.1:2"}]}
  - {name: admin, backends: [{url: "http://127.0.0.1:3"}]}
  - {name: canary, backends: [{url: "http://127.0.0.1:4"}]}
  - {name: default, backends: [{url: "http://127.0.0.1:5"}]}
routing_rules:
  - name: api
    match: {host: example.com, path: "/api/*", method: [GET]}
    target_pool: api
  - name: wild
    match: {host: "*.example.com"}
    target_pool: wild
  - name: admin
    match: {path_prefix: /admin, client_ip: ["10.0.0.0/8"]}
    target_pool: admin
  - name: canary
    priority: 10
    match: {headers: {X-Env: "/^canary$/"}, query: {v: "2"}}
    target_pool: canary
"""


def request(path=b"/", host=b"example.com", method=b"GET", headers=None, client="1.2.3.4"):
    r = DummyRequest(path.lstrip(b"/").split(b"?")[0].split(b"/"))
    r.path = path.split(b"?")[0]
    r.uri = path
    r.method = method
    r.requestHeaders.setRawHeaders(b"host", [host])
    for name, value in (headers or {}).items():
        r.requestHeaders.setRawHeaders(name, [value])
    r.args = {}
    if b"?" in path:
        for pair in path.split(b"?", 1)[1].split(b"&"):
            key, _, value = pair.partition(b"=")
            r.args.setdefault(key, []).append(value)
    r.clientAddress = lambda: client
    return r


class RouterTests(SynchronousTestCase):
    """
    Tests for L{golb.routing.Router}.
    """

    def setUp(self):
        self.router = Runtime.build(parseConfig(CONFIG), BackendRegistry()).router

    def route(self, *args, **kwargs):
        return self.router.match(request(*args, **kwargs)).name

    def test_hostAndPath(self):
        """
        Exact host with a path glob and method reaches its pool; the port in
        Host is ignored; another method or path falls through.
        """
        self.assertEqual(self.route(b"/api/v1/x", host=b"Example.com:8080"), "api")
        self.assertEqual(self.route(b"/api/v1/x", method=b"POST"), "default")
        self.assertEqual(self.route(b"/apix"), "default")

    def test_wildcard(self):
        """
        C{*.example.com} matches subdomains at any depth, not the bare name.
        """
        self.assertEqual(self.route(b"/", host=b"a.example.com"), "wild")
        self.assertEqual(self.route(b"/", host=b"a.b.example.com"), "wild")
        self.assertEqual(self.route(b"/", host=b"example.com"), "default")
        self.assertEqual(self.route(b"/", host=b"badexample.com"), "default")

    def test_clientIP(self):
        """
        client_ip uses the real client address.
        """
        self.assertEqual(self.route(b"/admin/x", host=b"h", client="10.1.2.3"), "admin")
        self.assertEqual(self.route(b"/admin/x", host=b"h", client="11.1.2.3"), "default")

    def test_priority(self):
        """
        A higher priority rule wins over earlier ones; header regexes and query
        values must both hold.
        """
        self.assertEqual(
            self.route(b"/api/x?v=2", headers={b"x-env": b"canary"}), "canary")
        self.assertEqual(
            self.route(b"/api/x?v=3", headers={b"x-env": b"canary"}), "api")
        self.assertEqual(
            self.route(b"/api/x?v=2", headers={b"x-env": b"canary2"}), "api")

    def test_noDefault(self):
        """
        With several pools and none named default, an unmatched request has
        no route (404).
        """
        config = CONFIG.replace("name: default", "name: other")
        router = Runtime.build(parseConfig(config), BackendRegistry()).router
        self.assertIsNone(router.match(request(b"/nothing", host=b"h")))

    def test_manyHostRules(self):
        """
        With 3000 host rules the right one is found and only rules for that
        host (plus host-less ones) are examined.
        """
        rules = "".join(
            f"  - {{name: r{i}, match: {{host: h{i}.example.org}}, target_pool: api}}\n"
            for i in range(3000)
        )
        config = CONFIG.split("routing_rules:\n")[0] + "routing_rules:\n" + rules
        router = Runtime.build(parseConfig(config), BackendRegistry()).router
        self.assertEqual(router.match(request(b"/", host=b"h2876.example.org")).name, "r2876")
        self.assertEqual(list(router._candidates("h2876.example.org"))[0].name, "r2876")
        self.assertEqual(len(list(router._candidates("h2876.example.org"))), 1)
