"""
Routing: the compiled L{Router} and the L{RoutingResource} at the root of
every listener's Site.

Rules are tried by priority (higher first), ties in file order; the first
whose every condition holds wins.  Host conditions are indexed (an exact-name
dictionary and a wildcard-suffix dictionary), so matching cost does not grow
with the number of host rules.
"""

import heapq
import ipaddress
import random
import re
from fnmatch import translate
from typing import Dict, List, Optional, Sequence, Tuple

import attr
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from golb.errors import GolbError, renderError

__all__ = ["Route", "Router", "RoutingResource", "checksFor", "requestHost"]


def requestHost(request) -> str:
    """
    The request's host name, lower-cased, without port: from the Host header
    (or the absolute-form target), else empty.
    """
    raw = request.requestHeaders.getRawHeaders(b"host")
    host = raw[0] if raw else b""
    if host.startswith(b"["):
        end = host.find(b"]")
        host = host[1:end] if end > 0 else host
    else:
        colon = host.find(b":")
        if colon >= 0:
            host = host[:colon]
    try:
        return host.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        return ""


def _compileValue(value: str):
    """
    A predicate for a header or query value: exact, or C{/regex/}.
    """
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        pattern = re.compile(value[1:-1])
        return lambda v: v is not None and pattern.search(v) is not None
    return lambda v: v == value


@attr.s(eq=False)
class Route:
    """
    One compiled routing rule.

    @ivar order: its position in priority order (0 is tried first).
    @ivar pool: the target L{golb.pool.Pool} (L{None} with a split).
    @ivar split: C{[(cumulativeWeight, Pool)]} for weighted splits.
    @ivar mirror: C{(Pool, fraction)} or L{None}.
    @ivar chain: its L{golb.policies.Chain} (global policies, then its
        own), or L{None} when it has no policies.
    """

    name: str = attr.ib()
    order: int = attr.ib()
    config: object = attr.ib(default=None)
    pool: Optional[object] = attr.ib(default=None)
    split: Sequence[Tuple[int, object]] = attr.ib(default=())
    mirror: Optional[Tuple[object, float]] = attr.ib(default=None)
    policies: Sequence[object] = attr.ib(default=())
    host: Optional[str] = attr.ib(default=None)
    chain: Optional[object] = attr.ib(default=None)
    _checks: List[object] = attr.ib(factory=list)

    def matches(self, request, path: bytes) -> bool:
        """
        Whether every condition other than the host holds for C{request}.
        """
        for check in self._checks:
            if not check(request, path):
                return False
        return True

    def choosePool(self, rand=random.random):
        """
        The pool for one request: the target, or a weighted draw of the split.
        """
        if self.pool is not None:
            return self.pool
        total = self.split[-1][0]
        point = rand() * total
        for cumulative, pool in self.split:
            if point < cumulative:
                return pool
        return self.split[-1][1]


def _pathCheck(match):
    if getattr(match, "path", None):
        pattern = re.compile(translate(match.path).encode("utf-8"))
        return lambda request, path: pattern.match(path) is not None
    if getattr(match, "path_prefix", None):
        prefix = match.path_prefix.encode("utf-8")
        return lambda request, path: path.startswith(prefix)
    if getattr(match, "path_regex", None):
        pattern = re.compile(match.path_regex.encode("utf-8"))
        return lambda request, path: pattern.search(path) is not None
    return None


def checksFor(match) -> List[object]:
    """
    The predicates for a rule's C{match} conditions other than its host.
    """
    checks = []
    if match is None:
        return checks
    pathCheck = _pathCheck(match)
    if pathCheck is not None:
        checks.append(pathCheck)
    methods = getattr(match, "method", None)
    if methods:
        allowed = frozenset(m.encode("ascii") for m in methods)
        checks.append(lambda request, path: request.method in allowed)
    for name, value in (getattr(match, "headers", None) or {}).items():
        predicate = _compileValue(value)
        rawName = name.lower().encode("ascii")

        def headerCheck(request, path, rawName=rawName, predicate=predicate):
            values = request.requestHeaders.getRawHeaders(rawName)
            if not values:
                return predicate(None)
            return any(predicate(v.decode("latin-1")) for v in values)

        checks.append(headerCheck)
    for name, value in (getattr(match, "query", None) or {}).items():
        predicate = _compileValue(value)
        rawName = name.encode("utf-8")

        def queryCheck(request, path, rawName=rawName, predicate=predicate):
            values = request.args.get(rawName)
            if not values:
                return predicate(None)
            return any(predicate(v.decode("utf-8", "replace")) for v in values)

        checks.append(queryCheck)
    networks = getattr(match, "client_ip", None)
    if networks:
        networks = tuple(networks)

        def clientCheck(request, path, networks=networks):
            try:
                address = ipaddress.ip_address(_clientAddress(request))
            except ValueError:
                return False
            return any(address in network for network in networks)

        checks.append(clientCheck)
    return checks


def _clientAddress(request) -> str:
    getter = getattr(request, "clientAddress", None)
    if getter is not None:
        return getter()
    peer = request.getClientAddress()
    return getattr(peer, "host", "")


class Router:
    """
    Rules compiled for matching.

    @ivar routes: every L{Route} in priority order.
    @ivar default: the route used when no rule matches (the pool named
        C{default}, else the only pool), or L{None} for 404.
    """

    def __init__(self, routes: Sequence[Route], default: Optional[Route] = None):
        self.routes = list(routes)
        self.default = default
        self._exact: Dict[str, List[Route]] = {}
        self._wildcard: Dict[str, List[Route]] = {}
        self._anyHost: List[Route] = []
        for route in self.routes:
            host = route.host
            if not host:
                self._anyHost.append(route)
            elif host.startswith("*."):
                self._wildcard.setdefault(host[1:], []).append(route)
            else:
                self._exact.setdefault(host, []).append(route)

    def _candidates(self, host: str):
        lists = []
        exact = self._exact.get(host)
        if exact:
            lists.append(exact)
        if self._wildcard:
            dot = host.find(".")
            while dot >= 0:
                found = self._wildcard.get(host[dot:])
                if found:
                    lists.append(found)
                dot = host.find(".", dot + 1)
        if self._anyHost:
            lists.append(self._anyHost)
        if len(lists) == 1:
            return lists[0]
        return heapq.merge(*lists, key=lambda route: route.order)

    def match(self, request) -> Optional[Route]:
        """
        The route for C{request}, or L{None} when nothing matches and there is
        no default pool.
        """
        if not self._exact and not self._wildcard:
            # no host conditions: the host need not be looked at
            candidates = self._anyHost
            if not candidates:
                return self.default
        else:
            candidates = self._candidates(requestHost(request))
        path = request.path
        for route in candidates:
            if route.matches(request, path):
                return route
        return self.default


@implementer(IResource)
class RoutingResource:
    """
    The root resource of every listener: routes each request and hands it to
    the proxy.

    @ivar golb: the application root (L{golb.app.Golb}); its current runtime
        is read once per request, so a reload never changes a request midway.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, golb, listenerName: str = "default"):
        self.golb = golb
        self.listenerName = listenerName

    def getChildWithDefault(self, name, request):  # pragma: no cover (isLeaf)
        return self

    def putChild(self, path, child):  # pragma: no cover
        raise NotImplementedError("the routing resource has no children")

    def render(self, request):
        runtime = self.golb.runtime
        request.defaultContentType = None
        request.responseHeaders.removeHeader(b"server")
        observatory = self.golb.observatory
        record = observatory.requestStarted(request) if observatory.active else None
        route = runtime.router.match(request)
        if record is not None and route is not None:
            record.route = route.name
        if route is None:
            renderError(request, GolbError("no-route"))
            return NOT_DONE_YET
        runtime.forward(request, route, self.listenerName)
        return NOT_DONE_YET
