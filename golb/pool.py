"""
Backend pools and the live state of each backend.

A L{Backend} is mutable state that outlives configuration reloads: it is keyed
by (pool name, url) and handed from one L{golb.runtime.Runtime} to the next
while the backend stays configured.  A L{Pool} is rebuilt on each reload; it
holds the configuration, the backends in order and the balancer.
"""

import collections
import hashlib
import time
from typing import Callable, Deque, Dict, FrozenSet, Iterable, List, Optional, Tuple

import attr
from twisted.logger import Logger

from golb.balancing import IBalancer, balancerFor
from golb.health import HealthState, OutlierDetector

__all__ = ["ADMIN_STATES", "Backend", "BackendRegistry", "Members", "Pool", "RetryBudget"]

ADMIN_STATES = ("ready", "drain", "maint")


@attr.s(frozen=True)
class Members:
    """
    The members of a pool found by discovery.

    @ivar backends: a L{golb.config.BackendConfig} per member.
    @ivar addresses: the IP address to connect to, by backend URL, for
        members named by a host name that golb resolved itself.
    """

    backends: Tuple[object, ...] = attr.ib(converter=tuple)
    addresses: Dict[str, str] = attr.ib(factory=dict)


@attr.s(eq=False, repr=False)
class Backend:
    """
    One backend server and its live state (mutable).

    @ivar pool: the name of the pool it belongs to.
    @ivar id: its id in admin and metrics: the configured name, else host:port.
    @ivar url: the configured URL.
    @ivar state: the admin state: C{ready}, C{drain} (no new requests; sticky
        ones still) or C{maint} (nothing).
    @ivar healthy: the verdict of health checking.
    @ivar inFlight: requests being forwarded to it right now.
    @ivar upstream: its connection pool (a L{golb.upstream.UpstreamPool}).
    @ivar latency: peak-EWMA time to response head, in seconds (0 = none yet).
    @ivar slowStart: its pool's C{slow_start}, in seconds.
    @ivar readySince: when its slow-start ramp began (0 = not ramping).
    @ivar health: the details behind L{healthy} (L{golb.health.HealthState}).
    @ivar address: the IP address to connect to when it is not L{host}
        (members found by DNS SRV discovery); L{None} = connect to L{host}.
    """

    pool: str = attr.ib()
    id: str = attr.ib()
    url: str = attr.ib()
    scheme: str = attr.ib()
    host: str = attr.ib()
    port: int = attr.ib()
    pathPrefix: str = attr.ib(default="")
    weight: int = attr.ib(default=1)
    maxConnections: int = attr.ib(default=0)
    backup: bool = attr.ib(default=False)
    state: str = attr.ib(default="ready")
    healthy: bool = attr.ib(default=True)
    inFlight: int = attr.ib(default=0)
    requests: int = attr.ib(default=0)
    failures: int = attr.ib(default=0)
    upstream: Optional[object] = attr.ib(default=None)
    latency: float = attr.ib(default=0.0)
    slowStart: float = attr.ib(default=0.0)
    readySince: float = attr.ib(default=0.0)
    clock: Callable[[], float] = attr.ib(default=time.monotonic)
    address: Optional[str] = attr.ib(default=None)
    health: HealthState = attr.ib(factory=HealthState)
    _hostHeader: Optional[Tuple[tuple, bytes]] = attr.ib(default=None, init=False)

    def markReady(self) -> None:
        """
        The backend has just become usable again (recovered, set ready, or
        added by a reload): with C{slow_start} its share ramps up from now.
        """
        self.readySince = self.clock()

    @property
    def effectiveWeight(self) -> int:
        """
        Its weight, scaled by how far it is into its C{slow_start} ramp (at
        least 1 while its weight is not 0).
        """
        weight = self.weight
        if not self.slowStart or not self.readySince or not weight:
            return weight
        elapsed = self.clock() - self.readySince
        if elapsed >= self.slowStart:
            self.readySince = 0.0
            return weight
        return max(1, int(weight * elapsed / self.slowStart))

    def recordLatency(self, seconds: float) -> None:
        """
        Fold one response time into the peak-EWMA L{latency}: a slower sample
        is taken at once, faster ones pull it down gradually.
        """
        if seconds >= self.latency or not self.latency:
            self.latency = seconds
        else:
            self.latency = 0.7 * self.latency + 0.3 * seconds

    def __repr__(self) -> str:
        return f"<Backend {self.pool}/{self.id} {self.state} healthy={self.healthy}>"

    @property
    def stickyValue(self) -> bytes:
        """
        The opaque sticky-cookie value naming this backend (a hash of its pool
        and URL, so the cookie does not reveal backend addresses).
        """
        digest = hashlib.blake2b(f"{self.pool} {self.url}".encode(), digest_size=8)
        return digest.hexdigest().encode("ascii")

    @property
    def hostHeader(self) -> bytes:
        """
        The Host header naming this backend itself (default ports omitted),
        remembered while its scheme, host and port stay the same.
        """
        key = (self.scheme, self.host, self.port)
        cached = self._hostHeader
        if cached is not None and cached[0] == key:
            return cached[1]
        default = 443 if self.scheme == "https" else 80
        if ":" in self.host:
            host = f"[{self.host}]"
        else:
            host = self.host
        if self.port == default:
            value = host.encode("ascii")
        else:
            value = f"{host}:{self.port}".encode("ascii")
        self._hostHeader = (key, value)
        return value

    def available(self) -> bool:
        """
        Whether it may take a new request: ready, healthy and under its
        connection limit.
        """
        if self.state != "ready" or not self.healthy:
            return False
        return not (self.maxConnections and self.inFlight >= self.maxConnections)


class RetryBudget:
    """
    Bounds retries to a share of a pool's recent requests, so that retries
    cannot multiply the load on a pool that is already failing.

    Requests and retries are counted in a sliding window of C{WINDOW} seconds
    (two buckets, the older one weighted by how much of it is still inside the
    window).  A floor of C{MIN_RETRIES} per window lets quiet pools retry.

    @ivar share: the allowed ratio of retries to requests (0..1).
    """

    WINDOW = 10.0
    MIN_RETRIES = 10

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic):
        self.share = share
        self.clock = clock
        self._start = clock()
        self._requests = 0
        self._retries = 0
        self._previousRequests = 0
        self._previousRetries = 0

    def _roll(self) -> float:
        now = self.clock()
        elapsed = now - self._start
        if elapsed >= self.WINDOW:
            if elapsed >= 2 * self.WINDOW:
                self._previousRequests = self._previousRetries = 0
            else:
                self._previousRequests = self._requests
                self._previousRetries = self._retries
            self._requests = self._retries = 0
            self._start = now - (elapsed % self.WINDOW)
            elapsed = now - self._start
        return 1.0 - elapsed / self.WINDOW

    def request(self) -> None:
        """
        Count a new client request.
        """
        self._roll()
        self._requests += 1

    def tryRetry(self) -> bool:
        """
        Whether one more retry fits in the budget; if so it is counted.
        """
        weight = self._roll()
        requests = self._requests + self._previousRequests * weight
        retries = self._retries + self._previousRetries * weight
        if retries >= max(self.MIN_RETRIES, self.share * requests):
            return False
        self._retries += 1
        return True


@attr.s(eq=False)
class Pool:
    """
    A backend pool as configured, with its balancer.

    @ivar config: the L{golb.config.PoolConfig}.
    @ivar backends: primaries and backups in configuration order.
    @ivar active: client requests being forwarded through it now.
    @ivar budget: its L{RetryBudget}.
    @ivar panicThreshold: the healthy share below which health is ignored.
    @ivar panicking: whether the last pick was made in panic mode.
    @ivar stickyValues: backends by sticky-cookie value (empty: not sticky).
    @ivar waiting: requests queued for a free slot (the C{queue}), oldest first.
    @ivar outliers: its passive health L{OutlierDetector}, or L{None}.
    @ivar inFlight: requests being forwarded to its backends now.
    @ivar overflows: how often each C{circuit_breaker} limit refused a
        request, by limit name.
    """

    name: str = attr.ib()
    config: object = attr.ib()
    backends: List[Backend] = attr.ib()
    balancer: IBalancer = attr.ib()
    active: int = attr.ib(default=0)
    panicThreshold: float = attr.ib(default=0.5)
    panicking: bool = attr.ib(default=False)
    stickyValues: Dict[bytes, Backend] = attr.ib(factory=dict)
    waiting: Deque[Callable[[], None]] = attr.ib(factory=collections.deque)
    budget: "RetryBudget" = attr.ib(factory=lambda: RetryBudget(0.2))
    outliers: Optional[OutlierDetector] = attr.ib(default=None)
    inFlight: int = attr.ib(default=0)
    overflows: Dict[str, int] = attr.ib(factory=lambda: collections.Counter())
    limited: bool = attr.ib(default=False)
    _retryOn: Optional[FrozenSet[str]] = attr.ib(default=None, init=False, repr=False)

    @property
    def retryOn(self) -> FrozenSet[str]:
        """
        The failure kinds and status codes its C{retries.on} names, as text.
        """
        retryOn = self._retryOn
        if retryOn is None:
            retryOn = self._retryOn = frozenset(str(x) for x in self.config.retries.on)
        return retryOn

    def refusal(self, backend: Backend, queued: bool = False) -> Optional[str]:
        """
        Whether the pool's C{circuit_breaker} refuses one more request to
        C{backend} now, and why.

          - C{max_requests}: requests in flight to the pool's backends;
          - C{max_connections}: connections open to them (connecting, busy
            or idle).  A request that can reuse an idle connection to its
            backend needs none; otherwise an idle connection to another
            backend is closed to make room, if there is one;
          - C{max_pending}: requests waiting for a connection: queued for a
            free backend slot, or waiting for a new connection to be made.

        @param queued: the request is about to wait in the queue rather
            than go to C{backend} now (which may be L{None}).
        @return: L{None}, or a message naming the limit that was hit.
        """
        limits = self.config.circuit_breaker
        if limits.max_requests and self.inFlight >= limits.max_requests:
            return self._overflow("max_requests", limits.max_requests,
                                  "requests in flight")
        if limits.max_pending:
            pending = len(self.waiting) + sum(
                b.upstream.connectingCount for b in self.backends
                if b.upstream is not None and hasattr(b.upstream, "connectingCount")
            )
            needsConnection = queued or (
                backend is not None and backend.upstream is not None
                and not _canReuse(backend.upstream)
            )
            if needsConnection and pending >= limits.max_pending:
                return self._overflow("max_pending", limits.max_pending, "pending requests")
        if limits.max_connections and backend is not None and not queued:
            upstream = backend.upstream
            if upstream is not None and not _canReuse(upstream):
                total = 0
                spare = None
                for member in self.backends:
                    other = member.upstream
                    if other is None or not hasattr(other, "connectionCount"):
                        continue
                    total += other.connectionCount
                    if spare is None and other.idleCount:
                        spare = other
                if total >= limits.max_connections:
                    if spare is None:
                        return self._overflow("max_connections", limits.max_connections,
                                              "connections open")
                    spare.closeOneIdle()
        return None

    def _overflow(self, limit: str, value: int, what: str) -> str:
        self.overflows[limit] += 1
        return f"pool {self.name}: circuit_breaker.{limit} ({value} {what}) reached"

    def candidates(self, exclude: Iterable[Backend] = ()) -> List[Backend]:
        """
        The backends that may take a new request: available primaries, else
        available backups.

        Panic mode: when fewer than C{panic_threshold} of the pool's ready
        backends are healthy, health is ignored and every ready backend under
        its connection limit is a candidate, so that a health-check outage
        (or a real one affecting most backends) spreads load instead of
        crushing the few survivors.
        """
        # the few backends an exchange already tried come as a list
        excluded = (
            exclude if isinstance(exclude, (set, frozenset, list, tuple)) else set(exclude)
        )
        primaries = []
        backups = []
        ready = 0
        healthy = 0
        for backend in self.backends:
            if backend.state != "ready":
                continue
            ready += 1
            if not backend.healthy:
                continue
            healthy += 1
            if backend in excluded or (
                backend.maxConnections and backend.inFlight >= backend.maxConnections
            ):
                # not available (see Backend.available)
                continue
            (backups if backend.backup else primaries).append(backend)
        if ready and healthy < self.panicThreshold * ready:
            self.panicking = True
            everyone = [
                backend for backend in self.backends
                if backend.state == "ready" and backend not in excluded
                and not (backend.maxConnections and backend.inFlight >= backend.maxConnections)
            ]
            return everyone
        self.panicking = False
        return primaries or backups

    def saturated(self, exclude: Iterable[Backend] = ()) -> bool:
        """
        Whether some ready, healthy backend is only held back by its
        C{max_connections}: then a request may wait for it in the queue.
        """
        for backend in self.backends:
            if backend in exclude or backend.state != "ready" or not backend.healthy:
                continue
            if backend.maxConnections and backend.inFlight >= backend.maxConnections:
                return True
        return False

    def wait(self, wake: Callable[[], None]) -> bool:
        """
        Queue C{wake} to be called when a backend frees a slot.

        @return: C{False} when the queue is full (or disabled).
        """
        if len(self.waiting) >= self.config.queue.max:
            return False
        self.waiting.append(wake)
        return True

    def unwait(self, wake: Callable[[], None]) -> None:
        """
        Forget a queued C{wake} (its client left or it timed out).
        """
        try:
            self.waiting.remove(wake)
        except ValueError:
            pass

    def slotFreed(self) -> None:
        """
        A backend finished a request: wake the longest-waiting request.
        """
        if self.waiting:
            self.waiting.popleft()()

    def stickyBackend(self, request, exclude: Iterable[Backend] = ()) -> Optional[Backend]:
        """
        The backend named by the request's sticky cookie, if the pool has
        sticky sessions and that backend may still serve it: ready or
        draining (a drained backend keeps its sessions), healthy, under its
        connection limit and not already tried.
        """
        cookie = self.config.sticky.cookie if self.config is not None else None
        if not cookie or request is None:
            return None
        value = request.getCookie(cookie.encode("ascii"))
        if not value:
            return None
        backend = self.stickyValues.get(value)
        if backend is None or backend in exclude:
            return None
        if backend.state == "maint" or not backend.healthy:
            return None
        if backend.maxConnections and backend.inFlight >= backend.maxConnections:
            return None
        return backend

    def pick(self, request, exclude: Iterable[Backend] = ()) -> Optional[Backend]:
        """
        Choose a backend for C{request}, or L{None} when none may take it:
        its sticky backend when it has one, else the balancer's choice.
        """
        if self.stickyValues:
            sticky = self.stickyBackend(request, exclude)
            if sticky is not None:
                return sticky
        candidates = self.candidates(exclude)
        if not candidates:
            return None
        return self.balancer.pick(request, candidates)


def _canReuse(upstream) -> bool:
    """
    Whether a request to C{upstream} can go out without a new connection: an
    idle HTTP/1.1 connection, or an HTTP/2 one with a free stream.
    """
    capacity = getattr(upstream, "hasCapacity", None)
    if capacity is not None:
        return capacity
    return bool(getattr(upstream, "idleCount", 1))


class BackendRegistry:
    """
    Every L{Backend} ever built, keyed by (pool, url), so that state survives a
    reload when a backend stays configured.

    @ivar upstreamFactory: called with a L{Backend}, its pool's configuration
        and its current connection pool (or L{None}); returns the connection
        pool to use from now on: the current one when it still fits.
    """

    log = Logger()

    def __init__(
        self,
        upstreamFactory: Optional[Callable[[Backend, object, object], object]] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._backends: Dict[Tuple[str, str], Backend] = {}
        self.upstreamFactory = upstreamFactory
        self.clock = clock
        self._built = False

    def __iter__(self):
        return iter(list(self._backends.values()))

    def get(self, pool: str, url: str) -> Optional[Backend]:
        return self._backends.get((pool, url))

    def buildPool(self, poolConfig, members=None) -> Pool:
        """
        The L{Pool} for a L{golb.config.PoolConfig}, reusing the existing
        L{Backend} of every (pool, url) already known and updating its
        configured attributes.

        @param members: for a pool with C{discovery}, its current members as
            a L{Members}; L{None} = the configured C{backends}.
        """
        backends = self.buildBackends(poolConfig, members)
        return Pool(
            name=poolConfig.name,
            config=poolConfig,
            backends=backends,
            balancer=balancerFor(poolConfig.algorithm, poolConfig.hash_on),
            budget=RetryBudget(poolConfig.retries.budget, self.clock),
            panicThreshold=poolConfig.panic_threshold,
            stickyValues=(
                {backend.stickyValue: backend for backend in backends}
                if poolConfig.sticky.cookie else {}
            ),
            limited=any(attr.astuple(poolConfig.circuit_breaker)),
        )

    def buildBackends(self, poolConfig, members=None) -> List[Backend]:
        """
        The L{Backend}s of a pool: its configured C{backends}, or C{members}.
        """
        if members is None:
            backendConfigs, addresses = poolConfig.backends, {}
        else:
            backendConfigs, addresses = members.backends, members.addresses
        backends = []
        for backendConfig in backendConfigs:
            key = (poolConfig.name, backendConfig.url)
            backend = self._backends.get(key)
            if backend is None:
                backend = Backend(
                    pool=poolConfig.name,
                    id=backendConfig.name,
                    url=backendConfig.url,
                    scheme=backendConfig.scheme,
                    host=backendConfig.host,
                    port=backendConfig.port,
                    pathPrefix=backendConfig.path_prefix,
                )
                self._backends[key] = backend
                backend.clock = self.clock
                if self._built:
                    # added by a reload: ramp it up like a recovered backend
                    backend.slowStart = poolConfig.slow_start
                    backend.markReady()
            backend.id = backendConfig.name
            backend.weight = backendConfig.weight
            backend.maxConnections = backendConfig.max_connections
            backend.backup = backendConfig.backup
            backend.slowStart = poolConfig.slow_start
            backend.address = addresses.get(backendConfig.url)
            if self.upstreamFactory is not None:
                old = backend.upstream
                backend.upstream = self.upstreamFactory(backend, poolConfig, old)
                if old is not None and old is not backend.upstream:
                    _closeLater(old)
            backends.append(backend)
        return backends

    def built(self) -> None:
        """
        The first runtime is built: backends added from now on come from
        reloads, and slow-start.
        """
        self._built = True

    def retain(self, pools: Iterable[Pool]):
        """
        Forget the backends no longer in any of C{pools}, closing their idle
        connections (requests in flight finish on their own).

        @return: the forgotten backends.
        """
        keep = set()
        for pool in pools:
            for backend in pool.backends:
                keep.add((backend.pool, backend.url))
        gone = []
        for key in list(self._backends):
            if key not in keep:
                backend = self._backends.pop(key)
                gone.append(backend)
                if backend.upstream is not None:
                    _closeLater(backend.upstream)
        return gone

    def close(self):
        """
        Close every backend's connections.

        @return: a L{Deferred} that fires when they are all gone.
        """
        from twisted.internet.defer import DeferredList

        ds = []
        for backend in self._backends.values():
            timer, backend.health.ejectionTimer = backend.health.ejectionTimer, None
            if timer is not None and timer.active():
                timer.cancel()
            if backend.upstream is not None:
                ds.append(backend.upstream.close())
        return DeferredList(ds, consumeErrors=True)


def _closeLater(upstream) -> None:
    """
    Close an upstream connection pool's idle connections; active ones finish
    their requests and are then closed instead of being kept.
    """
    closeIdle = getattr(upstream, "closeCachedConnections", None)
    if closeIdle is not None:
        d = closeIdle()
        if d is not None:
            d.addErrback(lambda f: BackendRegistry.log.failure("closing upstream", f))
