"""
End-to-end routing tests: C{twistd -n golb} as a subprocess in front of real
loopback backends, each request identified by the backend that answered.
"""

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from golb.test.support import freePort, listenBackend
from golb.test.test_e2e import runTwistd


def _pools(testCase, names, poolNames=None):
    """
    One DemoBackend per name; the YAML for one pool per backend (named from
    C{poolNames}, default the backend names).
    """
    lines = []
    for name, poolName in zip(names, poolNames or names):
        port, _ = listenBackend(testCase, name=name)
        lines.append(
            f'  - {{name: "{poolName}", backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]}}'
        )
    return "\n".join(lines)


class EndToEndRoutingTests(TestCase):
    """
    Routing rules applied by golb run under twistd.
    """

    timeout = 30

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 20
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    @defer.inlineCallbacks
    def backendFor(self, url, method="GET", headers=None):
        response = yield self.client.request(method, url, headers=headers)
        body = yield response.content()
        self.assertEqual(response.code, 200, (url, method, body))
        return response.headers.getRawHeaders(b"x-demo-backend")[0].decode("ascii")

    @defer.inlineCallbacks
    def test_eachConditionReachesItsPool(self):
        """
        Host, path glob, header, method and query conditions each send the
        request to their pool; anything else goes to the pool named default.
        """
        listen = freePort()
        names = ["p-host", "p-path", "p-header", "p-method", "p-query", "p-default"]
        config = f"""\
server:
  address: "127.0.0.1:{listen}"
backend_pools:
{_pools(self, names, names[:-1] + ["default"])}
routing_rules:
  - {{name: host, match: {{host: "api.example.com"}}, target_pool: p-host}}
  - {{name: path, match: {{path: "/static/*"}}, target_pool: p-path}}
  - {{name: header, match: {{headers: {{X-Env: canary}}}}, target_pool: p-header}}
  - {{name: method, match: {{method: [DELETE]}}, target_pool: p-method}}
  - {{name: query, match: {{query: {{v: "2"}}}}, target_pool: p-query}}
"""
        protocol, _ = runTwistd(self, config)
        yield protocol.ready
        base = f"http://127.0.0.1:{listen}"
        cases = [
            ("p-host", f"{base}/anything", "GET", {b"Host": [b"api.example.com"]}),
            ("p-host", f"{base}/x", "GET", {b"Host": [b"API.example.com:8080"]}),
            ("p-path", f"{base}/static/app.js", "GET", None),
            ("p-header", f"{base}/page", "GET", {b"X-Env": [b"canary"]}),
            ("p-method", f"{base}/page", "DELETE", None),
            ("p-query", f"{base}/page?v=2", "GET", None),
            ("p-default", f"{base}/page", "GET", None),
            ("p-default", f"{base}/static", "GET", None),
            ("p-default", f"{base}/page?v=3", "GET", {b"X-Env": [b"stable"]}),
            ("p-default", f"{base}/page", "GET", {b"Host": [b"example.com"]}),
        ]
        for expected, url, method, headers in cases:
            got = yield self.backendFor(url, method, headers)
            self.assertEqual(got, expected, (url, method, headers))

    @defer.inlineCallbacks
    def test_weightedSplit(self):
        """
        A 90/10 split sends about 10% (within 5 points) of 2000 requests to
        the canary pool and the rest to the stable pool.
        """
        listen = freePort()
        config = f"""\
server:
  address: "127.0.0.1:{listen}"
backend_pools:
{_pools(self, ["stable", "canary"])}
routing_rules:
  - name: split
    split:
      - {{pool: stable, weight: 90}}
      - {{pool: canary, weight: 10}}
"""
        protocol, _ = runTwistd(self, config)
        yield protocol.ready
        semaphore = defer.DeferredSemaphore(20)
        url = f"http://127.0.0.1:{listen}/split"
        results = yield defer.gatherResults(
            [semaphore.run(self.backendFor, url) for _ in range(2000)], consumeErrors=True
        )
        counts = {name: results.count(name) for name in set(results)}
        self.assertEqual(set(counts), {"stable", "canary"})
        self.assertEqual(sum(counts.values()), 2000)
        fraction = counts["canary"] / 2000
        self.assertTrue(0.05 <= fraction <= 0.15, counts)
