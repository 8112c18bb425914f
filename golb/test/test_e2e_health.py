"""
Health checking end to end: real backends behind a real golb listener with
the L{HealthService} running on the real reactor.
"""

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from golb.health import HealthService
from golb.test.support import listenBackend, listenGolb, waitUntil


class Switchable(Resource):
    """
    A backend that names itself; C{/health} answers C{healthStatus}, every
    other path C{trafficStatus}.
    """

    isLeaf = True

    def __init__(self, name):
        Resource.__init__(self)
        self.name = name
        self.healthStatus = 200
        self.trafficStatus = 200
        self.traffic = 0

    def render(self, request):
        if request.path == b"/health":
            request.setResponseCode(self.healthStatus)
            return b"ok" if self.healthStatus == 200 else b"going away"
        self.traffic += 1
        request.setResponseCode(self.trafficStatus)
        request.setHeader(b"x-backend", self.name.encode())
        return self.name.encode()


class HealthEndToEndTests(TestCase):
    INTERVAL = 0.25

    def setUp(self):
        self.httpPool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.httpPool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.httpPool))
        self.backends = []
        ports = []
        for name in ("b1", "b2"):
            port, resource = listenBackend(self, Switchable(name))
            self.backends.append(resource)
            ports.append(port.getHost().port)
        self.ports = ports

    def start(self, pool):
        backends = "".join(f"      - url: http://127.0.0.1:{p}\n" for p in self.ports)
        golb, listening, site = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends:
{backends}{pool}""")
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        service = HealthService(golb, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.golb = golb
        return golb.pools["default"]

    @defer.inlineCallbacks
    def request(self):
        response = yield self.client.get(self.base + "/work")
        body = yield response.content()
        return response.code, body

    @defer.inlineCallbacks
    def test_activeProbes(self):
        """
        A backend whose /health turns 503 (and whose traffic answers 503 too)
        is out within interval x unhealthy_threshold (+1 interval); with
        retries on 503 no client request fails meanwhile (the retry budget
        is lifted: back-to-back requests with half of them failing would
        exceed the default 20%).  When /health
        recovers it is back within interval x healthy_threshold (+1
        interval) and takes traffic again.
        """
        pool = self.start(f"""\
    health_check:
      path: /health
      interval: {self.INTERVAL}s
      timeout: {self.INTERVAL}s
      unhealthy_threshold: 2
      healthy_threshold: 2
    retries: {{attempts: 1, on: ["503"], budget: 100%}}
""")
        b1, b2 = self.backends
        backend2 = pool.backends[1]
        yield waitUntil(lambda: backend2.health.lastResult is not None)
        statuses = []
        for _ in range(4):
            statuses.append((yield self.request())[0])
        self.assertGreater(b2.traffic, 0)

        b2.healthStatus = b2.trafficStatus = 503
        wentDown = reactor.seconds()
        while backend2.healthy:
            statuses.append((yield self.request())[0])
            self.assertLess(reactor.seconds() - wentDown, 5, "never marked down")
        took = reactor.seconds() - wentDown
        self.assertLessEqual(took, self.INTERVAL * 3 + 0.1)
        self.assertEqual(set(statuses), {200})
        self.assertIn("2 probes failed in a row (last: HTTP 503, expected 200-399)",
                      backend2.health.reason)
        before = b2.traffic
        for _ in range(10):
            self.assertEqual((yield self.request()), (200, b"b1"))
        self.assertEqual(b2.traffic, before)

        b2.healthStatus = b2.trafficStatus = 200
        cameBack = reactor.seconds()
        yield waitUntil(lambda: backend2.healthy, timeout=5)
        self.assertLessEqual(reactor.seconds() - cameBack, self.INTERVAL * 3 + 0.1)
        names = set()
        for _ in range(4):
            names.add((yield self.request())[1])
        self.assertEqual(names, {b"b1", b"b2"})

    @defer.inlineCallbacks
    def test_passiveEjection(self):
        """
        A backend that answers 500 to real traffic (while its /health stays
        200) is ejected after consecutive_failures such answers and gets no
        traffic while ejected.
        """
        pool = self.start("""\
    health_check: {path: /health, interval: 1s, timeout: 1s}
    passive_health: {consecutive_failures: 3, ejection_time: 30s}
""")
        b1, b2 = self.backends
        backend2 = pool.backends[1]
        b2.trafficStatus = 500
        results = []
        for _ in range(20):
            results.append((yield self.request()))
        self.assertEqual(results.count((500, b"b2")), 3)
        self.assertEqual(results.count((200, b"b1")), 17)
        self.assertTrue(backend2.health.ejected)
        self.assertFalse(backend2.healthy)
        self.assertEqual(backend2.health.reason,
                         "ejected for 30s: 3 failures in a row (last: HTTP 500)")
        self.assertEqual(b2.traffic, 3)

    @defer.inlineCallbacks
    def test_clientCausedStatusesDoNotEject(self):
        """
        A backend answering 501 (a method it does not implement) to a
        client's requests is not ejected: clients cannot eject backends with
        unsupported methods.
        """
        pool = self.start("""\
    passive_health: {consecutive_failures: 3, ejection_time: 30s}
""")
        b1, b2 = self.backends
        b1.trafficStatus = b2.trafficStatus = 501
        for _ in range(12):
            code, _ = yield self.request()
            self.assertEqual(code, 501)
        for backend in pool.backends:
            self.assertFalse(backend.health.ejected)
            self.assertEqual(backend.health.consecutiveFailures, 0)
