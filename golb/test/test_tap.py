"""
Tests for L{golb.tap} and the twistd plugin.
"""

import io
import os

from twisted.application.service import IServiceMaker, Service
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from golb.tap import Options, listenerDescription, makeService

GOOD = """\
listeners:
  - name: web
    address: "127.0.0.1:0"
  - name: alt
    endpoint: "tcp:port=0:interface=127.0.0.1"
backend_pools:
  - name: default
    backends:
      - url: http://127.0.0.1:3001
demo:
  backends: 2
  base_port: 3001
"""


class PluginTests(SynchronousTestCase):
    """
    The C{golb} twistd plugin.
    """

    def test_discovered(self):
        """
        twistd finds a service maker named C{golb} whose module is L{golb.tap}.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("golb", makers)
        self.assertEqual(makers["golb"].module, "golb.tap")


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{Options}.
    """

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_configRequired(self):
        """
        Without C{--config} the usage error says the option is required.
        """
        error = self.assertRaises(UsageError, Options().parseOptions, [])
        self.assertIn("--config is required", str(error))

    def test_helpDocumentsConfig(self):
        """
        C{--help} documents C{--config}.
        """
        self.assertIn("--config=", str(Options()))

    def test_loadsConfig(self):
        """
        A valid file is loaded into C{options["loaded"]}.
        """
        options = Options()
        options.parseOptions(["--config", self.write(GOOD)])
        self.assertEqual([listener.name for listener in options["loaded"].listeners],
                         ["web", "alt"])

    def test_badConfigExits(self):
        """
        A broken file prints each problem with its line and exits 1 without a
        traceback.
        """
        path = self.write(GOOD.replace("http://127.0.0.1:3001", "localhost:3002")
                          + "workerz: 2\n")
        stderr = io.StringIO()
        error = self.assertRaises(
            SystemExit, Options(stderr=stderr).parseOptions, ["--config", path]
        )
        self.assertEqual(error.code, 1)
        lines = stderr.getvalue().splitlines()
        name = os.path.basename(path)
        self.assertEqual(
            lines[:2],
            [
                f"{name}:9: backend_pools[0].backends[0].url: "
                "'localhost:3002' is not an http(s) URL",
                f"{name}:13: workerz: unknown key; did you mean 'workers'?",
            ],
        )
        self.assertNotIn("Traceback", stderr.getvalue())

    def test_missingFile(self):
        """
        A missing file is reported with its path and exits 1.
        """
        stderr = io.StringIO()
        error = self.assertRaises(
            SystemExit, Options(stderr=stderr).parseOptions, ["--config", "/nonexistent/golb.yaml"]
        )
        self.assertEqual(error.code, 1)
        self.assertIn("cannot read", stderr.getvalue())
        self.assertIn("/nonexistent/golb.yaml", stderr.getvalue())


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{makeService}.
    """

    def build(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(GOOD)
        options = Options()
        options.parseOptions(["--config", path])
        reactor = MemoryReactorClock()
        return makeService(options, reactor=reactor), reactor

    def test_namedChildren(self):
        """
        The tree has one C{listener:<name>} per listener, C{demo},
        C{health} and C{discovery}, which follow the same L{golb.app.Golb}.
        """
        service, reactor = self.build()
        names = sorted(child.name for child in service)
        self.assertEqual(names, ["access-log", "admin", "demo", "discovery", "health",
                                 "listener:alt", "listener:web", "metrics", "tracing"])
        self.assertIs(service.getServiceNamed("health").golb, service.golb)
        self.assertIs(service.getServiceNamed("listener:web").factory.resource.golb,
                      service.golb)

    def test_startsNothing(self):
        """
        Building the tree opens no socket and schedules no timer; starting it
        listens on every listener, demo backend and the metrics endpoint
        (on by default, port 9090).
        """
        service, reactor = self.build()
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertFalse(service.running)
        service.startService()
        self.addCleanup(service.stopService)
        ports = sorted(server[0] for server in reactor.tcpServers)
        self.assertEqual(ports, [0, 0, 3001, 3002, 8081, 9090])

    def test_tlsListener(self):
        """
        An HTTPS listener is served through L{golb.tls.ServerTLS} over its
        plain endpoint; its certificates are loaded when the tree is built,
        and broken ones stop twistd with one line per problem.
        """
        from golb.test.test_tls import ServerPKI
        from golb.tls import ServerTLS

        pki = ServerPKI(os.path.abspath(self.mktemp()))
        pair = pki.a.pair
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"""\
listeners:
  - name: secure
    address: "127.0.0.1:0"
    tls: {{certificates: [{{cert: "{pair.cert}", key: "{pair.key}"}}]}}
backend_pools: [{{name: default, backends: [{{url: "http://127.0.0.1:1"}}]}}]
""")
        options = Options()
        options.parseOptions(["--config", path])
        service = makeService(options, reactor=MemoryReactorClock())
        listener = service.getServiceNamed("listener:secure")
        self.assertIsInstance(listener.serverTLS, ServerTLS)
        self.assertIs(listener.factory.serverTLS, listener.serverTLS)
        self.assertEqual(listenerDescription(listener.listenerConfig),
                         "tcp:port=0:interface=127.0.0.1")
        with open(pair.key, "w") as f:
            f.write("not a key\n")
        e = self.assertRaises(SystemExit, makeService, options, reactor=MemoryReactorClock())
        self.assertIn(pair.key, str(e))


class _FakeTransport:
    def __init__(self):
        self.aborted = False

    def abortConnection(self):
        self.aborted = True


class _BusyChannel:
    """
    A connection whose response never ends.
    """

    def __init__(self):
        self.transport = _FakeTransport()
        self.drained = False

    def drain(self):
        self.drained = True


class _FakeSite:
    def __init__(self):
        self.openConnections = set()
        self.openTunnels = set()


class _FakeListener(Service):
    def __init__(self, site):
        self.factory = site
        self.stopped = False

    def stopService(self):
        self.stopped = True
        Service.stopService(self)


class DrainTests(SynchronousTestCase):
    """
    L{GolbService} stops gracefully within C{shutdown.grace}.
    """

    def build(self):
        from twisted.internet.task import Clock

        from golb.app import Golb
        from golb.config import parseConfig
        from golb.tap import GolbService

        config = parseConfig(
            'listeners: [{name: web, address: "127.0.0.1:0"}]\n'
            'backend_pools: [{name: default, backends: [{url: "http://127.0.0.1:1"}]}]\n'
            "shutdown: {grace: 5s}\n", "test.yaml")
        clock = Clock()
        golb = Golb(config, reactor=clock, upstreamFactory=lambda b, p, c: None)
        root = GolbService(golb, clock=clock)
        site = _FakeSite()
        listener = _FakeListener(site)
        listener.setName("listener:web")
        listener.setServiceParent(root)
        other = Service()
        other.setName("metrics")
        other.setServiceParent(root)
        root.startService()
        return root, clock, site, listener, other

    def test_graceOver(self):
        """
        Busy connections are asked to drain; when the grace is over they are
        aborted, and only then do the other services stop.
        """
        root, clock, site, listener, other = self.build()
        channel = _BusyChannel()
        site.openConnections.add(channel)
        d = root.stopService()
        self.assertTrue(listener.stopped)
        self.assertTrue(channel.drained)
        self.assertNoResult(d)
        self.assertTrue(other.running)
        clock.advance(4.9)
        self.assertFalse(channel.transport.aborted)
        self.assertTrue(other.running)
        clock.advance(0.2)
        self.assertTrue(channel.transport.aborted)
        self.successResultOf(d)
        self.assertFalse(other.running)

    def test_drainedEarly(self):
        """
        When the last connection closes before the grace, shutdown goes on
        at once.
        """
        root, clock, site, listener, other = self.build()
        channel = _BusyChannel()
        site.openConnections.add(channel)
        d = root.stopService()
        clock.advance(1)
        site.openConnections.discard(channel)
        clock.advance(0.1)
        self.successResultOf(d)
        self.assertFalse(channel.transport.aborted)
        self.assertFalse(other.running)


class ListenerReloadTests(SynchronousTestCase):
    """
    A reload follows the listeners' changes.
    """

    CONFIG = """\
listeners:
{listeners}backend_pools: [{{name: default, backends: [{{url: "http://127.0.0.1:1"}}]}}]
admin: {{enabled: false}}
monitoring: {{prometheus: {{enabled: false}}}}
"""

    def write(self, path, *listeners):
        lines = "".join(f'  - {{name: {name}, address: "127.0.0.1:{port}"}}\n'
                        for name, port in listeners)
        with open(path, "w") as f:
            f.write(self.CONFIG.format(listeners=lines))

    def test_addRemoveChange(self):
        """
        An unchanged listener keeps its service (and socket), a removed one
        stops listening, a changed one listens again on its new address, a
        new one starts listening.
        """
        path = self.mktemp()
        self.write(path, ("keep", 8001), ("gone", 8002), ("moved", 8003))
        options = Options()
        options.parseOptions(["--config", path])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        keep = service.getServiceNamed("listener:keep")
        gone = service.getServiceNamed("listener:gone")
        self.write(path, ("keep", 8001), ("moved", 8013), ("new", 8004))
        self.assertTrue(service.golb.reloadFile())
        names = sorted(child.name for child in service if child.name.startswith("listener:"))
        self.assertEqual(names, ["listener:keep", "listener:moved", "listener:new"])
        self.assertIs(service.getServiceNamed("listener:keep"), keep)
        self.assertFalse(gone.running)
        self.assertTrue(service.getServiceNamed("listener:new").running)
        ports = [port for port, *_ in reactor.tcpServers]
        self.assertEqual(ports, [8001, 8002, 8003, 8013, 8004])
        self.assertEqual(service.getServiceNamed("listener:moved").listenerConfig.address.port,
                         8013)


class FreezeTests(SynchronousTestCase):
    """
    L{golb.tap._freezeStartupObjects} keeps startup objects out of the
    cyclic collector's full collections.
    """

    def test_freeze(self):
        """
        On CPython, objects alive at startup end up frozen; on PyPy (no
        C{gc.freeze}) nothing happens and nothing fails.
        """
        import gc

        from golb.tap import _freezeStartupObjects

        if not hasattr(gc, "freeze"):
            _freezeStartupObjects()
            return
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        self.assertEqual(gc.get_freeze_count(), 0)
        _freezeStartupObjects()
        self.assertGreater(gc.get_freeze_count(), 1000)
