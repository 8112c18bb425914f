"""
Policies end to end: golb run by twistd, as users run it.
"""

import treq
from twisted.internet import defer, reactor
from twisted.web.client import Agent, HTTPConnectionPool

from golb.test.support import freePort
from golb.test.test_e2e import runTwistd
from golb.test.test_policy_ratelimit import RedisTestCase


class SeedRateLimitTests(RedisTestCase):
    """
    The seed example's C{rate_limit: "100/minute"} on its route.
    """

    timeout = 60

    def setUp(self):
        RedisTestCase.setUp(self)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    def seed(self, listen, store=""):
        return f"""\
server:
  address: "127.0.0.1:{listen}"
backend_pools:
  - name: "web-servers"
    algorithm: "round_robin"
    backends:
      - url: "http://127.0.0.1:{self.backendPort}"
        weight: 1
    health_check:
      path: "/health"
      interval: "30s"
      timeout: "5s"
routing_rules:
  - match:
      host: "example.com"
      path: "/api/*"
    target_pool: "web-servers"
    policies:
      - rate_limit: {store or '"100/minute"'}
"""

    @defer.inlineCallbacks
    def get(self, listen):
        response = yield self.client.get(
            f"http://127.0.0.1:{listen}/api/x", headers={b"Host": [b"example.com"]})
        yield response.content()
        return response

    @defer.inlineCallbacks
    def test_seed(self):
        """
        From one client, 100 requests within a minute pass and the 101st gets
        429 with Retry-After and X-Golb-Error: rate-limited.
        """
        listen = freePort()
        protocol, _ = runTwistd(self, self.seed(listen))
        yield protocol.ready
        codes = []
        for _ in range(100):
            codes.append((yield self.get(listen)).code)
        self.assertEqual(codes, [200] * 100)
        response = yield self.get(listen)
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"rate-limited"])
        self.assertTrue(int(response.headers.getRawHeaders(b"retry-after")[0]) >= 1)

    @defer.inlineCallbacks
    def test_twoProcessesShareRedis(self):
        """
        Two golb processes with the same C{store: redis://} admit together no
        more than the configured rate: 20/minute over 60 requests spread
        across both admits exactly 20.
        """
        yield self.startRedis()
        store = f'{{rate: 20/minute, store: "{self.redisURL}"}}'
        listens = [freePort(), freePort()]
        processes = [runTwistd(self, self.seed(listen, store))[0] for listen in listens]
        for protocol in processes:
            yield protocol.ready
        codes = {listen: [] for listen in listens}
        for i in range(60):
            listen = listens[i % 2]
            codes[listen].append((yield self.get(listen)).code)
        admitted = sum(c.count(200) for c in codes.values())
        self.assertEqual(admitted, 20)
        self.assertEqual(codes[listens[0]].count(200), 10)
        self.assertEqual(codes[listens[1]].count(200), 10)
        self.assertEqual(sum(c.count(429) for c in codes.values()), 40)
