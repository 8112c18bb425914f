"""
L{AdminService}: serves the admin site on C{admin.address} while golb runs.
"""

from typing import Callable, Dict, Optional

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.web.server import Site

from golb._tracked import TrackedChannel
from golb.admin._auth import CSRF, Authenticator
from golb.admin._records import AuditLog, ErrorLog, RateMeter
from golb.admin.site import AdminResource

__all__ = ["AdminStartError", "AdminService", "AdminSite"]


class AdminStartError(Exception):
    """
    The admin site cannot start; the message says why and how to fix it.
    """


class AdminSite(Site):
    """
    The admin site: quiet (no Twisted access log line per request: the
    page polls every two seconds), tracking its connections.

    @ivar channels: the open connections.
    """

    protocol = TrackedChannel
    noisy = False
    displayTracebacks = False

    def __init__(self, resource: AdminResource, reactor=None):
        Site.__init__(self, resource, reactor=reactor)
        self.channels = set()

    def log(self, request):
        pass


class AdminService(Service):
    """
    Serves the admin site (HTML pages and the JSON API) on C{admin.address}
    when C{admin.enabled}; records recent errors and request rates while it
    runs.

    It refuses to start on an address other than loopback without
    authentication (the configuration refuses it too).

    Readiness (C{/readyz}) is C{ready()} when given; else C{golb.ready}
    when the L{golb.app.Golb} has that attribute; else whether every
    C{listener:<name>} sibling service is listening.

    @ivar resource: the L{AdminResource} while running.
    @ivar port: the listening port while running (L{None} otherwise).
    @ivar audit: the L{AuditLog} (kept across restarts of the service).
    @ivar errors: the L{ErrorLog} plugged into golb's observatory while
        running.
    @ivar rates: the L{RateMeter}, sampled every second while running.
    """

    name = "admin"
    log = Logger()

    def __init__(self, golb, reactor=None, ready: Optional[Callable[[], bool]] = None,
                 sites: Optional[Dict[str, object]] = None, address=None):
        """
        @param golb: the L{golb.app.Golb}.
        @param ready: tells whether golb serves its listeners (C{/readyz}).
        @param sites: the listeners' sites by name (their open connections
            are shown); by default those of the C{listener:<name>} siblings.
        @param address: the L{golb._units.Address} to listen on instead of
            C{admin.address} (tests: port 0).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.golb = golb
        self.reactor = reactor
        self._ready = ready
        self._probedOnce = False
        self._sites = sites
        self._address = address
        self.audit = AuditLog(reactor)
        self.errors = ErrorLog(reactor)
        self.rates = RateMeter(golb, reactor)
        self.csrf = CSRF()
        self.resource: Optional[AdminResource] = None
        self.site: Optional[AdminSite] = None
        self.port = None
        self._sampler: Optional[task.LoopingCall] = None
        self._adminConfig = None

    @property
    def config(self):
        return self.golb.config.admin

    @property
    def address(self):
        return self._address if self._address is not None else self.config.address

    def isReady(self) -> bool:
        """
        Whether golb serves its listeners and has finished its first round
        of health checks: every backend of a pool with a C{health_check} has
        had a probe (what C{/readyz} answers).  With C{workers: N}, every
        worker must be serving too (not while one is being replaced).  Once ready, it stays ready
        until golb stops (later probe results do not make a whole instance
        unready).
        """
        if self._ready is not None:
            return bool(self._ready())
        if not getattr(self.golb, "ready", False):
            self._probedOnce = False
            return False
        workers = getattr(self.golb, "workers", None)
        if workers is not None and not workers.serving:
            # workers: N: the parent is ready once every worker serves
            return False
        if not self._probedOnce:
            runtime = getattr(self.golb, "runtime", None)
            for pool in getattr(runtime, "pools", {}).values():
                if getattr(pool.config, "health_check", None) is None:
                    continue
                for backend in pool.backends:
                    if backend.health.lastResult is None:
                        return False
            self._probedOnce = True
        return True

    def listenerSites(self) -> Dict[str, object]:
        """
        The listeners' sites by name.
        """
        if self._sites is not None:
            return dict(self._sites)
        from golb.listener import listenerSites

        return listenerSites(self.parent)

    def startService(self) -> None:
        """
        Listen on the admin address; a port that cannot be had, or an
        address off loopback without authentication, fails the start (and
        golb's).
        """
        config = self.config
        if not config.enabled:
            Service.startService(self)
            return
        address = self.address
        auth = Authenticator(config.auth, self.reactor)
        if auth.open and not address.isLoopback():
            raise AdminStartError(
                f"admin.address {address} is not loopback and admin.auth has neither"
                " users_file nor token_file: anyone who can reach it could steer golb;"
                " set admin.auth or listen on 127.0.0.1")
        Service.startService(self)
        from twisted.internet.endpoints import serverFromString

        self.resource = AdminResource(
            self.golb, auth, self.reactor, audit=self.audit, errors=self.errors,
            rates=self.rates, ready=self.isReady, sites=self.listenerSites, csrf=self.csrf)
        self.site = AdminSite(self.resource, self.reactor)
        endpoint = serverFromString(self.reactor, address.endpointDescription())
        failures = []
        d = endpoint.listen(self.site)
        d.addCallback(self._listening, address, auth)
        d.addErrback(failures.append)
        if failures:
            self.running = False
            self.resource = self.site = None
            failures[0].raiseException()
        self.golb.observatory.add(self.errors)
        self._adminConfig = config
        self.golb.reloadObservers.append(self._reloaded)
        self._sampler = task.LoopingCall(self._sample)
        self._sampler.clock = self.reactor
        self._sampler.start(1.0, now=True)

    def _reloaded(self, ok: bool) -> None:
        """
        After a reload: new C{admin.auth} files take effect at once (unless
        that would leave a site listening off loopback without
        authentication); a new address or C{enabled} needs a restart.
        """
        old, new = self._adminConfig, self.golb.config.admin
        if not ok or new == old or self.resource is None:
            return
        if (new.address, new.enabled) != (old.address, old.enabled):
            self.log.warn("reload: admin.address and admin.enabled take effect on restart;"
                          " the admin site stays on {address}", address=str(self.address))
        if new.auth != old.auth:
            auth = Authenticator(new.auth, self.reactor)
            if auth.open and not self.address.isLoopback():
                self.log.error(
                    "reload: the admin site listens on {address}, off loopback: it keeps its"
                    " authentication until restart (admin.auth cannot be removed)",
                    address=str(self.address))
                return
            self.resource.auth = auth
            self.log.info("reload: admin site authentication is now {auth}",
                          auth="open (loopback)" if auth.open else "required")
        self._adminConfig = new

    def _sample(self) -> None:
        try:
            self.rates.sample()
        except Exception:
            self.log.failure("admin: sampling request counters failed")

    def _listening(self, port, address, auth) -> None:
        self.port = port
        host = port.getHost()
        shown = f"[{address.host}]" if ":" in address.host else (address.host or "*")
        self.log.info("admin site on http://{host}:{port}/ ({auth})", host=shown,
                      port=getattr(host, "port", address.port),
                      auth="open: loopback without authentication" if auth.open
                      else "authentication required")

    def stopService(self):
        """
        Stop listening, close the admin connections and stop recording.

        @return: a L{Deferred} firing when the port and connections are closed.
        """
        Service.stopService(self)
        sampler, self._sampler = self._sampler, None
        if sampler is not None and sampler.running:
            sampler.stop()
        self.golb.observatory.remove(self.errors)
        if self._reloaded in self.golb.reloadObservers:
            self.golb.reloadObservers.remove(self._reloaded)
        waits = []
        port, self.port = self.port, None
        if port is not None:
            waits.append(maybeDeferred(port.stopListening))
        if self.site is not None:
            for channel in list(self.site.channels):
                waits.append(channel.gone)
                channel.transport.abortConnection()
        return DeferredList(waits, consumeErrors=True)
