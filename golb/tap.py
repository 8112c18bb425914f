"""
The twistd plugin's options and service maker: C{twistd golb --config PATH}.

L{makeService} builds (never starts) one named L{MultiService}:
C{listener:<name>} for each listener and C{demo} for the demo backends; later
siblings (health, admin, metrics, tracing, manhole) hang off the same tree.
"""

import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from golb import __version__
from golb.config import ConfigError, loadConfig

__all__ = ["GolbService", "Options", "listenerDescription", "listenerSite", "makeService"]


class Options(usage.Options):
    """
    Command-line options of C{twistd golb}.
    """

    synopsis = "--config PATH"
    longdesc = (
        "golb is an HTTP/S load balancer and reverse proxy. It reads one YAML "
        "file (see docs/configuration.md) and serves its listeners; check a "
        "file without starting anything with `golb check PATH`."
    )
    optParameters = [
        ["config", "c", None, "Path of golb's YAML configuration file (required)."],
    ]
    optFlags = [["version", "V", "Print golb's version and exit."]]

    def __init__(self, stderr=None):
        usage.Options.__init__(self)
        self.stderr = stderr if stderr is not None else sys.stderr

    def opt_version(self):
        """
        Print golb's version and exit.
        """
        print(f"golb {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        """
        Load and validate the configuration.  A broken file prints every
        problem, one per line, and exits 1 without starting anything.
        """
        path = self["config"]
        if not path:
            raise usage.UsageError(
                "--config is required, e.g. twistd golb --config config/golb.yaml"
            )
        try:
            self["loaded"] = loadConfig(path)
        except ConfigError as e:
            for problem in e.problems:
                self.stderr.write(f"{problem}\n")
            self.stderr.write(f"golb: {len(e.problems)} problem(s) in {path}; nothing started\n")
            self.stderr.flush()
            raise SystemExit(1) from None
        except OSError as e:
            raise usage.UsageError(f"cannot read {path}: {e.strerror or e}") from None


def listenerDescription(listener) -> str:
    """
    The Twisted server endpoint string for a listener: its C{endpoint}, else
    its C{address}, TLS listeners served with their default certificate.
    """
    description = listener.endpointDescription()
    tls = listener.tls
    if tls is not None and listener.endpoint is None:
        pair = tls.certificates[0]
        description = "ssl:" + description.split(":", 1)[1]
        description += f":certKey={_escape(pair.cert)}:privateKey={_escape(pair.key)}"
    return description


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


class GolbService(MultiService):
    """
    The root of golb's service tree.

    @ivar golb: the L{golb.app.Golb} application root.
    """

    log = Logger()

    serverOptions = None
    logObserver = None

    def __init__(self, golb, reactor=None):
        MultiService.__init__(self)
        self.golb = golb
        self.reactor = reactor
        self._previousHandler = None

    def setServiceParent(self, parent):
        """
        When twistd adopts the tree, give it golb's log observer (format and
        level from C{monitoring.logging}), built from twistd's own options
        (C{-n}, C{-l}, C{--syslog}).
        """
        from golb.observe.logs import installLogObserver

        self.logObserver = installLogObserver(
            parent, self.serverOptions, self.golb.config.monitoring.logging
        )
        MultiService.setServiceParent(self, parent)

    def startService(self):
        MultiService.startService(self)
        config = self.golb.config
        self.log.info(
            "golb {version} started from {file}", version=__version__, file=config.filename
        )
        self._installSIGHUP()

    def _installSIGHUP(self) -> None:
        """
        Reload the configuration file on SIGHUP.  The handler only schedules
        the reload on the reactor; reloads run one at a time, in order.
        """
        import signal
        import threading

        if self.reactor is None or not hasattr(signal, "SIGHUP"):
            return
        if threading.current_thread() is not threading.main_thread():
            return
        reactor = self.reactor

        def handler(signum, frame):
            reactor.callFromThread(self.reload)

        try:
            self._previousHandler = signal.signal(signal.SIGHUP, handler)
        except (ValueError, OSError):  # pragma: no cover (not the main thread)
            self._previousHandler = None

    def reload(self) -> bool:
        """
        Reload the configuration file now (what SIGHUP does).

        @return: whether the new configuration is in place.
        """
        self.log.info("reloading {file}", file=self.golb.config.filename)
        ok = self.golb.reloadFile()
        if ok and self.logObserver is not None:
            self.logObserver.setLevel(self.golb.config.monitoring.logging.level)
        return ok

    def stopService(self):
        if self._previousHandler is not None:
            import signal

            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None
        d = MultiService.stopService(self)

        def closeUpstreams(result):
            closing = self.golb.close()
            closing.addCallback(lambda _: result)
            return closing

        return d.addBoth(closeUpstreams)


def listenerSite(golb, listener, reactor, **overrides):
    """
    The L{golb.listener.GolbSite} serving one configured listener, with a
    L{golb.routing.RoutingResource} over C{golb} at its root.

    @param overrides: keyword arguments replacing those taken from the
        listener's configuration.
    """
    from golb.listener import GolbSite
    from golb.routing import RoutingResource

    args = dict(
        reactor=reactor,
        maxHeaderBytes=listener.max_header_bytes,
        maxBodyBytes=listener.max_body_bytes,
        requestHeaderTimeout=listener.timeouts.request_header,
        idleTimeout=listener.timeouts.idle,
        trustedProxies=golb.config.trusted_proxies,
        listenerName=listener.name,
        observatory=golb.observatory,
    )
    args.update(overrides)
    return GolbSite(RoutingResource(golb, listener.name), **args)


def makeService(options, reactor=None) -> GolbService:
    """
    Build golb's service tree from parsed L{Options}; nothing listens and no
    timer runs until the tree is started.
    """
    signals = reactor is None
    if reactor is None:
        from twisted.internet import reactor
    from golb.app import Golb
    from golb.demo import DemoService
    from golb.discovery import DiscoveryService
    from golb.health import HealthService
    from golb.observe.logs import AccessLogService
    from golb.observe.metrics import MetricsService
    from golb.observe.tracing import TracingService, TracingUnavailable

    config = options["loaded"]
    golb = Golb(config, reactor=reactor)
    root = GolbService(golb, reactor if signals else None)
    root.serverOptions = getattr(options, "parent", None)
    for listener in config.listeners:
        site = listenerSite(golb, listener, reactor)
        endpoint = serverFromString(reactor, listenerDescription(listener))
        service = StreamServerEndpointService(endpoint, site)
        service._raiseSynchronously = True
        service.setName(f"listener:{listener.name}")
        service.setServiceParent(root)
    if config.demo.backends > 0:
        demo = DemoService(config.demo.backends, config.demo.base_port, reactor=reactor)
        demo.setName("demo")
        demo.setServiceParent(root)
    HealthService(golb, reactor).setServiceParent(root)
    DiscoveryService(golb, reactor).setServiceParent(root)
    MetricsService(golb, reactor).setServiceParent(root)
    try:
        TracingService(golb, reactor).setServiceParent(root)
    except TracingUnavailable as e:
        raise SystemExit(f"golb: {e}") from None
    if config.manhole.enabled:
        from golb.manhole import ManholeService

        ManholeService(golb, config.manhole, reactor=reactor).setServiceParent(root)
    access = config.monitoring.logging.access_log
    if access.enabled:
        AccessLogService(golb.observatory, access, reactor).setServiceParent(root)
    return root
