"""
Tests for C{workers: N} (L{golb.workers}): N processes on the same sockets,
restarted when they die, kept in step with the parent's health checks, admin
changes and reloads, their metrics added up.
"""

import json
import os
import signal
import socket

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from golb.config import parseConfig
from golb.test.support import freePort, listenBackend, waitUntil
from golb.test.test_e2e import runTwistd
from golb.test.test_e2e_health import Switchable
from golb.workers import bindListener, mergeExpositions

WORKER_A = """\
# HELP golb_requests_total Client requests answered, by status class.
# TYPE golb_requests_total counter
golb_requests_total{code="2xx",pool="p"} 3.0
golb_requests_total{code="5xx",pool="p"} 1.0
# HELP golb_request_duration_seconds Time.
# TYPE golb_request_duration_seconds histogram
golb_request_duration_seconds_bucket{le="0.1",pool="p"} 2.0
golb_request_duration_seconds_bucket{le="+Inf",pool="p"} 4.0
golb_request_duration_seconds_count{pool="p"} 4.0
golb_request_duration_seconds_sum{pool="p"} 0.5
# HELP golb_backend_ejected Whether passive health ejected it.
# TYPE golb_backend_ejected gauge
golb_backend_ejected{backend="b",pool="p"} 1.0
# HELP golb_backend_up Health verdict.
# TYPE golb_backend_up gauge
golb_backend_up{backend="b",pool="p"} 1.0
"""

WORKER_B = """\
# HELP golb_requests_total Client requests answered, by status class.
# TYPE golb_requests_total counter
golb_requests_total{code="2xx",pool="p"} 5.0
# HELP golb_request_duration_seconds Time.
# TYPE golb_request_duration_seconds histogram
golb_request_duration_seconds_bucket{le="0.1",pool="p"} 1.0
golb_request_duration_seconds_bucket{le="+Inf",pool="p"} 1.0
golb_request_duration_seconds_count{pool="p"} 1.0
golb_request_duration_seconds_sum{pool="p"} 0.25
# HELP golb_backend_ejected Whether passive health ejected it.
# TYPE golb_backend_ejected gauge
golb_backend_ejected{backend="b",pool="p"} 0.0
"""


class MergeTests(SynchronousTestCase):
    """
    L{mergeExpositions} adds up what the workers counted.
    """

    def samples(self, texts):
        found = {}
        for family in mergeExpositions(texts):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def test_countersAndHistogramsSum(self):
        """
        Counters and every histogram sample are summed per label set.
        """
        found = self.samples([WORKER_A, WORKER_B])
        self.assertEqual(found[("golb_requests_total", (("code", "2xx"), ("pool", "p")))], 8.0)
        self.assertEqual(found[("golb_requests_total", (("code", "5xx"), ("pool", "p")))], 1.0)
        self.assertEqual(found[("golb_request_duration_seconds_bucket",
                                (("le", "+Inf"), ("pool", "p")))], 5.0)
        self.assertEqual(found[("golb_request_duration_seconds_sum", (("pool", "p"),))], 0.75)

    def test_stateGaugesTakeTheHighest(self):
        """
        A backend ejected by one worker shows as ejected.
        """
        found = self.samples([WORKER_A, WORKER_B])
        self.assertEqual(found[("golb_backend_ejected", (("backend", "b"), ("pool", "p")))], 1.0)

    def test_parentFamiliesLeftOut(self):
        """
        Health verdicts are the parent's: the workers' copies are dropped.
        """
        names = {family.name for family in mergeExpositions([WORKER_A, WORKER_B])}
        self.assertNotIn("golb_backend_up", names)
        self.assertEqual(names, {"golb_requests", "golb_request_duration_seconds",
                                 "golb_backend_ejected"})


class BindTests(SynchronousTestCase):
    """
    L{bindListener} binds one socket per worker on the same port.
    """

    def test_reusePortSockets(self):
        config = parseConfig('listeners: [{name: web, address: "127.0.0.1:0"}]\n'
                             'backend_pools: [{name: p, backends: [{url: "http://a:1"}]}]\n')
        sockets, family = bindListener(config.listeners[0], 3, reactor)
        self.addCleanup(lambda: [sock.close() for sock in sockets])
        self.assertEqual(family, socket.AF_INET)
        self.assertEqual(len(sockets), 3)
        ports = {sock.getsockname()[1] for sock in sockets}
        self.assertEqual(len(ports), 1)
        self.assertNotEqual(ports, {0})
        for sock in sockets:
            self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))

    def test_taken(self):
        """
        A port held by someone else (without SO_REUSEPORT) cannot be had.
        """
        from twisted.internet.error import CannotListenError

        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        config = parseConfig(f'listeners: [{{name: web, address: "127.0.0.1:{port}"}}]\n'
                             'backend_pools: [{name: p, backends: [{url: "http://a:1"}]}]\n')
        self.assertRaises(CannotListenError, bindListener, config.listeners[0], 2, reactor)


class WorkersEndToEndTests(TestCase):
    """
    C{twistd golb} with C{workers: 2}.
    """

    timeout = 90

    def setUp(self):
        # a new connection per request, so the kernel spreads them over both
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.backends = []
        self.ports = []
        for name in ("b1", "b2"):
            port, resource = listenBackend(self, Switchable(name))
            self.backends.append(resource)
            self.ports.append(port.getHost().port)
        self.listen = freePort()
        self.admin = freePort()
        self.metrics = freePort()

    def config(self, extra="", listen=None):
        backends = "".join(f"      - {{name: b{i + 1}, url: http://127.0.0.1:{p}}}\n"
                           for i, p in enumerate(self.ports))
        return f"""\
workers: 2
listeners: [{{name: web, address: "127.0.0.1:{listen or self.listen}"}}]
backend_pools:
  - name: default
    backends:
{backends}    health_check: {{path: /health, interval: 0.25s, timeout: 0.25s,
                    unhealthy_threshold: 2, healthy_threshold: 2}}
admin: {{address: "127.0.0.1:{self.admin}"}}
monitoring:
  prometheus: {{address: "127.0.0.1:{self.metrics}"}}
shutdown: {{grace: 2s}}
{extra}"""

    @defer.inlineCallbacks
    def start(self, config):
        protocol, path = runTwistd(self, config)
        yield protocol.ready
        yield from waitUntil(lambda: b"2 workers serving" in protocol.output)
        self.protocol = protocol
        return path

    @defer.inlineCallbacks
    def get(self, url):
        response = yield self.client.get(url)
        body = yield response.content()
        return response, body

    @defer.inlineCallbacks
    def serve(self, count, listen=None):
        """
        C{count} requests, each on a new connection; their bodies.
        """
        bodies = []
        for _ in range(count):
            response, body = yield self.get(f"http://127.0.0.1:{listen or self.listen}/x")
            self.assertEqual(response.code, 200, body)
            bodies.append(body)
        return bodies

    @defer.inlineCallbacks
    def serveOnly(self, name, timeout=10.0):
        """
        Serve requests until a round of them all comes from backend
        C{name} (the workers follow the parent within a probe interval or
        half a second), failing after C{timeout} seconds.
        """
        deadline = reactor.seconds() + timeout
        while True:
            bodies = yield self.serve(6)
            if set(bodies) == {name}:
                return
            if reactor.seconds() > deadline:
                self.fail(f"still served by {sorted(set(bodies))}, not only {name!r}")
            yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def workers(self):
        response, body = yield self.get(f"http://127.0.0.1:{self.admin}/api/v1/workers")
        return json.loads(body)

    @defer.inlineCallbacks
    def test_serveCountRestart(self):
        """
        Two workers with their own pids serve the listener; the parent's
        /metrics adds up what both counted; a worker killed with SIGKILL is
        replaced (running the parent's configuration, though the file was
        broken since) and the listener keeps answering.
        """
        self.path = yield self.start(self.config())
        before = yield self.workers()
        pids = [worker["pid"] for worker in before["workers"]]
        self.assertEqual(len(set(pids)), 2)
        self.assertNotIn(os.getpid(), pids)
        bodies = yield self.serve(40)
        self.assertEqual(set(bodies), {b"b1", b"b2"})
        response, page = yield self.get(f"http://127.0.0.1:{self.admin}/")
        self.assertIn(b"Workers (2)", page)
        for pid in pids:
            self.assertIn(b">%d<" % (pid,), page)
        response, text = yield self.get(f"http://127.0.0.1:{self.metrics}/metrics")
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
                    if line.startswith("golb_requests_total{"))
        # 40 requests counted once each, whichever worker served them
        self.assertEqual(total, 40.0)
        self.assertIn("golb_backend_up{", text.decode())

        response, _ = yield self.get(f"http://127.0.0.1:{self.admin}/readyz")
        self.assertEqual(response.code, 200)
        # an edit not yet reloaded: the replacement runs what the parent runs
        with open(self.path, "w") as f:
            f.write("nonsense: [\n")
        os.kill(pids[0], signal.SIGKILL)
        yield from waitUntil(lambda: b"died (signal SIGKILL)" in self.protocol.output)
        # one worker short: not ready (an orchestrator holds new traffic back)
        response, _ = yield self.get(f"http://127.0.0.1:{self.admin}/readyz")
        self.assertEqual(response.code, 503)
        bodies = yield self.serve(10)
        self.assertEqual(len(bodies), 10)
        yield from waitUntil(lambda: b"worker 0 serving" in self.protocol.output, timeout=20)
        response, _ = yield self.get(f"http://127.0.0.1:{self.admin}/readyz")
        self.assertEqual(response.code, 200)
        after = yield self.workers()
        self.assertEqual(after["restarts"], 1)
        self.assertNotIn(pids[0], [worker["pid"] for worker in after["workers"]])
        self.assertIn(b"died (signal SIGKILL)", self.protocol.output)
        yield self.serve(10)

    @defer.inlineCallbacks
    def test_healthAdminAndReload(self):
        """
        The parent's probes take a failing backend out of every worker; an
        admin drain reaches every worker; SIGHUP reloads every worker, a bad
        file none; SIGTERM drains and exits 0.
        """
        path = yield self.start(self.config())
        b1, b2 = self.backends
        b2.healthStatus = 503
        yield from waitUntil(lambda: b"default/b2 is unhealthy" in self.protocol.output)
        # the parent's verdict; the workers fold in the same probe results
        yield self.serveOnly(b"b1")
        self.assertEqual(set((yield self.serve(20))), {b"b1"})

        b2.healthStatus = 200
        yield from waitUntil(lambda: b"default/b2 is healthy again" in self.protocol.output)
        response = yield self.client.patch(
            f"http://127.0.0.1:{self.admin}/api/v1/pools/default/backends/b1",
            json={"state": "drain"})
        self.assertEqual(response.code, 200, (yield response.content()))
        yield response.content()
        yield self.serveOnly(b"b2")
        self.assertEqual(set((yield self.serve(20))), {b"b2"})

        with open(path, "a") as f:
            f.write("policies:\n  - headers: {response: {set: {X-Reloaded: \"yes\"}}}\n")
        os.kill(self.protocol.transport.pid, signal.SIGHUP)
        yield from waitUntil(lambda: self.protocol.output.count(b"reloaded ") >= 3)
        for _ in range(20):
            response, _ = yield self.get(f"http://127.0.0.1:{self.listen}/x")
            self.assertEqual(response.headers.getRawHeaders(b"x-reloaded"), [b"yes"])

        with open(path, "a") as f:
            f.write("nonsense: [\n")
        os.kill(self.protocol.transport.pid, signal.SIGHUP)
        yield from waitUntil(lambda: b"the running configuration is unchanged"
                             in self.protocol.output)
        for _ in range(10):
            response, _ = yield self.get(f"http://127.0.0.1:{self.listen}/x")
            self.assertEqual(response.code, 200)
        self.assertEqual(self.protocol.output.count(b"reloaded "), 3)

        os.kill(self.protocol.transport.pid, signal.SIGTERM)
        code = yield self.protocol.ended
        self.assertEqual(code, 0)
        self.assertEqual(self.protocol.output.count(b"SIGTERM: shutting down"), 3)

    @defer.inlineCallbacks
    def test_listenerChange(self):
        """
        A reload that moves the listener binds the new port and replaces the
        workers; the old port stops answering.
        """
        path = yield self.start(self.config())
        yield self.serve(4)
        moved = freePort()
        with open(path, "w") as f:
            f.write(self.config(listen=moved))
        os.kill(self.protocol.transport.pid, signal.SIGHUP)
        yield from waitUntil(lambda: b"replacing the workers" in self.protocol.output)
        yield from waitUntil(lambda: self.protocol.output.count(b"serving (pid") >= 2,
                             timeout=30)
        bodies = yield self.serve(10, listen=moved)
        self.assertEqual(len(bodies), 10)
        from twisted.internet.error import ConnectionRefusedError

        yield from waitUntil(lambda: b"old listening sockets closed" in self.protocol.output,
                             timeout=30)
        try:
            yield self.get(f"http://127.0.0.1:{self.listen}/x")
        except ConnectionRefusedError:
            pass
        else:
            self.fail("the old port still answers")
