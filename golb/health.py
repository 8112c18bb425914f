"""
Backend health: active probes and passive outlier detection.

Active probes (C{health_check}) run per backend on a L{LoopingCall} owned by
the L{HealthService}: an HTTP request on a connection of its own (nothing is
shared with client traffic) or a bare TCP connect.  A backend goes down after
C{unhealthy_threshold} failed probes in a row and comes back after
C{healthy_threshold} passed ones.

Passive health (C{passive_health}) watches real traffic: C{consecutive_failures}
connect errors, resets, timeouts or 5xx answers in a row eject a backend for
C{ejection_time}, twice as long on each repeat (up to ten times), never more
than C{max_ejection_percent} of its pool at once.  When its time is up, a pool
with active probes takes it back on its next passing probe; a pool without
them takes it back at once.

The verdict of both is L{golb.pool.Backend.healthy}; the details are in its
L{HealthState}.
"""

import collections
import random
import re
from typing import Callable, Deque, Dict, Optional

import attr
from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from golb import __version__
from golb._units import formatDuration
from golb.errors import GolbError

__all__ = [
    "HISTORY",
    "HTTPProbe",
    "HealthService",
    "HealthState",
    "IHealthProbe",
    "OutlierDetector",
    "PROBES",
    "ProbeResult",
    "TCPProbe",
    "probeFor",
]

log = Logger()

# How many probe results each backend keeps.
HISTORY = 20

# How much of a probe's response body is read to look for expect_body.
MAX_PROBE_BODY = 64 * 1024

# Repeated ejections last at most this many times ejection_time.
MAX_EJECTION_FACTOR = 10


@attr.s(frozen=True, slots=True)
class ProbeResult:
    """
    The outcome of one active probe.

    @ivar ok: whether the backend passed.
    @ivar detail: what happened, for people (C{"HTTP 200"},
        C{"connection refused"}, C{"timed out after 2s"}).
    @ivar latency: seconds from start to verdict.
    @ivar at: when it finished (reactor time).
    @ivar code: the HTTP status, for HTTP probes that got one.
    """

    ok: bool = attr.ib()
    detail: str = attr.ib()
    latency: float = attr.ib(default=0.0)
    at: float = attr.ib(default=0.0)
    code: Optional[int] = attr.ib(default=None)

    def asDict(self) -> Dict[str, object]:
        return {
            "ok": self.ok,
            "detail": self.detail,
            "latency": self.latency,
            "at": self.at,
            "code": self.code,
        }


@attr.s(eq=False)
class HealthState:
    """
    The health of one backend, as the admin site and metrics show it.

    @ivar status: the verdict of active probes: C{up} or C{down}.
    @ivar since: when L{golb.pool.Backend.healthy} last changed (reactor time;
        0 = never).
    @ivar reason: why it is in its current state.
    @ivar lastResult: the last L{ProbeResult}, or L{None}.
    @ivar history: the last L{HISTORY} probe results, oldest first.
    @ivar passes: probes passed in a row.
    @ivar fails: probes failed in a row.
    @ivar ejected: whether passive health has ejected it.
    @ivar ejectedUntil: when its ejection time is up (reactor time).
    @ivar ejections: its ejection count, which sets the next duration; it
        resets after the backend stays in for ten ejection times.
    @ivar returnedAt: when it last came back from an ejection.
    @ivar awaitingProbe: its ejection time is up and it waits for a probe
        to pass.
    @ivar consecutiveFailures: real requests that failed in a row.
    """

    status: str = attr.ib(default="up")
    since: float = attr.ib(default=0.0)
    reason: str = attr.ib(default="not checked yet")
    lastResult: Optional[ProbeResult] = attr.ib(default=None)
    history: Deque[ProbeResult] = attr.ib(factory=lambda: collections.deque(maxlen=HISTORY))
    passes: int = attr.ib(default=0)
    fails: int = attr.ib(default=0)
    ejected: bool = attr.ib(default=False)
    ejectedUntil: float = attr.ib(default=0.0)
    ejections: int = attr.ib(default=0)
    returnedAt: float = attr.ib(default=0.0)
    awaitingProbe: bool = attr.ib(default=False)
    consecutiveFailures: int = attr.ib(default=0)
    ejectionTimer: Optional[object] = attr.ib(default=None, repr=False)

    def asDict(self) -> Dict[str, object]:
        """
        A JSON-ready view.
        """
        return {
            "status": self.status,
            "since": self.since,
            "reason": self.reason,
            "ejected": self.ejected,
            "ejected_until": self.ejectedUntil if self.ejected else None,
            "ejections": self.ejections,
            "consecutive_failures": self.consecutiveFailures,
            "last_probe": self.lastResult.asDict() if self.lastResult else None,
            "history": [result.asDict() for result in self.history],
        }


def _settle(backend, now: float, reason: str) -> None:
    """
    Recompute C{backend.healthy} from its probe status and ejection, and log
    the transition (once) when it changes.
    """
    health = backend.health
    healthy = health.status == "up" and not health.ejected
    health.reason = reason
    if healthy == backend.healthy:
        return
    backend.healthy = healthy
    health.since = now
    if healthy:
        backend.markReady()
        log.info("{pool}/{backend} is healthy again: {reason}",
                 pool=backend.pool, backend=backend.id, reason=reason)
    else:
        log.warn("{pool}/{backend} is unhealthy: {reason}",
                 pool=backend.pool, backend=backend.id, reason=reason)


def recordProbe(backend, config, result: ProbeResult, now: float) -> None:
    """
    Fold one probe result into C{backend}'s health.

    @param config: the pool's L{golb.config.HealthCheckConfig}.
    """
    health = backend.health
    health.lastResult = result
    health.history.append(result)
    if not health.since:
        # the first verdict: the state it is in holds since now
        health.since = now
    if result.ok:
        health.passes += 1
        health.fails = 0
        if health.status == "down" and health.passes >= config.healthy_threshold:
            health.status = "up"
            _settle(backend, now, f"{health.passes} probes passed in a row ({result.detail})")
        elif health.awaitingProbe:
            pass
        elif health.status == "up" and not health.ejected:
            health.reason = f"last probe passed ({result.detail})"
        elif health.status == "down":
            health.reason = (f"down: {health.passes} of {config.healthy_threshold} probes"
                             f" passed to come back ({result.detail})")
        if health.awaitingProbe:
            _return(backend, now, f"probe passed after ejection ({result.detail})")
        return
    health.fails += 1
    health.passes = 0
    if health.status == "up" and health.fails >= config.unhealthy_threshold:
        health.status = "down"
        _settle(backend, now, f"{health.fails} probes failed in a row (last: {result.detail})")
    elif health.status == "up" and not health.ejected:
        health.reason = (f"up: {health.fails} of {config.unhealthy_threshold} probes failed"
                         f" (last: {result.detail})")


def resetProbes(backend, now: float) -> None:
    """
    Its pool no longer has active probes: forget their verdict, and take it
    back if it only waited for a probe after an ejection.
    """
    health = backend.health
    health.passes = health.fails = 0
    if health.awaitingProbe:
        _return(backend, now, "ejection over (health checks removed)")
    if health.status == "down":
        health.status = "up"
        _settle(backend, now, "health checks removed")


def _return(backend, now: float, reason: str) -> None:
    health = backend.health
    timer, health.ejectionTimer = health.ejectionTimer, None
    if timer is not None and timer.active():
        timer.cancel()
    health.ejected = False
    health.awaitingProbe = False
    health.consecutiveFailures = 0
    health.returnedAt = now
    _settle(backend, now, reason)


class OutlierDetector:
    """
    Passive health for one pool: ejects backends that fail real requests.

    Its state lives in each backend's L{HealthState}, so it survives a
    reload; a reload builds a new detector with the new settings.

    @ivar config: the L{golb.config.PassiveHealthConfig}.
    @ivar probed: whether the pool has active probes (which then decide
        when an ejected backend comes back).
    """

    def __init__(self, config, reactor=None, probed: bool = False):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.probed = probed

    def success(self, backend) -> None:
        """
        A request to C{backend} got a non-5xx answer.
        """
        backend.health.consecutiveFailures = 0

    def failure(self, backend, pool, detail: str) -> bool:
        """
        A request to C{backend} failed (connect error, reset, timeout or
        5xx): eject it once it failed C{consecutive_failures} in a row,
        unless that would eject more than C{max_ejection_percent} of C{pool}.

        @return: whether it was ejected now.
        """
        health = backend.health
        health.consecutiveFailures += 1
        if health.ejected or health.consecutiveFailures < self.config.consecutive_failures:
            return False
        ejected = sum(1 for member in pool.backends if member.health.ejected)
        allowed = int(self.config.max_ejection_percent * len(pool.backends) + 1e-9)
        if ejected + 1 > allowed:
            if health.consecutiveFailures == self.config.consecutive_failures:
                log.warn(
                    "{pool}/{backend}: {count} failures in a row, but not ejected: "
                    "{ejected} of {total} backends are ejected already "
                    "(max_ejection_percent {percent:g}%)",
                    pool=pool.name, backend=backend.id, count=health.consecutiveFailures,
                    ejected=ejected, total=len(pool.backends),
                    percent=self.config.max_ejection_percent * 100,
                )
            return False
        self.eject(backend, f"{health.consecutiveFailures} failures in a row (last: {detail})")
        return True

    def ejectionTime(self, backend) -> float:
        """
        How long C{backend}'s next ejection lasts: C{ejection_time}, doubled
        for each ejection since it last stayed in for ten ejection times,
        capped at ten times.
        """
        base = self.config.ejection_time
        health = backend.health
        now = self.reactor.seconds()
        if health.ejections and now - health.returnedAt > base * MAX_EJECTION_FACTOR:
            health.ejections = 0
        factor = min(2 ** health.ejections, MAX_EJECTION_FACTOR)
        return base * factor

    def eject(self, backend, reason: str) -> None:
        """
        Take C{backend} out for its L{ejectionTime}.
        """
        health = backend.health
        duration = self.ejectionTime(backend)
        now = self.reactor.seconds()
        health.ejections += 1
        health.ejected = True
        health.awaitingProbe = False
        health.ejectedUntil = now + duration
        health.ejectionTimer = self.reactor.callLater(duration, self._timeUp, backend)
        _settle(backend, now, f"ejected for {formatDuration(duration)}: {reason}")

    def _timeUp(self, backend) -> None:
        health = backend.health
        health.ejectionTimer = None
        if not health.ejected:
            return
        now = self.reactor.seconds()
        if self.probed:
            health.awaitingProbe = True
            health.reason = "ejection over; back on the next passing probe"
            log.info("{pool}/{backend}: ejection over; back on the next passing probe",
                     pool=backend.pool, backend=backend.id)
            return
        _return(backend, now, "ejection over")


class IHealthProbe(Interface):
    """
    One kind of active health check.
    """

    def check(backend):
        """
        Probe C{backend} once.

        @return: a L{Deferred} firing with a L{ProbeResult} (a failed probe
            is a result, not an errback); it may be cancelled.
        """


def _hostOf(backend) -> str:
    return backend.address or backend.host


def _connectError(reason: Failure) -> str:
    if reason.check(ConnectionRefusedError):
        return "connection refused"
    if reason.check(DNSLookupError):
        return "DNS lookup failed"
    if reason.check(TimeoutError):
        return "connect timed out"
    return reason.getErrorMessage()


class _Collect:
    """
    Reads up to L{MAX_PROBE_BODY} bytes of a probe's response body.
    """

    def __init__(self, response, done: Deferred):
        self.response = response
        self.done = done
        self.data = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)
        self.size += len(data)
        if self.size >= MAX_PROBE_BODY and not self.done.called:
            self.response.stopProducing()
            self.done.callback(b"".join(self.data)[:MAX_PROBE_BODY])

    def bodyDone(self, reason) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.data))


@implementer(IHealthProbe)
class HTTPProbe:
    """
    An HTTP request (C{method path}, C{Host}) whose answer must have a
    status in C{expect_status} and, when set, contain C{expect_body} (a
    substring or a C{/regex/}) in its first 64 KiB.  Each probe uses a new
    connection and closes it: nothing is shared with client traffic.
    """

    def __init__(self, config, poolConfig, reactor, upstreamFactory=None):
        self.config = config
        self.poolConfig = poolConfig
        self.reactor = reactor
        self.upstreamFactory = upstreamFactory or self._upstream
        expect = config.expect_body
        self.pattern = None
        self.substring = None
        if expect is not None:
            if len(expect) >= 2 and expect.startswith("/") and expect.endswith("/"):
                self.pattern = re.compile(expect[1:-1])
            else:
                self.substring = expect
        self._upstreams: Dict[int, object] = {}

    def _upstream(self, backend):
        from golb.upstream import UpstreamPool

        tls = None
        if backend.scheme == "https":
            from golb.tls import upstreamCreator

            tls = upstreamCreator(backend, self.poolConfig.tls)
        timeout = self.config.timeout
        return UpstreamPool(
            self.reactor, _hostOf(backend), backend.port, tls=tls, maxIdle=0,
            connectTimeout=timeout, responseHeaderTimeout=timeout, readTimeout=timeout,
        )

    def forget(self, backend) -> None:
        """
        Drop the connection pool kept for C{backend} (it left, or its
        address changed).
        """
        upstream = self._upstreams.pop(id(backend), None)
        if upstream is not None:
            upstream.close()

    def _upstreamFor(self, backend):
        key = id(backend)
        entry = self._upstreams.get(key)
        if entry is not None and entry[0] == (_hostOf(backend), backend.port, backend.scheme):
            return entry[1]
        if entry is not None:
            entry[1].close()
        upstream = self.upstreamFactory(backend)
        self._upstreams[key] = ((_hostOf(backend), backend.port, backend.scheme), upstream)
        return upstream

    def close(self) -> None:
        """
        Close every connection pool this probe kept.
        """
        entries, self._upstreams = self._upstreams, {}
        for _, upstream in entries.values():
            upstream.close()

    def check(self, backend) -> Deferred:
        from golb.upstream import UpstreamRequest

        config = self.config
        host = config.host.encode("idna") if config.host else backend.hostHeader
        request = UpstreamRequest(
            method=config.method.encode("ascii"),
            target=config.path.encode("utf-8"),
            headers=[
                (b"Host", host),
                (b"User-Agent", b"golb-health/" + __version__.encode("ascii")),
                (b"Accept", b"*/*"),
                (b"Connection", b"close"),
            ],
        )
        upstream = self._upstreamFor(backend)
        d = upstream.request(request)
        state = {"response": None}

        def cancel(_):
            pending.cancel()
            response = state["response"]
            if response is not None:
                response.stopProducing()

        result: Deferred = Deferred(cancel)
        pending = d

        def gotResponse(response):
            state["response"] = response
            code = response.code
            if not self._statusOK(code):
                response.stopProducing()
                ranges = ", ".join(
                    str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in config.expect_status
                )
                return _outcome(False, f"HTTP {code}, expected {ranges}", code)
            if self.pattern is None and self.substring is None or config.method == "HEAD":
                response.stopProducing()
                return _outcome(True, f"HTTP {code}", code)
            bodyRead: Deferred = Deferred()
            response.deliverBody(_Collect(response, bodyRead))
            return bodyRead.addCallback(self._checkBody, code)

        def failed(reason):
            if reason.check(CancelledError):
                return reason
            if reason.check(GolbError):
                return _outcome(False, reason.value.message)
            return _outcome(False, reason.getErrorMessage())

        d.addCallbacks(gotResponse, failed)

        def deliver(outcome):
            if not result.called:
                result.callback(outcome)

        def lost(reason):
            if not result.called:
                result.errback(reason)

        d.addCallbacks(deliver, lost)
        return result

    def _statusOK(self, code: int) -> bool:
        for low, high in self.config.expect_status:
            if low <= code <= high:
                return True
        return False

    def _checkBody(self, body: bytes, code: int):
        text = body.decode("utf-8", "replace")
        if self.pattern is not None:
            if self.pattern.search(text):
                return _outcome(True, f"HTTP {code}, body matches", code)
            return _outcome(False, f"HTTP {code}, body does not match {self.config.expect_body}",
                            code)
        if self.substring in text:
            return _outcome(True, f"HTTP {code}, body contains {self.substring!r}", code)
        return _outcome(False, f"HTTP {code}, body lacks {self.substring!r}", code)


def _outcome(ok: bool, detail: str, code: Optional[int] = None):
    return (ok, detail, code)


class _Hangup(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


@implementer(IHealthProbe)
class TCPProbe:
    """
    A TCP connect: the backend passes when it accepts the connection, which
    is closed at once.
    """

    def __init__(self, config, poolConfig, reactor):
        self.config = config
        self.reactor = reactor

    def forget(self, backend) -> None:
        pass

    def close(self) -> None:
        pass

    def check(self, backend) -> Deferred:
        host = _hostOf(backend)
        timeout = self.config.timeout
        from twisted.internet.abstract import isIPAddress, isIPv6Address

        if isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, backend.port, timeout=timeout)
        elif isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, backend.port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, backend.port, timeout=timeout)
        d = endpoint.connect(Factory.forProtocol(_Hangup))

        def failed(reason):
            if reason.check(CancelledError):
                return reason
            return _outcome(False, _connectError(reason))

        return d.addCallbacks(lambda _: _outcome(True, "connected"), failed)


@implementer(IHealthProbe)
class GRPCProbe(HTTPProbe):
    """
    A C{grpc.health.v1.Health/Check} call for the server as a whole (service
    C{""}) over HTTP/2 (h2 with ALPN for https backends, h2c for http ones):
    the backend passes when it answers C{SERVING}.  Each backend's probes
    share one HTTP/2 connection of their own, never one of client traffic.
    """

    def _upstream(self, backend):
        from golb.h2client import H2Pool

        tls = None
        if backend.scheme == "https":
            from golb.tls import upstreamCreator

            tls = upstreamCreator(backend, self.poolConfig.tls, [b"h2"])
        timeout = self.config.timeout
        return H2Pool(
            self.reactor, _hostOf(backend), backend.port, tls=tls, maxIdle=1,
            connectTimeout=timeout, responseHeaderTimeout=timeout, readTimeout=timeout,
        )

    def check(self, backend) -> Deferred:
        from golb.grpc import probeHealth

        config = self.config
        authority = config.host or backend.hostHeader.decode("ascii")
        d = probeHealth(self._upstreamFor(backend), "", authority, config.timeout, self.reactor)

        def outcome(reason):
            if reason is None:
                return _outcome(True, "grpc SERVING")
            return _outcome(False, f"grpc: {reason}")

        return d.addCallback(outcome)


PROBES: Dict[str, Callable[..., IHealthProbe]] = {
    "http": HTTPProbe,
    "tcp": TCPProbe,
    "grpc": GRPCProbe,
}


def probeFor(poolConfig, reactor) -> IHealthProbe:
    """
    The probe for a pool's C{health_check}.
    """
    config = poolConfig.health_check
    return PROBES[config.type](config, poolConfig, reactor)


class _Checker:
    """
    Probes one backend every C{interval}.
    """

    def __init__(self, service: "HealthService", backend, poolConfig, probe):
        self.service = service
        self.backend = backend
        self.poolConfig = poolConfig
        self.config = poolConfig.health_check
        self.probe = probe
        self.reactor = service.reactor
        self.loop = task.LoopingCall(self.run)
        self.loop.clock = self.reactor
        self.starting = None
        self.pending: Optional[Deferred] = None

    def start(self, delay: float) -> None:
        self.starting = self.reactor.callLater(delay, self._begin)

    def _begin(self) -> None:
        self.starting = None
        self.loop.start(self.config.interval, now=True)

    def stop(self) -> None:
        if self.starting is not None:
            if self.starting.active():
                self.starting.cancel()
            self.starting = None
        if self.loop.running:
            self.loop.stop()
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()

    def run(self) -> None:
        """
        One probe.  Never raises, and never returns a Deferred: the loop keeps
        its rhythm whatever a probe does.
        """
        if self.pending is not None:
            return
        try:
            started = self.reactor.seconds()
            timeout = self.config.timeout
            d = maybeDeferred(self.probe.check, self.backend)
            self.pending = d
            timedOut = []

            def onTimeout(result, timeout):
                timedOut.append(True)
                return result

            d.addTimeout(timeout, self.reactor, onTimeoutCancel=onTimeout)
            d.addBoth(self._done, started, timedOut)
        except Exception:
            self.pending = None
            log.failure("health probe of {pool}/{backend} failed to start",
                        pool=self.backend.pool, backend=self.backend.id)

    def _done(self, outcome, started: float, timedOut) -> None:
        self.pending = None
        now = self.reactor.seconds()
        try:
            if timedOut:
                result = ProbeResult(
                    False, f"timed out after {formatDuration(self.config.timeout)}",
                    now - started, now,
                )
            elif isinstance(outcome, Failure):
                if outcome.check(CancelledError):
                    return
                log.failure("health probe of {pool}/{backend} raised", outcome,
                            pool=self.backend.pool, backend=self.backend.id)
                result = ProbeResult(False, f"probe error: {outcome.getErrorMessage()}",
                                     now - started, now)
            else:
                try:
                    ok, detail, code = outcome
                except (TypeError, ValueError):
                    log.failure("health probe of {pool}/{backend} gave {outcome!r}",
                                pool=self.backend.pool, backend=self.backend.id,
                                outcome=outcome)
                    ok, detail, code = False, f"probe error: bad result {outcome!r}", None
                result = ProbeResult(bool(ok), str(detail), now - started, now, code)
            recordProbe(self.backend, self.config, result, now)
            self.service.probed(self.backend, result)
        except Exception:
            log.failure("recording the health probe of {pool}/{backend} failed",
                        pool=self.backend.pool, backend=self.backend.id)


class HealthService(Service):
    """
    Runs the active probes of every pool with a C{health_check}, following
    reloads and discovery: a backend that stays keeps its checker (and its
    state), a new one gets a checker, a gone one loses it.

    Each backend's first probe is at a random point in its first interval,
    so the probes of many backends do not fire together.

    @ivar probeFactory: makes the L{IHealthProbe} for a pool configuration
        (L{probeFor} by default).
    """

    name = "health"

    def __init__(self, golb, reactor=None, probeFactory=probeFor,
                 jitter: Callable[[float], float] = None):
        if reactor is None:
            from twisted.internet import reactor
        self.golb = golb
        self.reactor = reactor
        self.probeFactory = probeFactory
        self.jitter = jitter if jitter is not None else (lambda interval: random.uniform(0,
                                                                                        interval))
        self._checkers: Dict[int, _Checker] = {}
        self._probes: Dict[str, tuple] = {}
        self._unobserve = None
        self.observers = []

    def startService(self) -> None:
        super().startService()
        self._unobserve = self.golb.observe(self.sync)
        self.sync()

    def stopService(self):
        super().stopService()
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        for checker in self._checkers.values():
            checker.stop()
        self._checkers.clear()
        for _, probe in self._probes.values():
            probe.close()
        self._probes.clear()

    def checkerFor(self, backend) -> Optional[_Checker]:
        """
        The checker probing C{backend}, if any.
        """
        return self._checkers.get(id(backend))

    def probed(self, backend, result: ProbeResult) -> None:
        """
        Called after each probe; tells L{observers}.
        """
        for observer in self.observers:
            observer(backend, result)

    def sync(self) -> None:
        """
        Match the checkers to the current pools and backends.
        """
        now = self.reactor.seconds()
        wanted = {}
        for pool in self.golb.runtime.pools.values():
            poolConfig = pool.config
            if poolConfig.health_check is None:
                self._probes.pop(pool.name, (None, _NoProbe()))[1].close()
                for backend in pool.backends:
                    if backend.health.status == "down" or backend.health.awaitingProbe:
                        resetProbes(backend, now)
                continue
            key = (poolConfig.health_check, poolConfig.tls)
            current = self._probes.get(pool.name)
            if current is None or current[0] != key:
                if current is not None:
                    current[1].close()
                probe = self.probeFactory(poolConfig, self.reactor)
                self._probes[pool.name] = (key, probe)
            probe = self._probes[pool.name][1]
            for backend in pool.backends:
                wanted[id(backend)] = (backend, poolConfig, probe)
        for key, checker in list(self._checkers.items()):
            entry = wanted.get(key)
            if entry is None or entry[2] is not checker.probe or entry[0] is not checker.backend:
                checker.stop()
                checker.probe.forget(checker.backend)
                del self._checkers[key]
        for key, (backend, poolConfig, probe) in wanted.items():
            if key in self._checkers:
                continue
            checker = _Checker(self, backend, poolConfig, probe)
            self._checkers[key] = checker
            checker.start(self.jitter(poolConfig.health_check.interval))
        for name in list(self._probes):
            if name not in self.golb.runtime.pools:
                self._probes.pop(name)[1].close()


class _NoProbe:
    def close(self) -> None:
        pass
