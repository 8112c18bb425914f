"""
Load-balancing algorithms, one small class each, behind L{IBalancer}.

A balancer is built once per pool (and rebuilt on reload); C{pick} is called
for every request with the backends that may take it right now (ready,
healthy, not excluded by an earlier attempt) and returns one of them.
"""

import bisect
import hashlib
import random
from typing import Callable, Dict, Optional

from zope.interface import Interface, implementer

__all__ = [
    "BALANCERS",
    "ConsistentHash",
    "First",
    "IBalancer",
    "IPHash",
    "LeastConnections",
    "LeastResponseTime",
    "PowerOfTwoChoices",
    "RoundRobin",
    "SmoothWeightedRoundRobin",
    "WeightedRandom",
    "balancerFor",
    "hashKeyFunction",
]


class IBalancer(Interface):
    """
    Chooses one backend of a pool for a request.
    """

    def pick(request, backends):
        """
        @param request: the client request (a L{twisted.web.server.Request}),
            for algorithms that hash on it; may be L{None} in tests.
        @param backends: the candidate L{golb.pool.Backend}s, never empty, in
            configuration order.
        @return: one of C{backends}.
        """


@implementer(IBalancer)
class RoundRobin:
    """
    Round robin that respects weights: over a full cycle each backend is
    picked C{weight} times (weight 0 counts as 1 when nothing else is left).
    Candidates are walked in configuration order, so a backend that becomes
    unavailable shifts the turn to the next one.
    """

    def __init__(self) -> None:
        self._counter = 0

    def pick(self, request, backends):
        if len(backends) == 1:
            return backends[0]
        total = 0
        for backend in backends:
            total += backend.effectiveWeight
        if total <= 0:
            backend = backends[self._counter % len(backends)]
            self._counter += 1
            return backend
        slot = self._counter % total
        self._counter += 1
        for backend in backends:
            slot -= backend.effectiveWeight
            if slot < 0:
                return backend
        return backends[-1]  # pragma: no cover (unreachable)


@implementer(IBalancer)
class SmoothWeightedRoundRobin:
    """
    nginx's smooth weighted round robin: weights 5, 1, 1 give
    C{a a b a c a a}, spreading the heavy backend's turns instead of bursting.
    """

    def __init__(self) -> None:
        self._current: Dict[int, int] = {}

    def pick(self, request, backends):
        if len(backends) == 1:
            return backends[0]
        total = 0
        best = None
        bestWeight = 0
        current = self._current
        for backend in backends:
            weight = backend.effectiveWeight or 0
            total += weight
            key = id(backend)
            value = current.get(key, 0) + weight
            current[key] = value
            if best is None or value > bestWeight:
                best = backend
                bestWeight = value
        if total == 0:
            total = len(backends)
        current[id(best)] = bestWeight - total
        if len(current) > 4 * len(backends):
            live = {id(b) for b in backends}
            for key in list(current):
                if key not in live:
                    del current[key]
        return best


def _load(backend) -> float:
    """
    Outstanding requests per unit of weight (weight 0 counts as tiny).
    """
    return (backend.inFlight + 1) / (backend.effectiveWeight or 0.01)


@implementer(IBalancer)
class LeastConnections:
    """
    The backend with the fewest requests in flight relative to its weight;
    ties are broken in turn so equal backends share the load.
    """

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, request, backends):
        best = []
        bestLoad = None
        for backend in backends:
            load = _load(backend)
            if bestLoad is None or load < bestLoad:
                best = [backend]
                bestLoad = load
            elif load == bestLoad:
                best.append(backend)
        self._turn += 1
        return best[self._turn % len(best)]


@implementer(IBalancer)
class WeightedRandom:
    """
    A random backend, chosen with probability proportional to its weight.
    """

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, request, backends):
        weights = [backend.effectiveWeight for backend in backends]
        if not any(weights):
            return self._rng.choice(backends)
        return self._rng.choices(backends, weights)[0]


@implementer(IBalancer)
class PowerOfTwoChoices:
    """
    Two distinct random backends (weighted); the one with less load wins.
    """

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._random = WeightedRandom(rng)

    def pick(self, request, backends):
        if len(backends) == 1:
            return backends[0]
        first = self._random.pick(request, backends)
        rest = [backend for backend in backends if backend is not first]
        second = self._random.pick(request, rest)
        return first if _load(first) <= _load(second) else second


@implementer(IBalancer)
class First:
    """
    The first backend, in configuration order, that is below its
    C{max_connections} (candidates over it are already filtered out), so
    traffic fills backends one after the other.
    """

    def pick(self, request, backends):
        return backends[0]


@implementer(IBalancer)
class LeastResponseTime:
    """
    The lowest peak-EWMA response time multiplied by outstanding requests;
    backends without a measurement yet are tried first.
    """

    def __init__(self) -> None:
        self._fallback = LeastConnections()

    def pick(self, request, backends):
        unmeasured = [backend for backend in backends if not backend.latency]
        if unmeasured:
            return self._fallback.pick(request, unmeasured)
        best = None
        bestCost = 0.0
        for backend in backends:
            cost = backend.latency * _load(backend)
            if best is None or cost < bestCost:
                best = backend
                bestCost = cost
        return best


def hashKeyFunction(hashOn: str) -> Callable[[object], Optional[bytes]]:
    """
    The function extracting a request's hash key for C{hash_on}:
    C{client_ip}, C{header:NAME}, C{cookie:NAME}, C{query:NAME} or C{path}.
    It returns L{None} when the request has no such key.
    """
    kind, _, name = hashOn.partition(":")
    if kind == "header":
        rawName = name.lower().encode("ascii")

        def header(request):
            values = request.requestHeaders.getRawHeaders(rawName)
            return values[0] if values else None

        return header
    if kind == "cookie":
        rawName = name.encode("ascii")
        return lambda request: request.getCookie(rawName)
    if kind == "query":
        rawName = name.encode("utf-8")

        def query(request):
            values = request.args.get(rawName)
            return values[0] if values else None

        return query
    if kind == "path":
        return lambda request: request.path

    def clientIP(request):
        getter = getattr(request, "clientAddress", None)
        if getter is not None:
            return getter().encode("ascii")
        return getattr(request.getClientAddress(), "host", "").encode("ascii") or None

    return clientIP


def _hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


@implementer(IBalancer)
class IPHash:
    """
    The same key always reaches the same backend while the candidate set is
    unchanged (hash modulo the weighted candidate list).  Requests without a
    key are balanced round robin.
    """

    def __init__(self, hashOn: str = "client_ip") -> None:
        self._key = hashKeyFunction(hashOn)
        self._fallback = RoundRobin()

    def pick(self, request, backends):
        key = self._key(request) if request is not None else None
        if key is None:
            return self._fallback.pick(request, backends)
        slots = []
        for backend in backends:
            slots.extend([backend] * max(1, backend.weight))
        return slots[_hash(key) % len(slots)]


@implementer(IBalancer)
class ConsistentHash:
    """
    Consistent hashing with bounded load: a ring of C{REPLICAS} points per
    unit of weight per backend; a key goes to the first backend clockwise from
    its hash whose load is under C{BOUND} times the average, so a key moves
    only when its backend leaves or is overloaded, and removing one of N
    backends remaps about 1/N of the keys.
    """

    REPLICAS = 40
    BOUND = 1.25

    def __init__(self, hashOn: str = "client_ip") -> None:
        self._key = hashKeyFunction(hashOn)
        self._fallback = RoundRobin()
        self._rings: Dict[tuple, tuple] = {}

    def _ring(self, backends):
        identity = tuple((backend.url, backend.weight) for backend in backends)
        ring = self._rings.get(identity)
        if ring is None:
            points = []
            for index, backend in enumerate(backends):
                for replica in range(self.REPLICAS * max(1, backend.weight)):
                    points.append((_hash(b"%s#%d" % (backend.url.encode(), replica)), index))
            points.sort()
            ring = ([point for point, _ in points], [index for _, index in points])
            if len(self._rings) > 64:
                self._rings.clear()
            self._rings[identity] = ring
        return ring

    def pick(self, request, backends):
        key = self._key(request) if request is not None else None
        if key is None or len(backends) == 1:
            return self._fallback.pick(request, backends)
        hashes, owners = self._ring(backends)
        total = sum(backend.inFlight for backend in backends) + 1
        limit = self.BOUND * total / len(backends)
        start = bisect.bisect(hashes, _hash(key)) % len(hashes)
        seen = set()
        for step in range(len(hashes)):
            index = owners[(start + step) % len(hashes)]
            if index in seen:
                continue
            seen.add(index)
            backend = backends[index]
            if backend.inFlight + 1 <= max(limit, 1):
                return backend
            if len(seen) == len(backends):
                break
        return backends[owners[start]]


BALANCERS: Dict[str, Callable[..., IBalancer]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": SmoothWeightedRoundRobin,
    "least_connections": LeastConnections,
    "random": WeightedRandom,
    "power_of_two": PowerOfTwoChoices,
    "ip_hash": IPHash,
    "consistent_hash": ConsistentHash,
    "least_response_time": LeastResponseTime,
    "first": First,
}
_HASHED = frozenset(["ip_hash", "consistent_hash"])


def balancerFor(algorithm: str, hashOn: str = "client_ip") -> IBalancer:
    """
    A new balancer for the algorithm named in a pool's configuration.
    """
    factory = BALANCERS[algorithm]
    if algorithm in _HASHED:
        return factory(hashOn)
    return factory()
