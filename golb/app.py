"""
L{Golb}: the root of golb's object graph.

It holds the current configuration and L{golb.runtime.Runtime}, and the
backend state that survives reloads.  Every service receives it (or what it
needs of it) by constructor.
"""

from typing import Optional

from twisted.logger import Logger

from golb.pool import Backend, BackendRegistry
from golb.runtime import Runtime

__all__ = ["Golb", "makeUpstream"]


def _upstreamSettings(poolConfig):
    return (
        poolConfig.keepalive.max_idle_per_backend,
        poolConfig.keepalive.idle_timeout,
        poolConfig.timeouts.connect,
        poolConfig.timeouts.response_header,
        poolConfig.timeouts.idle,
        poolConfig.tls,
    )


def makeUpstream(reactor):
    """
    A factory for L{golb.pool.BackendRegistry}: builds each backend's
    L{golb.upstream.UpstreamPool} from its pool's timeouts and keep-alive
    settings, keeping the existing one when those did not change.
    """
    from golb.upstream import UpstreamPool

    def factory(backend: Backend, poolConfig, current):
        settings = _upstreamSettings(poolConfig)
        if current is not None and getattr(current, "golbSettings", None) == settings:
            return current
        tls = None
        if backend.scheme == "https":
            from golb.tls import upstreamCreator

            tls = upstreamCreator(backend, poolConfig.tls)
        upstream = UpstreamPool(
            reactor,
            backend.host,
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
        self.runtime: Optional[Runtime] = None
        self.runtime = Runtime.build(config, self.backends, self.reactor)
        self.backends.built()

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
        runtime = Runtime.build(config, self.backends, self.reactor)
        self.runtime = runtime
        self.config = config
        self.backends.retain(runtime.pools.values())
        return runtime

    def close(self):
        """
        Close every backend connection.

        @return: a L{Deferred} that fires when they are gone.
        """
        return self.backends.close()
