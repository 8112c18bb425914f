"""
The twistd plugin's options and service maker: C{twistd golb --config PATH}.

L{makeService} builds (never starts) one named L{MultiService}:
C{listener:<name>} for each listener and C{demo} for the demo backends; later
siblings (health, admin, metrics, tracing, manhole) hang off the same tree.
"""

import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from golb import __version__
from golb.config import ConfigError, loadConfigText

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
            self["loaded"], self["configText"] = loadConfigText(path)
        except ConfigError as e:
            for problem in e.problems:
                self.stderr.write(f"{problem}\n")
            self.stderr.write(f"golb: {len(e.problems)} problem(s) in {path}; nothing started\n")
            self.stderr.flush()
            raise SystemExit(1) from None
        except OSError as e:
            raise usage.UsageError(f"cannot read {path}: {e.strerror or e}") from None
        # twistd installs its default reactor only when something first
        # imports it; golb's goes in first unless -r chose another
        from golb.reactor import installIfUnchosen

        installIfUnchosen()


def listenerDescription(listener) -> str:
    """
    The Twisted server endpoint string a listener listens on: its
    C{endpoint}, else its C{address}.  For a TLS listener this is the plain
    endpoint under the TLS layer (see L{listenerService}).
    """
    return listener.endpointDescription()


def _socketError(error) -> str:
    strerror = getattr(error, "strerror", None)
    return (strerror or str(error)).lower()


def _sameSocket(old, new) -> bool:
    """
    Whether two configurations of a listener can share its socket: same
    address or endpoint, TLS, redirect, PROXY protocol and HTTP/2 settings.
    """
    return (
        old.endpointDescription() == new.endpointDescription()
        and old.tls == new.tls
        and old.redirect_to_https == new.redirect_to_https
        and old.proxy_protocol == new.proxy_protocol
        and old.http2 == new.http2
    )


def _applyLimits(site, listener) -> None:
    """
    Give a listener's site new limits and timeouts, for its new connections.
    """
    if site is None:
        return
    site.maxHeaderBytes = listener.max_header_bytes
    site.maxBodyBytes = listener.max_body_bytes
    site.requestHeaderTimeout = listener.timeouts.request_header
    site.idleTimeout = listener.timeouts.idle
    site.timeOut = listener.timeouts.idle


def _networks(networks):
    import ipaddress

    return tuple(
        ipaddress.ip_network(network) if isinstance(network, str) else network
        for network in networks
    )


class GolbService(MultiService):
    """
    The root of golb's service tree.

    @ivar golb: the L{golb.app.Golb} application root.
    """

    log = Logger()

    serverOptions = None
    logObserver = None
    #: with C{workers: N}, the parent's L{golb.workers.WorkerSupervisor}
    supervisor = None

    def __init__(self, golb, reactor=None, clock=None):
        MultiService.__init__(self)
        self.golb = golb
        self.reactor = reactor
        if clock is None:
            clock = reactor
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self._previousHandler = None
        self._stopping = False
        self._backgroundDrains = []

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

    def privilegedStartService(self):
        """
        Bind the listeners (before twistd drops privileges); a port that
        cannot be had stops golb with one line saying which and why.
        """
        from twisted.internet.error import CannotListenError

        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as e:
            raise SystemExit(f"golb: cannot listen on {e.interface or '*'}:{e.port}:"
                             f" {_socketError(e.socketError)}") from None

    def startService(self):
        from twisted.internet.error import CannotListenError

        try:
            MultiService.startService(self)
        except CannotListenError as e:
            raise SystemExit(f"golb: cannot listen on {e.interface or '*'}:{e.port}:"
                             f" {_socketError(e.socketError)}") from None
        self.golb.ready = True
        _freezeStartupObjects()
        config = self.golb.config
        self.log.info(
            "golb {version} started from {file}", version=__version__, file=config.filename
        )
        self.golb.reloadObservers.append(self._reloaded)
        self._installSIGHUP()
        if self.reactor is not None:
            self.reactor.callWhenRunning(self._installShutdownSignals)

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

    def reload(self, text=None) -> bool:
        """
        Reload the configuration file now (what SIGHUP does).

        @param text: the file's text as the parent of C{workers: N} read it
            (a worker reloads what its parent checked).
        @return: whether the new configuration is in place.
        """
        self.log.info("reloading {file}", file=self.golb.config.filename)
        ok = self.golb.reloadFile(text=text)
        self.reloadCertificates()
        if ok and self.logObserver is not None:
            self.logObserver.setLevel(self.golb.config.monitoring.logging.level)
        return ok

    def reloadCertificates(self) -> None:
        """
        Read the HTTPS listeners' certificate files again (SIGHUP): new
        handshakes use them, open connections keep theirs; a broken file
        keeps the current certificates (and is logged).
        """
        for child in self._listeners():
            serverTLS = getattr(child, "serverTLS", None)
            if serverTLS is not None:
                serverTLS.reload()

    def _installShutdownSignals(self) -> None:
        """
        Replace the reactor's SIGTERM and SIGINT handlers (installed when it
        started running) with golb's: drain, then exit 0.  twistd would
        otherwise re-raise the signal after shutdown and exit 143.  A second
        signal while draining closes every connection at once.
        """
        import signal

        reactor = self.reactor

        def handler(signum, frame):
            reactor.callFromThread(self._shutdownSignal, signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(signum, handler)
            except (ValueError, OSError):  # pragma: no cover (not the main thread)
                return

    def _shutdownSignal(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        if self._stopping:
            self.log.warn("{signal} again: closing every connection now", signal=name)
            self._closeEverything()
            return
        self.log.info("{signal}: shutting down (grace {grace}s)", signal=name,
                      grace=self.golb.config.shutdown.grace)
        self.reactor.stop()

    def _reloaded(self, ok: bool) -> None:
        """
        After a successful reload (SIGHUP or admin API): follow the
        listeners' changes.
        """
        if ok and self.running and not self._stopping:
            if self.supervisor is not None:
                self.supervisor.reloaded(ok)
                return
            d = self.updateListeners()
            d.addErrback(lambda f: self.log.failure("updating the listeners failed", f))

    @defer.inlineCallbacks
    def updateListeners(self):
        """
        Match the listening sockets to the current configuration:

          - a listener whose configuration did not change keeps its socket
            and connections;
          - one whose socket settings (address or endpoint, TLS, redirect,
            PROXY protocol) did not change keeps its socket too, its new
            limits and timeouts applying to new connections;
          - a removed one stops accepting and drains its connections (up to
            C{shutdown.grace}) in the background;
          - one whose socket settings changed is removed that way, then
            listens again with its new settings;
          - a new one starts listening.

        Every site learns the new C{trusted_proxies}.  A listener that cannot
        listen is logged and makes the reload count as failed.
        """
        config = self.golb.config
        wanted = {listener.name: listener for listener in config.listeners}
        current = {child.name[len("listener:"):]: child for child in self._listeners()}
        trusted = _networks(config.trusted_proxies)
        kept = set()
        problems = []
        for name, child in current.items():
            old = getattr(child, "listenerConfig", None)
            new = wanted.get(name)
            site = getattr(child, "factory", None)
            if site is not None:
                site.trustedProxies = trusted
            if new == old:
                kept.add(name)
                continue
            if new is not None and old is not None and _sameSocket(old, new):
                _applyLimits(site, new)
                child.listenerConfig = new
                kept.add(name)
                self.log.info("listener {name}: new limits and timeouts, same socket",
                              name=name)
                continue
            self.log.info("listener {name}: {what}", name=name,
                          what="changed, listening again" if new is not None else "removed")
            try:
                yield self.removeService(child)
            except Exception:
                self.log.failure("listener {name}: stopping it failed", name=name)
            if site is not None:
                self._drainInBackground(site)
        for name, listener in wanted.items():
            if name in kept:
                continue
            service = None
            try:
                service = listenerService(self.golb, listener, self.clock)
                service.setServiceParent(self)
            except Exception as e:
                self.log.failure("listener {name}: cannot listen with its new settings",
                                 name=name)
                problems.append(f"listener {name}: cannot listen: {e}")
                if service is not None and service.parent is self:
                    self.removeService(service)
                continue
            if name not in current:
                self.log.info("listener {name}: added on {address}", name=name,
                              address=listener.endpointDescription())
        if problems:
            self.golb.listenerProblems(problems)

    def _drainInBackground(self, site) -> None:
        """
        Drain the connections of a listener that no longer listens.
        """
        for channel in list(site.openConnections):
            drain = getattr(channel, "drain", None)
            if drain is not None:
                drain()
        grace = self.golb.config.shutdown.grace

        def abort():
            for channel in list(site.openConnections):
                if channel.transport is not None:
                    channel.transport.abortConnection()
            for tunnel in list(getattr(site, "openTunnels", ())):
                tunnel.close()

        if site.openConnections or getattr(site, "openTunnels", None):
            call = self.clock.callLater(grace, abort)
            self._backgroundDrains.append(call)

    def _listeners(self):
        return [child for child in self if (child.name or "").startswith("listener:")]

    def stopService(self):
        """
        Shut down gracefully: stop accepting connections, let the requests
        and tunnels in progress finish for up to C{shutdown.grace} (idle
        keep-alive connections close at once, busy ones after their response
        with C{Connection: close}), close what is left, then stop the other
        services (health, metrics, access log, tracing...) and close the
        backend connections.
        """
        if self._previousHandler is not None:
            import signal

            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None
        self._stopping = True
        self.golb.ready = False
        Service.stopService(self)
        return self._stop()

    @defer.inlineCallbacks
    def _stop(self):
        for call in self._backgroundDrains:
            if call.active():
                call.cancel()
                call.func()
        self._backgroundDrains = []
        listeners = self._listeners()
        yield defer.DeferredList(
            [defer.maybeDeferred(child.stopService) for child in listeners], consumeErrors=True
        )
        yield self._drain(self.golb.config.shutdown.grace)
        others = [child for child in reversed(list(self)) if child not in listeners]
        yield defer.DeferredList(
            [defer.maybeDeferred(child.stopService) for child in others], consumeErrors=True
        )
        yield self.golb.close()

    def _sites(self):
        return [child.factory for child in self._listeners() if hasattr(child, "factory")]

    def _open(self):
        connections = tunnels = 0
        for site in self._sites():
            connections += len(site.openConnections)
            tunnels += len(getattr(site, "openTunnels", ()))
        return connections, tunnels

    @defer.inlineCallbacks
    def _drain(self, grace: float):
        clock = self.clock
        for site in self._sites():
            for channel in list(site.openConnections):
                drain = getattr(channel, "drain", None)
                if drain is not None:
                    drain()
                else:
                    channel.transport.loseConnection()
        connections, tunnels = self._open()
        if not connections and not tunnels:
            return
        self.log.info(
            "draining {connections} connection(s) and {tunnels} tunnel(s) for up to {grace}s",
            connections=connections, tunnels=tunnels, grace=grace,
        )
        deadline = clock.seconds() + grace
        while any(self._open()) and clock.seconds() < deadline:
            yield task.deferLater(clock, min(0.05, max(0.0, deadline - clock.seconds())),
                                  lambda: None)
        connections, tunnels = self._open()
        if connections or tunnels:
            self.log.warn(
                "grace of {grace}s over: closing {connections} connection(s) and {tunnels}"
                " tunnel(s)", grace=grace, connections=connections, tunnels=tunnels,
            )
            self._closeEverything()
        else:
            self.log.info("drained")

    def _closeEverything(self) -> None:
        for site in self._sites():
            for channel in list(site.openConnections):
                transport = channel.transport
                if transport is not None:
                    transport.abortConnection()
            for tunnel in list(getattr(site, "openTunnels", ())):
                tunnel.close()


def _freezeStartupObjects() -> None:
    """
    Move everything allocated while starting (modules, configuration,
    sites) out of the cyclic garbage collector's sight (CPython's
    C{gc.freeze}): its full collections then scan only what requests
    allocate, which halves golb's p99 latency under load (19 ms to 9.6 ms,
    keep-alive, 50 connections, one core).  PyPy has no C{gc.freeze}.
    """
    import gc

    freeze = getattr(gc, "freeze", None)
    if freeze is not None:
        gc.collect()
        freeze()


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
        h2c=listener.http2.h2c,
    )
    args.update(overrides)
    if listener.redirect_to_https is not None:
        from golb.tls import HTTPSRedirect

        return GolbSite(HTTPSRedirect(listener.redirect_to_https), **args)
    return GolbSite(RoutingResource(golb, listener.name), **args)


class ListenerService(StreamServerEndpointService):
    """
    The service of one listener.  An HTTPS listener's certificate checks
    (C{reload_interval}) run while it runs.

    @ivar serverTLS: the listener's L{golb.tls.ServerTLS}, or L{None}.
    @ivar listenerConfig: the listener configuration it was built from.
    """

    serverTLS = None
    listenerConfig = None

    def startService(self):
        StreamServerEndpointService.startService(self)
        if self.serverTLS is not None:
            self.serverTLS.startReloading()

    def stopService(self):
        if self.serverTLS is not None:
            self.serverTLS.stopReloading()
        return StreamServerEndpointService.stopService(self)


def listenerService(golb, listener, reactor, sockets=None) -> ListenerService:
    """
    The service listening for one configured listener (named
    C{listener:<name>}), serving a L{listenerSite}; HTTPS listeners through
    L{golb.tls.ServerTLS}.

    @param sockets: in a worker, the sockets the parent bound, C{{name:
        (file descriptor, address family)}}: the listener adopts its own.

    @raise golb.tls.TLSConfigError: a TLS listener's files cannot serve.
    """
    site = listenerSite(golb, listener, reactor)
    serverTLS = None
    if listener.tls is not None:
        from golb.tls import serverTLSFactory, tlsEndpoint

        serverTLS = serverTLSFactory(listener.tls, listener.name, reactor)
        endpoint = tlsEndpoint(reactor, listener, serverTLS)
    else:
        endpoint = serverFromString(reactor, listenerDescription(listener))
    if sockets is not None:
        from twisted.internet.endpoints import AdoptedStreamServerEndpoint

        fd, family = sockets[listener.name]
        adopted = AdoptedStreamServerEndpoint(reactor, fd, family)
        if serverTLS is not None:
            from golb.tls import TLSServerEndpoint

            endpoint = TLSServerEndpoint(adopted, serverTLS, reactor)
        else:
            endpoint = adopted
    service = ListenerService(endpoint, site)
    service._raiseSynchronously = True
    service.setName(f"listener:{listener.name}")
    service.listenerConfig = listener
    service.serverTLS = serverTLS
    site.serverTLS = serverTLS
    return service


def makeService(options, reactor=None) -> GolbService:
    """
    Build golb's service tree from parsed L{Options}; nothing listens and no
    timer runs until the tree is started.
    """
    signals = reactor is None
    if reactor is None:
        from twisted.internet import reactor
    from golb.admin import AdminService
    from golb.app import Golb
    from golb.demo import DemoService
    from golb.discovery import DiscoveryService
    from golb.health import HealthService
    from golb.observe.logs import AccessLogService
    from golb.observe.metrics import MetricsService
    from golb.observe.tracing import TracingService, TracingUnavailable

    config = options["loaded"]
    golb = Golb(config, reactor=reactor)
    golb.configText = options.get("configText")
    root = GolbService(golb, reactor if signals else None, clock=reactor)
    root.serverOptions = getattr(options, "parent", None)

    if config.workers > 1:
        from golb.workers import WorkerSupervisor

        root.supervisor = WorkerSupervisor(golb, reactor)
        root.supervisor.setServiceParent(root)
    else:
        _addListeners(root, golb, config, reactor)
    AdminService(golb, reactor).setServiceParent(root)
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
    if access.enabled and config.workers <= 1:
        AccessLogService(golb.observatory, access, reactor).setServiceParent(root)
    return root


def _addListeners(root, golb, config, reactor, sockets=None) -> None:
    from golb.tls import TLSConfigError

    for listener in config.listeners:
        try:
            service = listenerService(golb, listener, reactor, sockets)
        except TLSConfigError as e:
            raise SystemExit("\n".join(f"golb: {problem}" for problem in e.problems)) from None
        service.setServiceParent(root)


def makeWorkerService(config, reactor, sockets, index: int,
                      configText=None) -> GolbService:
    """
    The service tree of one worker of C{workers: N} (see L{golb.workers}):
    the listeners on the sockets the parent passed (C{{name: (fd,
    family)}}), discovery, tracing and the access log; health checks, the
    admin site, metrics endpoint and Manhole are the parent's.
    """
    from golb.app import Golb
    from golb.discovery import DiscoveryService
    from golb.observe.logs import AccessLogService
    from golb.observe.metrics import metricsFor
    from golb.observe.tracing import TracingService, TracingUnavailable

    golb = Golb(config, reactor=reactor)
    golb.workerIndex = index
    golb.configText = configText
    root = GolbService(golb, reactor)
    _addListeners(root, golb, config, reactor, sockets)
    DiscoveryService(golb, reactor).setServiceParent(root)
    try:
        TracingService(golb, reactor).setServiceParent(root)
    except TracingUnavailable as e:
        raise SystemExit(f"golb: {e}") from None
    access = config.monitoring.logging.access_log
    if access.enabled:
        AccessLogService(golb.observatory, access, reactor).setServiceParent(root)
    if config.monitoring.prometheus.enabled:
        metrics = metricsFor(golb)
        for child in root._listeners():
            metrics.addSite(child.factory, child.name[len("listener:"):])
        metrics.attach()
    return root
