"""
Tests for L{golb.health}: active probes on a L{task.Clock}, passive outlier
detection, and the real HTTP and TCP probes against loopback servers.
"""

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from golb.app import Golb
from golb.config import parseConfig
from golb.health import (
    HISTORY,
    HealthService,
    HTTPProbe,
    OutlierDetector,
    ProbeResult,
    TCPProbe,
)
from golb.test.support import freePort, listenBackend


def healthYAML(ports=(1, 2), health="", passive="", extra=""):
    backends = "".join(f"      - url: http://127.0.0.1:{port}\n" for port in ports)
    text = (
        "listeners:\n  - name: web\n    address: '127.0.0.1:0'\n"
        "backend_pools:\n  - name: web\n    backends:\n" + backends
    )
    if health:
        text += "    health_check:\n" + "".join(
            f"      {line}\n" for line in health.strip().splitlines()
        )
    if passive:
        text += "    passive_health:\n" + "".join(
            f"      {line}\n" for line in passive.strip().splitlines()
        )
    return text + extra


def buildGolb(yaml, clock):
    return Golb(parseConfig(yaml, "test.yaml"), reactor=clock,
                upstreamFactory=lambda backend, pool, current: None)


class ScriptedProbe:
    """
    A probe whose answers the test gives: each check returns a new Deferred
    kept in C{pending}.
    """

    def __init__(self):
        self.pending = []
        self.checked = []
        self.closed = False
        self.forgotten = []
        self.cancelled = []

    def check(self, backend):
        d = defer.Deferred(lambda d: self.cancelled.append(backend))
        self.checked.append(backend)
        self.pending.append((backend, d))
        return d

    def answer(self, ok=True, detail="HTTP 200", code=200):
        backend, d = self.pending.pop(0)
        d.callback((ok, detail, code))
        return backend

    def close(self):
        self.closed = True

    def forget(self, backend):
        self.forgotten.append(backend)


class ActiveProbeTests(TestCase):
    """
    The L{HealthService} probes every backend on its interval and turns the
    results into a verdict with thresholds.
    """

    HEALTH = """
interval: 10s
timeout: 2s
healthy_threshold: 2
unhealthy_threshold: 3
"""

    def setUp(self):
        self.clock = task.Clock()
        self.probes = []

    def probeFactory(self, poolConfig, clock):
        probe = ScriptedProbe()
        self.probes.append(probe)
        return probe

    def start(self, yaml=None, jitter=lambda interval: 0.0):
        self.golb = buildGolb(yaml or healthYAML((1,), self.HEALTH), self.clock)
        self.service = HealthService(self.golb, self.clock, self.probeFactory, jitter=jitter)
        self.service.startService()
        self.addCleanup(self._stop)
        self.clock.advance(0)
        return self.golb.pools["web"].backends

    def _stop(self):
        if self.service.running:
            self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_downAfterExactlyUnhealthyThreshold(self):
        """
        A backend stays healthy through 2 failed probes and is unhealthy
        after exactly the 3rd; the reason names the count and the last
        failure.
        """
        [backend] = self.start()
        probe = self.probes[0]
        for i in range(2):
            probe.answer(False, "HTTP 503, expected 200-399", 503)
            self.assertTrue(backend.healthy, f"down after {i + 1} failures")
            self.clock.advance(10)
        probe.answer(False, "HTTP 503, expected 200-399", 503)
        self.assertFalse(backend.healthy)
        self.assertEqual(backend.health.status, "down")
        self.assertEqual(
            backend.health.reason,
            "3 probes failed in a row (last: HTTP 503, expected 200-399)",
        )
        self.assertEqual(backend.health.since, 20.0)

    def test_upAfterHealthyThreshold(self):
        """
        A down backend needs exactly 2 passing probes in a row to come back,
        a failure in between starts the count again, and coming back starts
        its slow-start ramp.
        """
        [backend] = self.start()
        probe = self.probes[0]
        for _ in range(3):
            probe.answer(False, "connection refused", None)
            self.clock.advance(10)
        self.assertFalse(backend.healthy)
        probe.answer(True)
        self.clock.advance(10)
        probe.answer(False, "connection refused", None)
        self.clock.advance(10)
        probe.answer(True)
        self.assertFalse(backend.healthy)
        self.clock.advance(10)
        backend.readySince = 0.0
        probe.answer(True)
        self.assertTrue(backend.healthy)
        self.assertEqual(backend.health.reason, "2 probes passed in a row (HTTP 200)")
        self.assertNotEqual(backend.readySince, 0.0)

    def test_transitionsLoggedOnce(self):
        """
        Going down and coming back are each logged once, with the reason,
        however many probes fail or pass around them.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        events = []

        def observe(event):
            if event.get("log_namespace") == "golb.health":
                events.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        [backend] = self.start()
        probe = self.probes[0]
        for ok in [False] * 6 + [True] * 5:
            probe.answer(ok, "HTTP 200" if ok else "HTTP 502, expected 200-399")
            self.clock.advance(10)
        self.assertEqual(events, [
            "web/127.0.0.1:1 is unhealthy: 3 probes failed in a row"
            " (last: HTTP 502, expected 200-399)",
            "web/127.0.0.1:1 is healthy again: 2 probes passed in a row (HTTP 200)",
        ])

    def test_reasonFollowsProbes(self):
        """
        Between transitions the reason tells the latest probe and how close
        the backend is to changing state; C{since} is set by the first
        verdict.
        """
        [backend] = self.start()
        probe = self.probes[0]
        self.clock.advance(1)
        probe.answer(True)
        self.assertEqual(backend.health.reason, "last probe passed (HTTP 200)")
        self.assertEqual(backend.health.since, 1.0)
        self.clock.advance(10)
        probe.answer(False, "HTTP 500, expected 200-399", 500)
        self.assertEqual(backend.health.reason,
                         "up: 1 of 3 probes failed (last: HTTP 500, expected 200-399)")
        self.assertEqual(backend.health.since, 1.0)

    def test_timeout(self):
        """
        A probe that never answers is cancelled after C{timeout} and counts
        as a failure; the next probe runs on schedule.
        """
        [backend] = self.start()
        probe = self.probes[0]
        backend_, d = probe.pending[0]
        self.clock.advance(2)
        self.assertTrue(d.called)
        result = backend.health.lastResult
        self.assertFalse(result.ok)
        self.assertEqual(result.detail, "timed out after 2s")
        self.assertEqual(result.latency, 2.0)
        self.assertEqual(backend.health.fails, 1)
        probe.pending.clear()
        self.clock.advance(8)
        self.assertEqual(len(probe.checked), 2)

    def test_exceptionDoesNotStopTheLoop(self):
        """
        A probe that raises counts as a failure, is logged, and the loop
        keeps probing.
        """
        [backend] = self.start()
        probe = self.probes[0]
        probe.pending.pop(0)[1].callback(None)  # a bug: no (ok, detail, code)
        self.flushLoggedErrors()
        original = probe.check

        def broken(backend):
            raise RuntimeError("probe bug")

        probe.check = broken
        self.clock.advance(10)
        errors = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(errors), 1)
        self.assertEqual(backend.health.lastResult.detail, "probe error: probe bug")
        self.assertEqual(backend.health.fails, 2)
        probe.check = original
        self.clock.advance(10)
        probe.answer(True)
        self.assertEqual(backend.health.fails, 0)
        self.assertEqual(len(backend.health.history), 3)

    def test_neverTwoAtOnce(self):
        """
        While a probe is outstanding, the loop does not start another one to
        the same backend.
        """
        yaml = healthYAML((1,), "interval: 1s\ntimeout: 1s")
        self.start(yaml)
        probe = self.probes[0]
        self.clock.pump([0.5, 0.4])
        self.assertEqual(len(probe.checked), 1)

    def test_history(self):
        """
        Each backend keeps its last 20 results with their latency.
        """
        [backend] = self.start()
        probe = self.probes[0]
        for i in range(HISTORY + 5):
            self.clock.advance(0.25)
            probe.answer(True, f"HTTP 200 #{i}")
            self.clock.advance(9.75)
        history = backend.health.history
        self.assertEqual(len(history), HISTORY)
        self.assertEqual(history[0].detail, "HTTP 200 #5")
        self.assertEqual(history[-1].latency, 0.25)
        self.assertEqual(backend.health.asDict()["last_probe"]["detail"], "HTTP 200 #24")

    def test_jitter(self):
        """
        Each backend's first probe comes at the jitter chosen for it within
        its first interval, so probes of many backends do not fire together.
        """
        delays = iter([1.0, 7.5])
        self.start(healthYAML((1, 2), self.HEALTH), jitter=lambda interval: next(delays))
        probe = self.probes[0]
        self.assertEqual(probe.checked, [])
        self.clock.advance(1.0)
        self.assertEqual([b.port for b in probe.checked], [1])
        self.clock.advance(6.5)
        self.assertEqual([b.port for b in probe.checked], [1, 2])

    def test_defaultJitterSpreads(self):
        """
        The default jitter is random within the interval.
        """
        service = HealthService(buildGolb(healthYAML((1,)), self.clock), self.clock)
        delays = {service.jitter(10.0) for _ in range(50)}
        self.assertTrue(all(0 <= delay <= 10.0 for delay in delays))
        self.assertGreater(len(delays), 40)

    def test_reload(self):
        """
        After a reload, a backend that stays keeps its checker and state, a
        new one is probed, a removed one is no longer probed; a changed
        interval takes effect.
        """
        self.start(healthYAML((1, 2), self.HEALTH))
        probe = self.probes[0]
        old1 = self.golb.pools["web"].backends[0]
        for _ in range(3):
            while probe.pending:
                backend = probe.pending[0][0]
                probe.answer(backend.port != 1, "HTTP 500", 500)
            self.clock.advance(10)
        self.assertFalse(old1.healthy)
        self.golb.reload(parseConfig(healthYAML((1, 3), self.HEALTH), "test.yaml"))
        self.assertEqual(len(self.probes), 1)
        [new1, new3] = self.golb.pools["web"].backends
        self.assertIs(new1, old1)
        self.assertFalse(new1.healthy)
        probe.pending.clear()
        probe.checked.clear()
        self.clock.advance(10)
        self.assertEqual(sorted(b.port for b in probe.checked), [1, 3])
        self.assertEqual(len(probe.forgotten), 1)
        self.assertEqual(probe.forgotten[0].port, 2)

        changed = self.HEALTH.replace("interval: 10s", "interval: 20s")
        self.golb.reload(parseConfig(healthYAML((1, 3), changed), "test.yaml"))
        self.clock.advance(0)
        self.assertTrue(probe.closed)
        newProbe = self.probes[1]
        self.assertEqual(len(newProbe.checked), 2)
        newProbe.pending.clear()
        self.clock.advance(10)
        self.assertEqual(len(newProbe.checked), 2)
        self.clock.advance(10)
        self.assertEqual(len(newProbe.checked), 4)

    def test_healthCheckRemoved(self):
        """
        A backend marked down by probes is healthy again when its pool's
        health check is removed: nothing else would ever bring it back.
        """
        [backend] = self.start()
        probe = self.probes[0]
        for _ in range(3):
            probe.answer(False, "HTTP 500", 500)
            self.clock.advance(10)
        self.assertFalse(backend.healthy)
        probe.pending.clear()
        self.golb.reload(parseConfig(healthYAML((1,)), "test.yaml"))
        self.assertTrue(backend.healthy)
        self.assertEqual(backend.health.reason, "health checks removed")
        self.assertTrue(probe.closed)

    def test_observers(self):
        """
        Observers hear every probe result (the admin site and metrics use
        this).
        """
        [backend] = self.start()
        seen = []
        self.service.observers.append(lambda backend, result: seen.append((backend, result)))
        self.probes[0].answer(True)
        self.assertEqual(len(seen), 1)
        self.assertIs(seen[0][0], backend)
        self.assertIsInstance(seen[0][1], ProbeResult)

    def test_stopCancels(self):
        """
        Stopping the service cancels probes in flight and every timer.
        """
        self.start(healthYAML((1, 2), self.HEALTH), jitter=lambda interval: 3.0)
        self.clock.advance(3)
        self.service.stopService()
        self.assertEqual(len(self.probes[0].cancelled), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.probes[0].closed)


class PassiveHealthTests(TestCase):
    """
    L{OutlierDetector} ejects backends that fail real requests.
    """

    PASSIVE = """
consecutive_failures: 3
ejection_time: 30s
max_ejection_percent: 50%
"""

    def setUp(self):
        self.clock = task.Clock()

    def build(self, ports=(1, 2, 3, 4), probed=False, passive=None):
        golb = buildGolb(healthYAML(ports, passive=passive or self.PASSIVE), self.clock)
        self.pool = golb.pools["web"]
        self.detector = OutlierDetector(self.pool.config.passive_health, self.clock, probed)
        return self.pool.backends

    def fail(self, backend, times):
        results = [self.detector.failure(backend, self.pool, "HTTP 500") for _ in range(times)]
        return results

    def test_consecutive(self):
        """
        A backend is ejected on exactly its 3rd failure in a row; a success
        in between starts the count again.
        """
        b1 = self.build()[0]
        self.assertEqual(self.fail(b1, 2), [False, False])
        self.detector.success(b1)
        self.assertEqual(self.fail(b1, 2), [False, False])
        self.assertTrue(b1.healthy)
        self.assertEqual(self.fail(b1, 1), [True])
        self.assertFalse(b1.healthy)
        self.assertTrue(b1.health.ejected)
        self.assertEqual(b1.health.reason,
                         "ejected for 30s: 3 failures in a row (last: HTTP 500)")
        self.assertNotIn(b1, self.pool.candidates())

    def test_returnsWithoutProbes(self):
        """
        Without active probes an ejected backend comes back when its time is
        up, with its slow-start ramp restarted.
        """
        b1 = self.build()[0]
        self.fail(b1, 3)
        self.clock.advance(29.9)
        self.assertFalse(b1.healthy)
        b1.readySince = 0.0
        self.clock.advance(0.1)
        self.assertTrue(b1.healthy)
        self.assertEqual(b1.health.reason, "ejection over")
        self.assertNotEqual(b1.readySince, 0.0)
        self.assertEqual(b1.health.consecutiveFailures, 0)

    def test_doubling(self):
        """
        Each repeated ejection lasts twice as long, capped at 10x
        C{ejection_time}: 30, 60, 120, 240, 300, 300 seconds.
        """
        b1 = self.build()[0]
        durations = []
        for _ in range(6):
            self.fail(b1, 3)
            start = self.clock.seconds()
            durations.append(b1.health.ejectedUntil - start)
            self.clock.advance(b1.health.ejectedUntil - start)
            self.assertTrue(b1.healthy)
        self.assertEqual(durations, [30, 60, 120, 240, 300, 300])

    def test_doublingResets(self):
        """
        A backend that stays in for ten ejection times starts over at the
        base ejection time.
        """
        b1 = self.build()[0]
        self.fail(b1, 3)
        self.clock.advance(30)
        self.fail(b1, 3)
        self.assertEqual(b1.health.ejectedUntil - self.clock.seconds(), 60)
        self.clock.advance(60)
        self.clock.advance(301)
        self.fail(b1, 3)
        self.assertEqual(b1.health.ejectedUntil - self.clock.seconds(), 30)
        self.clock.advance(30)

    def test_maxEjectionPercent(self):
        """
        With 4 backends and 50%, a third failing backend is not ejected
        while two are out; it is once one of them is back.
        """
        b1, b2, b3, b4 = self.build()
        self.fail(b1, 3)
        self.clock.advance(10)
        self.fail(b2, 3)
        self.assertEqual(self.fail(b3, 5), [False] * 5)
        self.assertTrue(b3.healthy)
        self.assertEqual([b.healthy for b in (b1, b2, b3, b4)], [False, False, True, True])
        self.clock.advance(20)
        self.assertTrue(b1.healthy)
        self.assertEqual(self.fail(b3, 1), [True])
        self.assertFalse(b3.healthy)
        self.clock.advance(300)

    def test_singleBackendNeverEjected(self):
        """
        Ejecting the only backend of a pool would exceed 50%: it stays.
        """
        [b1] = self.build(ports=(1,))
        self.assertEqual(self.fail(b1, 10), [False] * 10)
        self.assertTrue(b1.healthy)

    def test_probesBringItBack(self):
        """
        With active probes, an ejected backend whose time is up comes back
        on its next passing probe, not before.
        """
        from golb.health import recordProbe

        b1 = self.build(probed=True)[0]
        config = self.pool.config.health_check or parseConfig(
            healthYAML((1,), "interval: 5s"), "t.yaml").pool("web").health_check
        self.fail(b1, 3)
        recordProbe(b1, config, ProbeResult(True, "HTTP 200"), self.clock.seconds())
        self.assertFalse(b1.healthy)
        self.clock.advance(30)
        self.assertFalse(b1.healthy)
        self.assertTrue(b1.health.awaitingProbe)
        recordProbe(b1, config, ProbeResult(False, "HTTP 500"), self.clock.seconds())
        self.assertFalse(b1.healthy)
        recordProbe(b1, config, ProbeResult(True, "HTTP 200"), self.clock.seconds())
        self.assertTrue(b1.healthy)
        self.assertEqual(b1.health.reason, "probe passed after ejection (HTTP 200)")

    def test_ejectionAndProbesBothCount(self):
        """
        A backend down by probes and ejected is healthy only when both are
        over.
        """
        from golb.health import recordProbe

        b1 = self.build()[0]
        config = parseConfig(
            healthYAML((1,), "unhealthy_threshold: 1\nhealthy_threshold: 1"), "t.yaml"
        ).pool("web").health_check
        self.fail(b1, 3)
        recordProbe(b1, config, ProbeResult(False, "HTTP 500"), 0)
        self.clock.advance(30)
        self.assertFalse(b1.healthy)
        recordProbe(b1, config, ProbeResult(True, "HTTP 200"), 30)
        self.assertTrue(b1.healthy)


class StatusResource(Resource):
    """
    A /health endpoint whose status and body the test sets.
    """

    isLeaf = True

    def __init__(self, code=200, body=b"ok"):
        Resource.__init__(self)
        self.code = code
        self.body = body
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        request.setResponseCode(self.code)
        return self.body


class RealProbeTests(TestCase):
    """
    L{HTTPProbe} and L{TCPProbe} against loopback servers.
    """

    def probe(self, port, health, probeClass=HTTPProbe):
        config = parseConfig(healthYAML((port,), health), "t.yaml")
        poolConfig = config.pool("web")
        golb = Golb(config, reactor=reactor, upstreamFactory=lambda b, p, c: None)
        backend = golb.pools["web"].backends[0]
        probe = probeClass(poolConfig.health_check, poolConfig, reactor)
        self.addCleanup(probe.close)
        return probe, backend

    @defer.inlineCallbacks
    def test_httpStatus(self):
        """
        An HTTP probe passes on a status in C{expect_status} and fails on
        others, saying which; it sends the configured method, path and
        Host, and closes its connection.
        """
        port, resource = listenBackend(self, StatusResource(204))
        probe, backend = self.probe(
            port.getHost().port, 'path: /healthz\nhost: probe.example\nexpect_status: "200-204"'
        )
        ok, detail, code = yield probe.check(backend)
        self.assertEqual((ok, detail, code), (True, "HTTP 204", 204))
        request = resource.requests[0]
        self.assertEqual(request.uri, b"/healthz")
        self.assertEqual(request.getHeader(b"host"), b"probe.example")
        self.assertEqual(request.getHeader(b"connection"), b"close")
        self.assertTrue(request.getHeader(b"user-agent").startswith(b"golb-health/"))
        resource.code = 503
        ok, detail, code = yield probe.check(backend)
        self.assertEqual((ok, detail, code), (False, "HTTP 503, expected 200-204", 503))

    @defer.inlineCallbacks
    def test_httpBody(self):
        """
        C{expect_body} is a substring or a C{/regex/} found in the body.
        """
        port, resource = listenBackend(self, StatusResource(200, b'{"status": "serving"}'))
        probe, backend = self.probe(port.getHost().port, "expect_body: serving")
        self.assertEqual((yield probe.check(backend))[:2],
                         (True, "HTTP 200, body contains 'serving'"))
        resource.body = b'{"status": "draining"}'
        self.assertEqual((yield probe.check(backend))[:2],
                         (False, "HTTP 200, body lacks 'serving'"))
        regex = 'expect_body: "/\\"status\\": \\"(serving|draining)\\"/"'
        probe, backend = self.probe(port.getHost().port, regex)
        self.assertTrue((yield probe.check(backend))[0])
        resource.body = b"nope"
        ok, detail, _ = yield probe.check(backend)
        self.assertFalse(ok)
        self.assertIn("body does not match", detail)

    @defer.inlineCallbacks
    def test_httpRefused(self):
        """
        A backend that refuses connections fails with a clear reason.
        """
        probe, backend = self.probe(freePort(), "path: /health")
        ok, detail, code = yield probe.check(backend)
        self.assertFalse(ok)
        self.assertIn("connection refused", detail)
        self.assertIsNone(code)

    @defer.inlineCallbacks
    def test_httpOwnConnection(self):
        """
        Probes never use the connections of client traffic: each probe makes
        a connection of its own and closes it.
        """
        port, resource = listenBackend(self, StatusResource(200))
        probe, backend = self.probe(port.getHost().port, "path: /health")
        yield probe.check(backend)
        yield probe.check(backend)
        upstream = probe._upstreams[id(backend)][1]
        self.assertEqual(upstream.totalConnectionsMade, 2)
        self.assertEqual(upstream.idleCount, 0)

    @defer.inlineCallbacks
    def test_tcp(self):
        """
        A TCP probe passes when the backend accepts a connection and fails
        when it refuses.
        """
        accepted = []

        class Accept(Protocol):
            def connectionMade(self):
                accepted.append(self)

        listening = reactor.listenTCP(0, Factory.forProtocol(Accept), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        probe, backend = self.probe(listening.getHost().port, "type: tcp", TCPProbe)
        ok, detail, _ = yield probe.check(backend)
        self.assertEqual((ok, detail), (True, "connected"))
        for protocol in accepted:
            protocol.transport.abortConnection()
        probe, backend = self.probe(freePort(), "type: tcp", TCPProbe)
        ok, detail, _ = yield probe.check(backend)
        self.assertEqual((ok, detail), (False, "connection refused"))
