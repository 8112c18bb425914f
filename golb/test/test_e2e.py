"""
End-to-end tests: C{twistd -n golb --config ...} as a subprocess, checked the
way a user would check it.
"""

import os
import signal
import sys

import treq
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from golb.test.support import (
    freePort,
    freePorts,
    listenBackend,
    rawConnect,
    rawRequest,
    stopProcess,
)


class Twistd(ProcessProtocol):
    """
    A twistd process whose output is collected; C{ready} fires when golb logs
    that it has started, C{ended} with the exit code.
    """

    def __init__(self):
        self.output = b""
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data
        if not self.ready.called and b"golb 0." in self.output and b"started" in self.output:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason):
        code = reason.value.exitCode
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.output.decode("utf-8", "replace")))
        self.ended.callback(code)


def runTwistd(testCase, configText, extra=()):
    """
    Run C{twistd -n golb} on C{configText} until the test ends.  Without a
    C{monitoring:} section, metrics go to a free loopback port (not the
    default 9090, which parallel tests would share); likewise the admin
    site without an C{admin:} section.

    @return: C{(Twistd protocol, config path)}.
    """
    if "monitoring:" not in configText:
        configText += (
            f"monitoring:\n  prometheus: {{address: \"127.0.0.1:{freePort()}\"}}\n"
        )
    if "\nadmin:" not in configText:
        configText += f"admin:\n  address: \"127.0.0.1:{freePort()}\"\n"
    path = testCase.mktemp()
    with open(path, "w") as f:
        f.write(configText)
    protocol = Twistd()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "-l", "-", *extra, "golb", "--config", path]
    env = dict(os.environ)
    process = reactor.spawnProcess(protocol, sys.executable, argv, env=env)

    testCase.addCleanup(stopProcess, process, protocol.ended)
    return protocol, path


class FreePortTests(SynchronousTestCase):
    """
    The test helper that picks ports for twistd configs.
    """

    def test_distinct(self):
        """
        When the kernel offers a port again as soon as the probe closes,
        freePort does not hand it out twice, so two services of one config
        never get the same one.
        """
        from golb.test import support

        offered = iter([40001, 40001, 40002])

        class Probe:
            def bind(self, address):
                self.port = next(offered)

            def getsockname(self):
                return ("127.0.0.1", self.port)

            def close(self):
                pass

        self.patch(support.socket, "socket", Probe)
        self.patch(support, "_recentPorts", support.deque(maxlen=8))
        self.assertEqual([support.freePort(), support.freePort()], [40001, 40002])


class EndToEndTests(TestCase):
    """
    golb run by twistd.
    """

    timeout = 60

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    @defer.inlineCallbacks
    def test_seedRoutesToBothBackends(self):
        """
        With the seed example's shape and two backends, requests for
        example.com/api/ reach both backends in turn, and other requests get
        404 with X-Golb-Error (two pools, none named default).
        """
        port1, b1 = listenBackend(self, name="b1")
        port2, b2 = listenBackend(self, name="b2")
        listen = freePort()
        config = f"""\
server:
  address: "127.0.0.1:{listen}"
backend_pools:
  - name: "web-servers"
    algorithm: "round_robin"
    backends:
      - url: "http://127.0.0.1:{port1.getHost().port}"
        weight: 1
      - url: "http://127.0.0.1:{port2.getHost().port}"
        weight: 1
  - name: "other"
    backends:
      - url: "http://127.0.0.1:{port1.getHost().port}"
routing_rules:
  - match:
      host: "example.com"
      path: "/api/*"
    target_pool: "web-servers"
"""
        protocol, _ = runTwistd(self, config)
        yield protocol.ready
        seen = []
        for i in range(4):
            response = yield self.client.get(
                f"http://127.0.0.1:{listen}/api/x{i}", headers={b"Host": [b"example.com"]}
            )
            body = yield response.content()
            self.assertEqual(response.code, 200, body)
            seen.append(response.headers.getRawHeaders(b"x-demo-backend")[0])
        self.assertEqual(seen, [b"b1", b"b2", b"b1", b"b2"])
        response = yield self.client.get(f"http://127.0.0.1:{listen}/elsewhere")
        yield response.content()
        self.assertEqual(response.code, 404)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"no-route"])

    @defer.inlineCallbacks
    def test_demoBackends(self):
        """
        C{demo.backends: 2} serves at once: requests alternate between the demo
        backends and their pages name them; SIGTERM shuts it down cleanly.
        """
        listen = freePort()
        base = freePorts(2)
        config = f"""\
listeners:
  - name: web
    address: "127.0.0.1:{listen}"
backend_pools:
  - name: default
    backends:
      - url: http://127.0.0.1:{base}
      - url: http://127.0.0.1:{base + 1}
admin:
  address: "127.0.0.1:0"
monitoring:
  prometheus: {{port: 0}}
demo:
  backends: 2
  base_port: {base}
"""
        protocol, _ = runTwistd(self, config)
        yield protocol.ready
        names = []
        for _ in range(2):
            response = yield self.client.get(f"http://127.0.0.1:{listen}/")
            body = yield response.content()
            names.append(body.split(b" (")[0])
        self.assertEqual(names, [b"golb demo backend demo-1", b"golb demo backend demo-2"])
        # no -r: golb's own reactor (docs/performance.md)
        self.assertIn(b"reactor class: golb.reactor.GolbReactor.", protocol.output)
        reactor.callLater(0, protocol.transport.signalProcess, "TERM")
        yield protocol.ended
        self.assertIn(b"Server Shut Down.", protocol.output)
        self.assertNotIn(b"Traceback", protocol.output)

    @defer.inlineCallbacks
    def test_badConfig(self):
        """
        A broken file makes twistd exit non-zero with every problem and its
        line, and no traceback.
        """
        config = """\
server:
  address: ":8080"
backend_pools:
  - name: web
    backends:
      - url: "localhost:3002"
    helth_check: {}
    timeouts: {connect: 3x}
"""
        protocol, path = runTwistd(self, config)
        code = yield protocol.ended
        self.assertNotEqual(code, 0)
        output = protocol.output.decode("utf-8")
        name = os.path.basename(path)
        self.assertIn(
            f"{name}:6: backend_pools[0].backends[0].url: 'localhost:3002' is not an "
            "http(s) URL", output)
        self.assertIn(
            f"{name}:7: backend_pools[0].helth_check: unknown key; did you mean "
            "'health_check'?", output)
        self.assertIn(f"{name}:8: backend_pools[0].timeouts.connect: '3x' is not a duration",
                      output)
        self.assertNotIn("Traceback", output)
        yield self.assertFailure(protocol.ready, RuntimeError)


class ReloadTests(TestCase):
    """
    SIGHUP reloads the configuration file in the running process.
    """

    timeout = 60

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    @defer.inlineCallbacks
    def backendName(self, listen):
        response = yield self.client.get(f"http://127.0.0.1:{listen}/")
        yield response.content()
        return response.headers.getRawHeaders(b"x-demo-backend", [b"?"])[0]

    @defer.inlineCallbacks
    def test_sighup(self):
        """
        After the file changes and golb gets SIGHUP, new requests go to the
        new pool's backend; a broken file then changes nothing and its
        problems are logged with their lines.
        """
        port1, _ = listenBackend(self, name="b1")
        port2, _ = listenBackend(self, name="b2")
        listen = freePort()
        template = """\
listeners: [{{name: web, address: "127.0.0.1:{listen}"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port}"}}]
"""
        protocol, path = runTwistd(
            self, template.format(listen=listen, port=port1.getHost().port))
        yield protocol.ready
        self.assertEqual((yield self.backendName(listen)), b"b1")
        with open(path) as f:
            monitoring = f.read().split("monitoring:", 1)[1]
        with open(path, "w") as f:
            f.write(template.format(listen=listen, port=port2.getHost().port))
            f.write("monitoring:" + monitoring)
        protocol.transport.signalProcess("HUP")
        for _ in range(200):
            if b"reloaded" in protocol.output:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual((yield self.backendName(listen)), b"b2")

        with open(path, "w") as f:
            f.write("listeners: [{name: web, address: 1.2.3}]\nbackend_pools: nope\n")
        protocol.transport.signalProcess("HUP")
        for _ in range(200):
            if b"reload of" in protocol.output:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        output = protocol.output.decode("utf-8")
        name = os.path.basename(path)
        self.assertIn(f"reload: {name}:2: backend_pools: expected a list", output)
        self.assertIn("the running configuration is unchanged", output)
        self.assertEqual((yield self.backendName(listen)), b"b2")
        self.assertNotIn("Traceback", output)


class Streaming(Resource):
    """
    Streams C{chunks} pieces one C{interval} apart, then finishes.
    """

    isLeaf = True

    def __init__(self, chunks=5, interval=1.0):
        Resource.__init__(self)
        self.chunks = chunks
        self.interval = interval
        self.calls = []

    def render(self, request):
        if request.path != b"/stream":
            return b"ok"

        def send(index):
            if request._disconnected:
                return
            request.write(b"chunk %d\n" % (index,))
            if index + 1 < self.chunks:
                self.calls.append(reactor.callLater(self.interval, send, index + 1))
            else:
                request.finish()

        send(0)
        return NOT_DONE_YET

    def cancel(self):
        for call in self.calls:
            if call.active():
                call.cancel()


class ShutdownTests(TestCase):
    """
    SIGTERM drains golb gracefully; twistd runs it as a daemon.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_sigtermDrains(self):
        """
        SIGTERM during a 5 s streaming response: the response completes,
        an idle keep-alive connection is closed at once, new connections are
        refused, and golb exits 0 within the grace.
        """
        streaming = Streaming(chunks=5, interval=1.0)
        self.addCleanup(streaming.cancel)
        port, _ = listenBackend(self, streaming)
        listen = freePort()
        protocol, _ = runTwistd(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:{listen}"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
shutdown: {{grace: 15s}}
""")
        yield protocol.ready
        idle = yield rawConnect(self, listen)
        idle.transport.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        # a keep-alive connection that got its answer and sits idle
        stream = yield rawConnect(self, listen)
        stream.transport.write(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        yield stream.waitForBytes(b"chunk 0")
        yield idle.waitForBytes(b"\r\n\r\nok")
        started = reactor.seconds()
        protocol.transport.signalProcess("TERM")
        yield idle.lost
        for _ in range(200):
            if b"draining" in protocol.output:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        try:
            yield rawConnect(self, listen)
        except ConnectionRefusedError:
            refused = True
        else:
            refused = False
        self.assertTrue(refused, "a new connection was accepted while draining")
        received = yield stream.lost
        self.assertIn(b"chunk 4\n", received)
        self.assertTrue(received.endswith(b"0\r\n\r\n"), received[-40:])
        code = yield protocol.ended
        self.assertEqual(code, 0, protocol.output.decode("utf-8", "replace")[-2000:])
        self.assertLess(reactor.seconds() - started, 15)
        self.assertIn(b"drained", protocol.output)
        self.assertNotIn(b"Traceback", protocol.output)

    @defer.inlineCallbacks
    def test_daemon(self):
        """
        C{twistd --pidfile P --logfile L golb --config C} daemonizes: the
        pidfile names the running process, golb logs to the file, and
        SIGTERM stops it and removes the pidfile.
        """
        port, _ = listenBackend(self, name="b1")
        listen = freePort()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pidfile = os.path.join(directory, "golb.pid")
        logfile = os.path.join(directory, "golb.log")
        config = os.path.join(directory, "golb.yaml")
        with open(config, "w") as f:
            f.write(f"""\
listeners: [{{name: web, address: "127.0.0.1:{listen}"}}]
backend_pools: [{{name: default, backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]}}]
monitoring: {{prometheus: {{enabled: false}}}}
""")
        launcher = Twistd()
        launcher.ready.addErrback(lambda failure: None)  # the launcher only forks
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--pidfile", pidfile, "--logfile", logfile, "golb", "--config", config]
        reactor.spawnProcess(launcher, sys.executable, argv, env=dict(os.environ),
                             path=directory)
        code = yield launcher.ended
        self.assertEqual(code, 0, launcher.output)
        for _ in range(500):
            if os.path.exists(pidfile) and os.path.exists(logfile) and \
                    b"started from" in open(logfile, "rb").read():
                break
            yield deferLater(reactor, 0.02, lambda: None)
        with open(pidfile) as f:
            pid = int(f.read().strip())

        def kill():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

        self.addCleanup(kill)
        response = yield rawRequest(self, listen, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                                    until=b"b1")
        self.assertIn(b"200 OK", response)
        os.kill(pid, signal.SIGTERM)
        for _ in range(500):
            if not os.path.exists(pidfile):
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertFalse(os.path.exists(pidfile))
        with open(logfile, "rb") as f:
            log = f.read()
        self.assertIn(b"golb 0.1.0 started from", log)
        self.assertIn(b"Server Shut Down.", log)


class PrivilegeTests(TestCase):
    """
    twistd's C{--uid}/C{--gid}: listen on a low port as root, then serve as
    an unprivileged user.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_dropPrivileges(self):
        """
        Started as root with C{--uid nobody --gid nogroup}, golb serves on a
        port below 1024 from a process running as nobody.
        """
        if os.getuid() != 0:
            raise SkipTest("binding a port below 1024 and switching users needs root"
                           " (CI runs as root)")
        import pwd
        import socket as socketModule

        listen = None
        for candidate in range(1000, 600, -1):
            probe = socketModule.socket()
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            finally:
                probe.close()
            listen = candidate
            break
        protocol = yield servesOneBackend(self, listen, ("--uid", "nobody", "--gid", "nogroup"))
        pid = protocol.transport.pid
        with open(f"/proc/{pid}/status") as f:
            uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
        nobody = pwd.getpwnam("nobody").pw_uid
        self.assertEqual({int(uid) for uid in uids}, {nobody})


@defer.inlineCallbacks
def servesOneBackend(testCase, listen, extra):
    """
    Run twistd with C{extra} options on a listener at C{listen} in front of
    one backend, and check a request gets the backend's 200.

    @return: a L{Deferred} firing with the Twistd protocol.
    """
    port, _ = listenBackend(testCase, name="b1")
    protocol, _ = runTwistd(testCase, f"""\
listeners: [{{name: web, address: "127.0.0.1:{listen}"}}]
backend_pools: [{{name: default, backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]}}]
""", extra=extra)
    yield protocol.ready
    response = yield rawRequest(testCase, listen, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                                until=b"b1")
    testCase.assertIn(b"200 OK", response)
    return protocol


class ReactorChoiceTests(TestCase):
    """
    C{twistd -r} still chooses the reactor.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_chosenReactor(self):
        """
        With C{-r poll} golb runs and serves on Twisted's poll reactor.
        """
        protocol = yield servesOneBackend(self, freePort(), ("-r", "poll"))
        self.assertIn(b"reactor class: twisted.internet.pollreactor.PollReactor.",
                      protocol.output)


class PortTakenTests(TestCase):
    """
    A listener port that is taken stops golb with one clear line.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_portTaken(self):
        """
        twistd exits 1 saying which address cannot be had and why, without
        a traceback.
        """
        port, _ = listenBackend(self, name="b1")
        taken = port.getHost().port
        protocol, _ = runTwistd(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:{taken}"}}]
backend_pools: [{{name: default, backends: [{{url: "http://127.0.0.1:{taken}"}}]}}]
""")
        protocol.ready.addErrback(lambda failure: None)
        code = yield protocol.ended
        self.assertEqual(code, 1)
        output = protocol.output.decode("utf-8")
        self.assertIn(f"golb: cannot listen on 127.0.0.1:{taken}: address already in use",
                      output)
        self.assertNotIn("Traceback", output)
