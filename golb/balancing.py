"""
Load-balancing algorithms, one small class each, behind L{IBalancer}.

A balancer is built once per pool (and rebuilt on reload); C{pick} is called
for every request with the backends that may take it right now (ready,
healthy, not excluded by an earlier attempt) and returns one of them.
"""

from typing import Callable, Dict

from zope.interface import Interface, implementer

__all__ = [
    "BALANCERS",
    "IBalancer",
    "RoundRobin",
    "SmoothWeightedRoundRobin",
    "balancerFor",
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
            total += backend.weight
        if total <= 0:
            backend = backends[self._counter % len(backends)]
            self._counter += 1
            return backend
        slot = self._counter % total
        self._counter += 1
        for backend in backends:
            slot -= backend.weight
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
            weight = backend.weight or 0
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


BALANCERS: Dict[str, Callable[[], IBalancer]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": SmoothWeightedRoundRobin,
}


def balancerFor(algorithm: str) -> IBalancer:
    """
    A new balancer for the algorithm named in a pool's configuration.

    Algorithms not yet implemented fall back to weighted round robin (the
    configuration accepts every name in CONFIG.md).
    """
    factory = BALANCERS.get(algorithm, RoundRobin)
    return factory()


