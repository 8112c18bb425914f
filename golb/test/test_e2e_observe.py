"""
Observability end to end: C{twistd -n golb} with metrics, tracing to a real
OTLP/HTTP receiver, JSON logs on standard output and a JSON access log.
"""

import json
import os

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from golb.test.support import freePort, listenBackend, waitUntil
from golb.test.test_e2e import runTwistd
from golb.test.test_metrics import promtoolCheck, value
from golb.test.test_tracing import Collector, echoed, traceparent


class ObservabilityEndToEndTests(TestCase):
    """
    What an operator sees from a running golb.
    """

    timeout = 60

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.collector = Collector()
        site = Site(self.collector)
        site.log = lambda request: None
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.collectorPort = port.getHost().port

    @defer.inlineCallbacks
    def test_everything(self):
        """
        After traffic: the metrics scrape passes promtool and counts it; the
        backend saw the client's trace id under golb's span; spans reached
        the collector; every stdout line is a JSON log event; every access
        log line is JSON and its trace_id is the exported server span's.
        """
        port, backend = listenBackend(self, name="b1")
        listen, metricsPort = freePort(), freePort()
        accessLog = os.path.abspath(self.mktemp())
        config = f"""\
listeners: [{{name: web, address: "127.0.0.1:{listen}"}}]
backend_pools:
  - name: web
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
  - name: spare
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
routing_rules:
  - name: api
    match: {{path: "/api/*"}}
    target_pool: web
  - name: other
    match: {{path: "/other/*"}}
    target_pool: spare
monitoring:
  prometheus: {{address: "127.0.0.1:{metricsPort}"}}
  tracing: {{enabled: true, protocol: http, endpoint: "http://127.0.0.1:{self.collectorPort}",
             sampling_rate: 1.0}}
  logging:
    format: json
    access_log: {{enabled: true, format: json, path: "{accessLog}"}}
"""
        protocol, _ = runTwistd(self, config)
        yield protocol.ready
        clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
        response = yield self.client.get(
            f"http://127.0.0.1:{listen}/api/one",
            headers={b"traceparent": [traceparent(clientTrace)]})
        body = yield response.content()
        self.assertEqual(response.code, 200)
        [seen] = echoed(body, "traceparent")
        self.assertEqual(seen.split("-")[1], clientTrace)
        for path in ("/api/two", "/nowhere"):
            response = yield self.client.get(f"http://127.0.0.1:{listen}{path}")
            yield response.content()

        response = yield self.client.get(f"http://127.0.0.1:{metricsPort}/metrics")
        text = (yield response.content()).decode("utf-8")
        self.assertEqual(
            value(text, "golb_requests_total", route="api", code="2xx"), 2.0)
        self.assertEqual(value(text, "golb_requests_total", code="4xx"), 1.0)
        code, output = yield promtoolCheck(self, text)
        self.assertEqual(code, 0, output)

        yield waitUntil(lambda: len([s for s in self.collector.spans if s.span.kind == 2]) >= 3,
                        timeout=15)
        servers = {s.span.trace_id.hex(): s for s in self.collector.spans if s.span.kind == 2}
        self.assertIn(clientTrace, servers)
        clientSpans = [s for s in self.collector.spans if s.span.kind == 3]
        parent = servers[clientTrace].span.span_id
        attemptSpan = [s for s in clientSpans if s.span.parent_span_id == parent]
        self.assertEqual(len(attemptSpan), 1)
        self.assertEqual(seen.split("-")[2], attemptSpan[0].span.span_id.hex())

        yield waitUntil(lambda: os.path.exists(accessLog) and
                        len(open(accessLog).read().splitlines()) >= 3, timeout=10)
        with open(accessLog) as f:
            lines = [json.loads(line) for line in f.read().splitlines()]
        first = [line for line in lines if line["target"] == "/api/one"][0]
        self.assertEqual((first["status"], first["route"], first["pool"]), (200, "api", "web"))
        self.assertEqual(first["trace_id"], clientTrace)
        self.assertEqual(first["span_id"], servers[clientTrace].span.span_id.hex())
        missing = [line for line in lines if line["target"] == "/nowhere"][0]
        self.assertEqual((missing["status"], missing["error"]), (404, "no-route"))

        stdout = protocol.output.decode("utf-8").splitlines()
        events = [json.loads(line) for line in stdout if line.strip()]
        self.assertTrue(any("started from" in event["message"] for event in events))
        self.assertTrue(all({"time", "level", "namespace", "message"} <= set(event)
                            for event in events))
