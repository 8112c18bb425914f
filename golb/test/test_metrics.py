"""
Tests for L{golb.observe.metrics}: the Prometheus families golb exposes, as a
scrape shows them, and the endpoint that serves them.
"""

import gzip
import os
import shutil

from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService, Service
from twisted.internet import defer, reactor, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.server import NOT_DONE_YET

from golb.app import Golb
from golb.config import loadConfig, parseConfig
from golb.health import HealthService, ProbeResult
from golb.observe import Attempt, Record
from golb.observe.metrics import (
    BUCKETS,
    Metrics,
    MetricsObserver,
    MetricsService,
    metricsFor,
    metricsResource,
    statusClass,
)
from golb.test.support import (
    freePort,
    header,
    listenBackend,
    listenGolb,
    parseResponses,
    rawConnect,
    rawRequest,
    waitUntil,
)
from golb.test.test_health import ScriptedProbe, buildGolb, healthYAML
from golb.test.test_proxy import FunctionResource, ProxyTestCase


def samples(text):
    """
    Every sample of a text exposition as C{(name, labels, value)}.
    """
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.append((sample.name, sample.labels, sample.value))
    return found


def value(text, name, **labels):
    """
    The sum of the samples called C{name} whose labels include C{labels}
    (L{None} when there is none).
    """
    matching = [v for n, sampleLabels, v in samples(text)
                if n == name and all(sampleLabels.get(k) == w for k, w in labels.items())]
    return sum(matching) if matching else None


def scrape(metrics) -> str:
    return metrics.exposition()[0].decode("utf-8")


@defer.inlineCallbacks
def promtoolCheck(testCase, text):
    """
    Run C{promtool check metrics} on C{text}; fail the test when promtool is
    not installed.

    @return: a L{Deferred} firing with C{(exit code, output)}.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        testCase.fail("promtool is not installed: it comes with Debian's prometheus package"
                      " (apt-get install -y prometheus), which .ci/run installs")
    path = testCase.mktemp()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    out, err, code = yield getProcessOutputAndValue(
        "/bin/sh", ["-c", 'exec "$0" check metrics < "$1"', promtool, path],
        env=dict(os.environ), reactor=reactor)
    return code, (out + err).decode("utf-8", "replace")


def record(**kw):
    values = dict(started=10.0, finished=10.02, listener="web", method="GET", route="r",
                  pool="p", backend="b1", status=200)
    values.update(kw)
    return Record(**values)


class ObserverTests(TestCase):
    """
    The observer counts records; the collector shows the counts.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.golb = buildGolb(healthYAML((1,)), self.clock)
        self.metrics = Metrics(self.golb, self.clock)
        self.metrics.attach()
        self.observer = self.metrics.observer

    def test_separateRegistries(self):
        """
        Each golb has its own registry: counts of one never show in another's
        scrape.
        """
        other = Metrics(buildGolb(healthYAML((1,)), self.clock), self.clock)
        self.observer.requestFinished(record())
        self.assertEqual(value(scrape(self.metrics), "golb_requests_total"), 1)
        self.assertIsNone(value(scrape(other), "golb_requests_total"))
        self.assertIs(metricsFor(self.golb), metricsFor(self.golb))

    def test_labels(self):
        """
        Requests are counted by listener, route, pool, backend, method and
        status class; unknown methods are C{OTHER} and absent names empty.
        """
        self.observer.requestFinished(record(status=204))
        self.observer.requestFinished(record(status=503, method="BREW"))
        self.observer.requestFinished(record(status=404, route=None, pool=None, backend=None,
                                             method="get"))
        text = scrape(self.metrics)
        self.assertEqual(value(text, "golb_requests_total", code="2xx", method="GET",
                               listener="web", route="r", pool="p", backend="b1"), 1)
        self.assertEqual(value(text, "golb_requests_total", code="5xx", method="OTHER"), 1)
        self.assertEqual(value(text, "golb_requests_total", code="4xx", method="OTHER",
                               route="", pool="", backend=""), 1)

    def test_statusClass(self):
        """
        Status classes are C{1xx} to C{5xx}; no status is empty.
        """
        self.assertEqual([statusClass(s) for s in (101, 200, 302, 404, 599, 0, 700)],
                         ["1xx", "2xx", "3xx", "4xx", "5xx", "", "other"])

    def test_buckets(self):
        """
        A duration lands in the first bucket whose bound it does not exceed
        (a bound itself included), and beyond 30s only in C{+Inf}.
        """
        self.observer.requestFinished(record(started=0.0, finished=0.025))
        self.observer.requestFinished(record(started=0.0, finished=0.026))
        self.observer.requestFinished(record(started=0.0, finished=45.0))
        text = scrape(self.metrics)

        def bucket(le):
            return value(text, "golb_request_duration_seconds_bucket", le=le)

        self.assertEqual(BUCKETS[0], 0.0001)
        self.assertEqual(BUCKETS[-1], 30.0)
        self.assertEqual((bucket("0.01"), bucket("0.025"), bucket("0.05")), (0, 1, 2))
        self.assertEqual((bucket("30.0"), bucket("+Inf")), (2, 3))
        self.assertEqual(value(text, "golb_request_duration_seconds_count"), 3)
        self.assertAlmostEqual(value(text, "golb_request_duration_seconds_sum"), 45.051)

    def test_bodyBytes(self):
        """
        Request and response body bytes add up per listener, route and pool.
        """
        self.observer.requestFinished(record(bytesIn=100, bytesOut=1000))
        self.observer.requestFinished(record(bytesIn=5, bytesOut=7))
        text = scrape(self.metrics)
        self.assertEqual(value(text, "golb_request_body_bytes_total", route="r"), 105)
        self.assertEqual(value(text, "golb_response_body_bytes_total", route="r"), 1007)

    def test_errorsAndRateLimits(self):
        """
        golb's own answers are counted by code, and rate-limited ones by
        route; aborted requests are counted as such.
        """
        self.observer.requestFinished(record(status=429, error="rate-limited", route="api"))
        self.observer.requestFinished(record(status=429, error="rate-limited", route="api"))
        self.observer.requestFinished(record(status=502, error="connect-failure"))
        self.observer.requestFinished(record(status=0, aborted=True))
        text = scrape(self.metrics)
        self.assertEqual(value(text, "golb_rate_limited_total", route="api"), 2)
        self.assertEqual(value(text, "golb_errors_total", code="rate-limited"), 2)
        self.assertEqual(value(text, "golb_errors_total", code="connect-failure"), 1)
        self.assertEqual(value(text, "golb_requests_aborted_total"), 1)
        self.assertEqual(value(text, "golb_requests_total", code=""), 1)

    def test_rejections(self):
        """
        Requests refused by a listener are counted by status and code.
        """
        self.observer.requestRejected("web", 431, "headers-too-large")
        text = scrape(self.metrics)
        self.assertEqual(value(text, "golb_listener_rejections_total", listener="web",
                               status="431", code="headers-too-large"), 1)

    def test_attempts(self):
        """
        Attempts are counted by outcome; only those with a response head
        are timed.
        """
        [backend] = self.golb.pools["web"].backends
        ok = Attempt("web", backend, 1, started=1.0, finished=1.3, status=200)
        failed = Attempt("web", backend, 2, started=1.0, finished=4.0, error="upstream-timeout")
        self.observer.attemptFinished(record(), ok)
        self.observer.attemptFinished(record(), failed)
        text = scrape(self.metrics)
        self.assertEqual(value(text, "golb_upstream_attempts_total", pool="web",
                               backend=backend.id, outcome="2xx"), 1)
        self.assertEqual(value(text, "golb_upstream_attempts_total",
                               outcome="upstream-timeout"), 1)
        self.assertEqual(value(text, "golb_upstream_response_seconds_count"), 1)
        self.assertEqual(value(text, "golb_upstream_response_seconds_bucket", le="0.25"), 0)
        self.assertEqual(value(text, "golb_upstream_response_seconds_bucket", le="0.5"), 1)

    def test_detach(self):
        """
        A detached observer is unplugged and counts nothing more.
        """
        self.metrics.detach()
        self.assertFalse(self.golb.observatory.active)
        self.assertNotIn(self.observer.reloaded, self.golb.reloadObservers)

    def test_backendGauges(self):
        """
        Backend gauges follow the live state: up, admin state (one-hot),
        weight and requests in flight.
        """
        [backend] = self.golb.pools["web"].backends
        backend.state = "drain"
        backend.weight = 7
        backend.inFlight = 3
        text = scrape(self.metrics)
        labels = dict(pool="web", backend=backend.id)
        self.assertEqual(value(text, "golb_backend_up", **labels), 1)
        self.assertEqual(value(text, "golb_backend_state", state="drain", **labels), 1)
        self.assertEqual(value(text, "golb_backend_state", state="ready", **labels), 0)
        self.assertEqual(value(text, "golb_backend_weight", **labels), 7)
        self.assertEqual(value(text, "golb_backend_requests_in_flight", **labels), 3)

    def test_ejections(self):
        """
        Passive ejections show as a gauge and a count that never goes down,
        though the backend's own ejection count restarts after a quiet
        spell.
        """
        golb = buildGolb(healthYAML((1, 2, 3), passive="consecutive_failures: 1\n"
                                    "ejection_time: 10s\n"), self.clock)
        metrics = Metrics(golb, self.clock)
        pool = golb.pools["web"]
        backend = pool.backends[0]
        labels = dict(pool="web", backend=backend.id)
        pool.outliers.failure(backend, pool, "HTTP 500")
        text = scrape(metrics)
        self.assertEqual(value(text, "golb_backend_ejected", **labels), 1)
        self.assertEqual(value(text, "golb_backend_up", **labels), 0)
        self.assertEqual(value(text, "golb_backend_ejections_total", **labels), 1)
        self.clock.advance(10)
        self.assertEqual(value(scrape(metrics), "golb_backend_ejected", **labels), 0)
        self.clock.advance(1000)
        pool.outliers.failure(backend, pool, "HTTP 500")
        self.assertEqual(backend.health.ejections, 1)
        self.assertEqual(value(scrape(metrics), "golb_backend_ejections_total", **labels), 2)
        self.clock.advance(10)

    def test_circuitBreakerAcrossReloads(self):
        """
        Circuit-breaker rejections are counted by limit, and the count keeps
        going up across a reload that rebuilds the pool.
        """
        yaml = healthYAML((1,), extra="    circuit_breaker: {max_requests: 1}\n")
        golb = buildGolb(yaml, self.clock)
        metrics = Metrics(golb, self.clock)
        old = golb.pools["web"]
        old.overflows["max_requests"] += 2
        self.assertEqual(value(scrape(metrics), "golb_circuit_breaker_rejections_total",
                               pool="web", limit="max_requests"), 2)
        golb.reload(parseConfig(yaml, "test.yaml"))
        self.assertIsNot(golb.pools["web"], old)
        old.overflows["max_requests"] += 1
        golb.pools["web"].overflows["max_requests"] += 1
        text = scrape(metrics)
        self.assertEqual(value(text, "golb_circuit_breaker_rejections_total",
                               pool="web", limit="max_requests"), 4)
        self.assertEqual(value(text, "golb_circuit_breaker_rejections_total",
                               pool="web", limit="max_pending"), 0)

    def test_reloads(self):
        """
        Reloads are counted by result; the last one's success and the time
        of the last good configuration are shown.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(healthYAML((1,)))
        golb = Golb(loadConfig(path), reactor=self.clock,
                    upstreamFactory=lambda backend, pool, current: None)
        metrics = Metrics(golb, self.clock)
        metrics.attach()
        self.clock.advance(100)
        self.assertTrue(golb.reloadFile())
        text = scrape(metrics)
        self.assertEqual(value(text, "golb_config_reloads_total", result="success"), 1)
        self.assertEqual(value(text, "golb_config_last_reload_successful"), 1)
        self.assertEqual(value(text, "golb_config_last_reload_success_timestamp_seconds"), 100)
        with open(path, "w") as f:
            f.write("backend_pools: 5\n")
        self.clock.advance(50)
        self.assertFalse(golb.reloadFile())
        text = scrape(metrics)
        self.assertEqual(value(text, "golb_config_reloads_total", result="failure"), 1)
        self.assertEqual(value(text, "golb_config_last_reload_successful"), 0)
        self.assertEqual(value(text, "golb_config_last_reload_success_timestamp_seconds"), 100)

    def test_buildInfo(self):
        """
        Build info names golb's version and the Python running it.
        """
        import platform

        from golb import __version__

        self.assertEqual(value(scrape(self.metrics), "golb_build_info", version=__version__,
                               python_implementation=platform.python_implementation(),
                               python_version=platform.python_version()), 1)

    def test_nameSelection(self):
        """
        A scrape may ask for some families only (Prometheus' C{name[]}).
        """
        text = self.metrics.exposition(names=["golb_backend_up"])[0].decode()
        self.assertEqual({name for name, _, _ in samples(text)}, {"golb_backend_up"})


class HealthMetricsTests(TestCase):
    """
    Active probes move the health-check families and the backend's up gauge.
    """

    def test_failingProbes(self):
        """
        A backend that fails its probes reads 0 in C{golb_backend_up}; each
        probe is counted by result and timed.
        """
        clock = task.Clock()
        golb = buildGolb(healthYAML((1,), "interval: 10s\ntimeout: 2s\nunhealthy_threshold: 3\n"),
                         clock)
        probes = []
        service = HealthService(golb, clock, lambda poolConfig, clock: probes.append(
            ScriptedProbe()) or probes[-1], jitter=lambda interval: 0.0)
        metrics = Metrics(golb, clock)
        metrics.watchHealth(service)
        service.startService()
        self.addCleanup(service.stopService)
        clock.advance(0)
        [backend] = golb.pools["web"].backends
        labels = dict(pool="web", backend=backend.id)
        self.assertEqual(value(scrape(metrics), "golb_backend_up", **labels), 1)
        for _ in range(3):
            clock.advance(0.3)
            probes[0].answer(False, "HTTP 500", 500)
            clock.advance(9.7)
        text = scrape(metrics)
        self.assertEqual(value(text, "golb_backend_up", **labels), 0)
        self.assertEqual(value(text, "golb_health_checks_total", result="fail", **labels), 3)
        self.assertEqual(value(text, "golb_health_checks_total", result="pass", **labels), 0)
        self.assertEqual(value(text, "golb_health_check_duration_seconds_bucket", le="0.25",
                               **labels), 0)
        self.assertEqual(value(text, "golb_health_check_duration_seconds_bucket", le="0.5",
                               **labels), 3)
        metrics.detach()
        self.assertEqual(service.observers, [])

    def test_recordProbe(self):
        """
        The up gauge reads the backend's verdict however it was reached.
        """
        from golb.health import recordProbe

        clock = task.Clock()
        golb = buildGolb(healthYAML((1,), "unhealthy_threshold: 1\n"), clock)
        metrics = Metrics(golb, clock)
        pool = golb.pools["web"]
        recordProbe(pool.backends[0], pool.config.health_check,
                    ProbeResult(False, "connection refused"), 0.0)
        self.assertEqual(value(scrape(metrics), "golb_backend_up"), 0)


class TrafficTests(ProxyTestCase):
    """
    Real requests through a real golb move the right counters.
    """

    def start(self, yaml):
        golb, listening, site = listenGolb(self, yaml)
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        self.port = listening.getHost().port
        self.metrics = metricsFor(golb)
        self.metrics.attach()
        self.metrics.addSite(site)
        self.golb = golb
        return golb

    def total(self):
        return value(scrape(self.metrics), "golb_requests_total") or 0

    @defer.inlineCallbacks
    def traffic(self):
        """
        2xx, 5xx, retried, circuit-open and rate-limited requests.
        """
        held = []

        def answer(request):
            if request.path.startswith(b"/fail"):
                request.setResponseCode(500)
                return b"no"
            return b"ok"

        def hold(request):
            held.append(request)
            return NOT_DONE_YET

        live, _ = listenBackend(self, FunctionResource(answer))
        holding, _ = listenBackend(self, FunctionResource(hold))
        livePort = live.getHost().port
        self.start(f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{livePort}"}}]
  - name: flaky
    algorithm: first
    backends: [{{url: "http://127.0.0.1:{freePort()}"}}, {{url: "http://127.0.0.1:{livePort}"}}]
  - name: held
    backends: [{{url: "http://127.0.0.1:{holding.getHost().port}"}}]
    circuit_breaker: {{max_requests: 1}}
routing_rules:
  - {{name: limited, match: {{path: "/limited/*"}}, target_pool: default,
     policies: [{{rate_limit: {{rate: 1/minute, burst: 1}}}}]}}
  - {{name: flaky, match: {{path: "/flaky/*"}}, target_pool: flaky}}
  - {{name: held, match: {{path: "/held/*"}}, target_pool: held}}
""")
        codes = []
        for path in ["/a", "/b", "/c", "/fail", "/flaky/1", "/flaky/2",
                     "/limited/1", "/limited/2"]:
            response, _ = yield self.get(path)
            codes.append(response.code)
        first = self.get("/held/1")
        yield waitUntil(lambda: held)
        response, _ = yield self.get("/held/2")
        codes.append(response.code)
        held[0].finish()
        response, _ = yield first
        codes.append(response.code)
        self.assertEqual(codes, [200, 200, 200, 500, 200, 200, 200, 429, 503, 200])
        yield waitUntil(lambda: self.total() == 10)
        return scrape(self.metrics)

    @defer.inlineCallbacks
    def test_counts(self):
        """
        After mixed traffic the counters say how many requests ended in 2xx
        and 5xx, how many were retried, refused by the circuit breaker and
        rate limited.
        """
        text = yield self.traffic()
        self.assertEqual(value(text, "golb_requests_total", code="2xx"), 7)
        self.assertEqual(value(text, "golb_requests_total", code="5xx"), 2)
        self.assertEqual(value(text, "golb_requests_total", code="4xx"), 1)
        self.assertEqual(value(text, "golb_requests_total", route="default", code="2xx",
                               pool="default", method="GET", listener="web"), 3)
        self.assertEqual(value(text, "golb_retries_total", route="flaky"), 2)
        self.assertEqual(value(text, "golb_retries_total", route="default"), 0)
        self.assertEqual(value(text, "golb_upstream_attempts_total", pool="flaky",
                               outcome="connect-failure"), 2)
        self.assertEqual(value(text, "golb_upstream_attempts_total", pool="default",
                               outcome="5xx"), 1)
        self.assertEqual(value(text, "golb_circuit_breaker_rejections_total", pool="held",
                               limit="max_requests"), 1)
        self.assertEqual(value(text, "golb_errors_total", code="circuit-open"), 1)
        self.assertEqual(value(text, "golb_rate_limited_total", route="limited"), 1)
        self.assertEqual(value(text, "golb_errors_total", code="rate-limited"), 1)
        self.assertEqual(value(text, "golb_request_duration_seconds_count"), 10)
        self.assertGreater(value(text, "golb_response_body_bytes_total", route="default"), 0)

    @defer.inlineCallbacks
    def test_promtool(self):
        """
        A scrape after real traffic parses, and C{promtool check metrics}
        finds nothing wrong with it.
        """
        text = yield self.traffic()
        names = {family.name for family in text_string_to_metric_families(text)}
        self.assertIn("golb_requests", names)
        self.assertIn("process_cpu_seconds", names)
        code, output = yield promtoolCheck(self, text)
        self.assertEqual((code, output), (0, ""))

    @defer.inlineCallbacks
    def test_slowRequestBucket(self):
        """
        A request to a slow backend lands in a higher bucket of both the
        request duration and the upstream response histograms.
        """
        def slow(request):
            if request.path == b"/slow":
                reactor.callLater(0.3, lambda: (request.write(b"late"), request.finish()))
                return NOT_DONE_YET
            return b"fast"

        port, _ = listenBackend(self, FunctionResource(slow))
        self.start(f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
""")
        yield self.get("/fast")
        yield waitUntil(lambda: self.total() == 1)
        before = scrape(self.metrics)
        yield self.get("/slow")
        yield waitUntil(lambda: self.total() == 2)
        after = scrape(self.metrics)
        for name in ("golb_request_duration_seconds", "golb_upstream_response_seconds"):
            bucket = name + "_bucket"
            self.assertEqual(value(after, bucket, le="0.25"), value(before, bucket, le="0.25"))
            self.assertEqual(value(after, bucket, le="0.5"), value(before, bucket, le="0.5") + 1)
            self.assertEqual(value(after, bucket, le="+Inf"), 2)
            self.assertGreaterEqual(value(after, name + "_sum"), 0.3)

    @defer.inlineCallbacks
    def test_connections(self):
        """
        Open client connections per listener and upstream connections per
        backend (idle after a keep-alive request) are gauges.
        """
        port, _ = listenBackend(self)
        self.start(f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
""")
        yield self.get("/")
        [backend] = self.golb.pools["default"].backends
        yield waitUntil(lambda: backend.upstream.idleCount == 1)
        client = yield rawConnect(self, self.port)
        site = self.metrics.sites["web"]
        yield waitUntil(lambda: len(site.openConnections) == 2)
        text = scrape(self.metrics)
        self.assertEqual(value(text, "golb_listener_open_connections", listener="web"), 2)
        self.assertEqual(value(text, "golb_upstream_connections", backend=backend.id,
                               state="idle"), 1)
        self.assertEqual(value(text, "golb_upstream_connections", backend=backend.id,
                               state="active"), 0)
        self.assertEqual(value(text, "golb_pool_requests_in_flight", pool="default"), 0)
        self.assertEqual(value(text, "golb_pool_requests_queued", pool="default"), 0)
        client.transport.loseConnection()
        yield client.lost


class ServiceTests(ProxyTestCase):
    """
    The C{metrics} service serves the exposition on its own port and path.
    """

    def makeGolb(self, prometheus='{address: "127.0.0.1:0", path: /stats/prom}'):
        return Golb(parseConfig(f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:1"}}]
monitoring:
  prometheus: {prometheus}
""", "test.yaml"), reactor=reactor)

    def startService(self, golb):
        root = MultiService()
        listener = Service()
        listener.setName("listener:web")
        listener.factory = self.site = object()
        listener.setServiceParent(root)
        self.health = HealthService(golb, reactor)
        self.health.setServiceParent(root)
        service = MetricsService(golb, reactor)
        service.setServiceParent(root)
        root.startService()
        self.addCleanup(root.stopService)
        self.addCleanup(golb.close)
        return service

    @defer.inlineCallbacks
    def test_serves(self):
        """
        GET on the configured path answers the text exposition; the service
        counts its siblings' listener connections and health probes.
        """
        golb = self.makeGolb()
        service = self.startService(golb)
        self.assertEqual(service.name, "metrics")
        self.assertTrue(golb.observatory.active)
        self.assertIs(service.metrics.sites["web"], self.site)
        self.assertIn(service.metrics.observer.probed, self.health.observers)
        base = f"http://127.0.0.1:{service.port.getHost().port}"
        response = yield self.client.get(base + "/stats/prom")
        body = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        self.assertEqual(value(body.decode(), "golb_backend_up", pool="default"), 1)

        response = yield self.client.head(base + "/stats/prom")
        body = yield response.content()
        self.assertEqual((response.code, body), (200, b""))
        self.assertGreater(int(response.headers.getRawHeaders(b"content-length")[0]), 0)

        response = yield self.client.get(base + "/metrics")
        yield response.content()
        self.assertEqual(response.code, 404)
        response = yield self.client.post(base + "/stats/prom", data=b"")
        yield response.content()
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_negotiation(self):
        """
        OpenMetrics is served when asked for, and gzip when accepted.
        """
        service = self.startService(self.makeGolb())
        url = f"http://127.0.0.1:{service.port.getHost().port}/stats/prom"
        response = yield self.client.get(url, headers={
            b"Accept": [b"application/openmetrics-text; version=1.0.0; charset=utf-8"]})
        body = yield response.content()
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(
            b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))
        raw = yield rawRequest(self, service.port.getHost().port, (
            b"GET /stats/prom HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
            b"Connection: close\r\n\r\n"))
        [(status, headers, body)] = parseResponses(raw)
        self.assertEqual(header(headers, b"content-encoding"), [b"gzip"])
        self.assertIn(b"golb_build_info", gzip.decompress(body))

    @defer.inlineCallbacks
    def test_stop(self):
        """
        Stopping the service closes its port and its scrape connections and
        unplugs the observer.
        """
        golb = self.makeGolb()
        service = self.startService(golb)
        port = service.port.getHost().port
        client = yield rawConnect(self, port)
        client.transport.write(b"GET /stats/prom HTTP/1.1\r\nHost: x\r\n\r\n")
        yield client.waitForBytes(b"golb_build_info")
        yield service.stopService()
        yield client.lost
        self.assertIsNone(service.port)
        self.assertFalse(golb.observatory.active)
        self.assertEqual(self.health.observers, [])
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.error import ConnectionRefusedError
        from twisted.internet.protocol import Protocol

        with self.assertRaises(ConnectionRefusedError):
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())

    def test_disabled(self):
        """
        With C{enabled: false} nothing listens and nothing is counted.
        """
        golb = self.makeGolb("{enabled: false}")
        service = self.startService(golb)
        self.assertIsNone(service.port)
        self.assertFalse(golb.observatory.active)
        self.assertEqual(self.health.observers, [])

    def test_portTaken(self):
        """
        A port that cannot be had fails the service's start.
        """
        from twisted.internet.error import CannotListenError

        taken = reactor.listenTCP(0, _NoFactory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        golb = self.makeGolb(f'{{address: "127.0.0.1:{taken.getHost().port}"}}')
        self.addCleanup(golb.close)
        service = MetricsService(golb, reactor, sites={})
        self.assertRaises(CannotListenError, service.startService)
        self.assertFalse(golb.observatory.active)

    @defer.inlineCallbacks
    def test_resource(self):
        """
        L{metricsResource} serves the same golb's metrics wherever it is
        mounted (the admin site's C{/metrics}).
        """
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        golb = self.makeGolb()
        self.addCleanup(golb.close)
        root = Resource()
        root.putChild(b"metrics", metricsResource(golb))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        response = yield self.client.get(f"http://127.0.0.1:{port.getHost().port}/metrics")
        body = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(value(body.decode(), "golb_backend_up"), 1)
        self.assertIs(golb.metrics, metricsFor(golb))


class _NoFactory:
    def doStart(self):
        pass

    def doStop(self):
        pass

    def buildProtocol(self, addr):
        return None


class ObserverCostTests(TestCase):
    """
    The observer is a plain L{MetricsObserver} that needs no golb.
    """

    def test_standalone(self):
        """
        An observer counts with nothing but a clock.
        """
        observer = MetricsObserver(task.Clock())
        observer.requestFinished(record())
        self.assertEqual(sum(observer.requests.values()), 1)
