"""
L{Golb}: the root of golb's object graph.

It holds the current configuration and L{golb.runtime.Runtime}, and the
backend state that survives reloads.  Every service receives it (or what it
needs of it) by constructor.
"""

from typing import Callable, Dict, List, Optional

from twisted.logger import Logger

from golb.observe import Observatory
from golb.policies import States
from golb.pool import Backend, BackendRegistry, Members
from golb.runtime import Runtime

__all__ = ["Golb", "makeUpstream"]


def _upstreamSettings(backend, poolConfig):
    return (
        poolConfig.keepalive.max_idle_per_backend,
        poolConfig.keepalive.idle_timeout,
        poolConfig.timeouts.connect,
        poolConfig.timeouts.response_header,
        poolConfig.timeouts.idle,
        poolConfig.tls,
        backend.address,
        poolConfig.protocol,
    )


def _listenerTLSProblems(config) -> List[str]:
    """
    What keeps the HTTPS listeners of C{config} from serving: unreadable,
    encrypted or mismatched certificate and key files (one line each).
    """
    from golb.tls import listenerTLSProblems

    problems: List[str] = []
    for listener in config.listeners:
        if listener.tls is not None:
            problems.extend(listenerTLSProblems(listener.tls, listener.name))
    return problems


def makeUpstream(reactor):
    """
    A factory for L{golb.pool.BackendRegistry}: builds each backend's
    L{golb.upstream.UpstreamPool} (L{golb.h2client.H2Pool} for pools with
    C{protocol: h2} or C{h2c}) from its pool's timeouts and keep-alive
    settings, keeping the existing one when those did not change.
    """
    from golb.h2client import H2Pool
    from golb.upstream import UpstreamPool

    def factory(backend: Backend, poolConfig, current):
        settings = _upstreamSettings(backend, poolConfig)
        if current is not None and getattr(current, "golbSettings", None) == settings:
            return current
        tls = None
        h2 = poolConfig.protocol in ("h2", "h2c")
        if backend.scheme == "https":
            from golb.tls import upstreamCreator

            tls = upstreamCreator(backend, poolConfig.tls, [b"h2"] if h2 else ())
        upstream = (H2Pool if h2 else UpstreamPool)(
            reactor,
            backend.address or backend.host,
            backend.port,
            tls=tls,
            maxIdle=poolConfig.keepalive.max_idle_per_backend,
            idleTimeout=poolConfig.keepalive.idle_timeout,
            connectTimeout=poolConfig.timeouts.connect,
            responseHeaderTimeout=poolConfig.timeouts.response_header,
            readTimeout=poolConfig.timeouts.idle,
        )
        upstream.golbSettings = settings
        return upstream

    return factory


class Golb:
    """
    The running balancer's state.

    @ivar config: the current L{golb.config.Config}.
    @ivar runtime: the current L{Runtime}; replaced whole on reload.
    @ivar backends: the L{BackendRegistry} of live backend state.
    @ivar reloads: reloads attempted (from a file: SIGHUP, admin).
    @ivar reloadFailures: those that failed and changed nothing.
    @ivar lastReload: C{{"at", "ok", "problems"}} of the last one, or L{None}.
    @ivar reloadObservers: callables told C{ok} after each reload attempt.
    @ivar ready: whether the service tree has started (listeners bound) and
        is not shutting down: the admin site's C{/readyz}.
    @ivar metrics: the L{golb.observe.metrics.Metrics} once metrics are on.
    @ivar observatory: the L{Observatory} that metrics, tracing and the
        access log plug into.
    @ivar policyStates: policy state kept across reloads (rate-limit
        buckets, store connections).
    @ivar members: the members of discovered pools (L{Members}) by pool
        name, as last reported by L{golb.discovery}.
    """

    log = Logger()

    def __init__(self, config, reactor=None, upstreamFactory=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        if upstreamFactory is None:
            upstreamFactory = makeUpstream(reactor)
        self.backends = BackendRegistry(upstreamFactory)
        self.config = config
        #: the text C{config} was parsed from, when known (see L{reloadFile})
        self.configText: Optional[str] = None
        self.members: Dict[str, Members] = {}
        self._observers: List[Callable[[], None]] = []
        self.runtime: Optional[Runtime] = None
        self.observatory = Observatory(reactor)
        self.metrics = None
        self.ready = False
        self.reloads = 0
        self.reloadFailures = 0
        self.lastReload: Optional[dict] = None
        self.reloadObservers: List[Callable[[bool], None]] = []
        self.policyStates = States()
        self.runtime = Runtime.build(config, self.backends, self.reactor,
                                     states=self.policyStates)
        self.runtime.observatory = self.observatory
        self.policyStates.commit()
        self.backends.built()

    def observe(self, observer: Callable[[], None]) -> Callable[[], None]:
        """
        Call C{observer} (with no arguments) whenever the set of pools or of
        their backends changes: after a reload or a discovery update.

        @return: a callable that stops the observation.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def _changed(self) -> None:
        for observer in list(self._observers):
            try:
                observer()
            except Exception:
                self.log.failure("observer {observer!r} failed", observer=observer)

    @property
    def pools(self):
        """
        The current pools by name.
        """
        return self.runtime.pools

    def reload(self, config) -> Runtime:
        """
        Swap in a new configuration: compile it, then replace the runtime in
        one assignment.  If compiling fails nothing changes and the error
        propagates.
        """
        runtime = Runtime.build(config, self.backends, self.reactor, self.members,
                                self.policyStates)
        runtime.observatory = self.observatory
        self.runtime = runtime
        self.policyStates.commit()
        self.config = config
        self.members = {
            name: found for name, found in self.members.items()
            if name in runtime.pools and runtime.pools[name].config.discovery is not None
        }
        self.backends.retain(runtime.pools.values())
        self._changed()
        return runtime

    def reloadFile(self, path: Optional[str] = None, text: Optional[str] = None) -> bool:
        """
        Reload from C{path} (default: the file the current configuration came
        from), or from C{text} as if read from it.  A file that cannot be
        read or has problems changes nothing:
        every problem is logged.  The outcome is kept in L{reloads},
        L{reloadFailures} and L{lastReload} (for metrics and the admin site).

        @return: whether the new configuration is in place.
        """
        from golb.config import ConfigError, loadConfigText

        path = path or self.config.filename
        now = self.reactor.seconds()
        try:
            config, text = loadConfigText(path, text)
            problems = _listenerTLSProblems(config)
            if problems:
                raise ConfigError(problems)
            self.reload(config)
        except ConfigError as e:
            for problem in e.problems:
                self.log.error("reload: {problem}", problem=str(problem))
            self._reloaded(now, False, [str(problem) for problem in e.problems])
            self.log.error("reload of {path} failed: {count} problem(s); the running"
                           " configuration is unchanged", path=path, count=len(e.problems))
            return False
        except Exception as e:
            self.log.failure("reload of {path} failed; the running configuration is unchanged",
                             path=path)
            self._reloaded(now, False, [f"{type(e).__name__}: {e}"])
            return False
        self.configText = text
        self._reloaded(now, True, [])
        from golb.config import summary

        self.log.info("reloaded {path}: {summary}", path=path, summary=summary(config))
        return True

    def _reloaded(self, at: float, ok: bool, problems) -> None:
        self.reloads += 1
        if not ok:
            self.reloadFailures += 1
        self.lastReload = {"at": at, "ok": ok, "problems": list(problems)}
        for observer in list(self.reloadObservers):
            try:
                observer(ok)
            except Exception:
                self.log.failure("reload observer {observer!r} failed", observer=observer)

    def listenerProblems(self, problems) -> None:
        """
        The listeners could not all follow the last reload: it counts as
        failed (the rest of the new configuration is in place).
        """
        for problem in problems:
            self.log.error("reload: {problem}", problem=problem)
        if self.lastReload is not None and self.lastReload.get("ok"):
            self.reloadFailures += 1
            self.lastReload = dict(self.lastReload, ok=False,
                                   problems=list(self.lastReload["problems"]) + list(problems))

    def setMembers(self, poolName: str, members: Members) -> None:
        """
        Replace the members of the discovered pool C{poolName}, in place in
        the current runtime: backends that stay keep their state, new ones
        start (with slow start), gone ones are forgotten once their requests
        finish.
        """
        pool = self.runtime.pools.get(poolName)
        if pool is None or pool.config.discovery is None:
            return
        self.members[poolName] = members
        backends = self.backends.buildBackends(pool.config, members)
        pool.backends = backends
        if pool.stickyValues or pool.config.sticky.cookie:
            pool.stickyValues = {backend.stickyValue: backend for backend in backends}
        self.backends.retain(self.runtime.pools.values())
        self._changed()

    def close(self):
        """
        Close every backend connection.

        @return: a L{Deferred} that fires when they are gone.
        """
        from twisted.internet.defer import DeferredList

        return DeferredList([self.backends.close(), self.policyStates.close()],
                            consumeErrors=True)
