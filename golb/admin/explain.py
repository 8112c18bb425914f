"""
C{GET /api/v1/explain}: what golb would do with a request, without sending
anything and without disturbing the balancer.

The request is described by its method, host, path (with query), headers
and client address; a L{FakeRequest} offers what the matchers, the sticky
cookie lookup and the hashing balancers read.  The route is found with the
live L{golb.routing.Router}; the candidates are those the pool would offer
now; the pick is made by a I{copy} of the pool's balancer, so round-robin
counters and random generators of the real one are untouched.  That pick is
therefore exactly the backend the next such request would get I{if no other
request came first}: for round robin and its kin the turn moves with every
request, for C{random} and C{power_of_two} the draw too; for C{ip_hash},
C{consistent_hash} and sticky cookies it is stable while the backends are.
"""

import copy
import ipaddress
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

from twisted.logger import Logger
from twisted.web.http_headers import Headers

from golb.admin.views import policyKinds

__all__ = ["ExplainError", "FakeRequest", "explain"]

log = Logger()

# What the pick means, by algorithm.
_PICK_NOTES = {
    "round_robin": "next in turn: what the next such request gets if none comes first",
    "weighted_round_robin": "next in turn: what the next such request gets if none comes first",
    "least_connections": "the least loaded now; ties are broken in turn",
    "least_response_time": "the lowest latency x load now",
    "random": "one draw; the next real request makes its own draw",
    "power_of_two": "one draw; the next real request makes its own draw",
    "ip_hash": "stable for this request's hash key while the candidates stay the same",
    "consistent_hash": "stable for this request's hash key while the candidates stay the same",
    "first": "the first candidate in configuration order",
}


class ExplainError(ValueError):
    """
    The request to explain is not described well enough (answered 400).
    """


class FakeRequest:
    """
    A request that is never sent: what routing and balancing read of a
    L{golb.listener.GolbRequest}.
    """

    def __init__(self, method: bytes, host: bytes, target: bytes,
                 headers: List[tuple], client: str):
        self.method = method
        self.uri = target
        path, _, query = target.partition(b"?")
        self.path = path
        self.args = parse_qs(query, keep_blank_values=True) if query else {}
        self.requestHeaders = Headers()
        for name, value in headers:
            self.requestHeaders.addRawHeader(name, value)
        if host:
            self.requestHeaders.setRawHeaders(b"host", [host])
        self.received_cookies = {}
        for value in self.requestHeaders.getRawHeaders(b"cookie", []):
            for pair in value.split(b";"):
                name, sep, cookie = pair.strip().partition(b"=")
                if sep:
                    self.received_cookies.setdefault(name, cookie)
        self._client = client
        self.clientproto = b"HTTP/1.1"

    def getHeader(self, name: bytes) -> Optional[bytes]:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def getCookie(self, name: bytes) -> Optional[bytes]:
        return self.received_cookies.get(name)

    def clientAddress(self) -> str:
        return self._client

    def getClientAddress(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", self._client, 0)

    def isSecure(self) -> bool:
        return False


def _text(args, name: bytes, default: Optional[str] = None) -> Optional[str]:
    values = args.get(name)
    if not values:
        return default
    return values[0].decode("utf-8", "replace")


def fakeRequestFrom(args: Dict[bytes, List[bytes]]) -> FakeRequest:
    """
    The L{FakeRequest} described by query arguments: C{method} (GET),
    C{host}, C{path} (C{/}, may hold a query), C{header=Name:Value}
    (repeatable) and C{client} (127.0.0.1).

    @raise ExplainError: for a malformed description.
    """
    known = {b"method", b"host", b"path", b"header", b"client", b"url"}
    unknown = sorted(name.decode("utf-8", "replace") for name in args if name not in known)
    if unknown:
        raise ExplainError(f"unknown parameter(s) {', '.join(unknown)};"
                           " use method, host, path, header=Name:Value, client")
    method = _text(args, b"method", "GET").strip().upper()
    if not method.isalpha() or not method.isascii():
        raise ExplainError(f"method {method!r} is not an HTTP method")
    host = _text(args, b"host", "")
    path = _text(args, b"path")
    url = _text(args, b"url")
    if url is not None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise ExplainError(f"url {url!r} has no host; use http://host/path")
        host = host or parts.netloc
        path = path or (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    path = path or "/"
    if not path.startswith("/"):
        raise ExplainError(f"path {path!r} must start with /")
    headers = []
    for raw in args.get(b"header", []):
        name, sep, value = raw.partition(b":")
        name = name.strip()
        if not sep or not name or not all(32 < c < 127 for c in name):
            raise ExplainError(f"header {raw.decode('utf-8', 'replace')!r} is not Name:Value")
        headers.append((name, value.strip()))
    client = _text(args, b"client", "127.0.0.1").strip()
    try:
        ipaddress.ip_address(client)
    except ValueError:
        raise ExplainError(f"client {client!r} is not an IP address") from None
    return FakeRequest(method.encode("ascii"), host.encode("utf-8"), path.encode("utf-8"),
                       headers, client)


def _candidateView(backend, candidates, sticky) -> Dict[str, Any]:
    why = None
    if backend in candidates:
        why = None
    elif backend.state != "ready":
        why = f"admin state {backend.state}"
    elif not backend.healthy:
        why = "unhealthy"
    elif backend.maxConnections and backend.inFlight >= backend.maxConnections:
        why = f"at max_connections ({backend.maxConnections})"
    elif backend.backup:
        why = "backup (primaries are available)"
    else:
        why = "not offered by the pool"
    return {
        "id": backend.id,
        "url": backend.url,
        "state": backend.state,
        "healthy": backend.healthy,
        "in_flight": backend.inFlight,
        "weight": backend.weight,
        "backup": backend.backup,
        "candidate": backend in candidates,
        "excluded_because": why,
        "sticky": backend is sticky,
    }


def explainPool(pool, request, share: float) -> Dict[str, Any]:
    """
    What C{pool} would do with C{request}: its candidates and the pick.
    """
    panicking = pool.panicking
    try:
        candidates = pool.candidates()
        panic = pool.panicking
    finally:
        pool.panicking = panicking
    sticky = None
    if pool.stickyValues:
        sticky = pool.stickyBackend(request)
    pick = None
    how = None
    if sticky is not None:
        pick, how = sticky, "the backend named by the request's sticky cookie"
    elif candidates:
        try:
            balancer = copy.deepcopy(pool.balancer)
            pick = balancer.pick(request, list(candidates))
            how = _PICK_NOTES.get(pool.config.algorithm, "the balancer's choice now")
        except Exception:
            log.failure("explain: picking on a copy of {pool}'s balancer failed", pool=pool.name)
            how = "unknown: the balancer could not be asked without disturbing it"
    else:
        how = "none: no backend may take a request now (the client would get 503)"
    return {
        "pool": pool.name,
        "share": share,
        "algorithm": pool.config.algorithm,
        "panic": panic,
        "sticky_cookie": pool.config.sticky.cookie or None,
        "backends": [_candidateView(backend, candidates, sticky) for backend in pool.backends],
        "candidates": [backend.id for backend in candidates],
        "pick": pick.id if pick is not None else None,
        "pick_means": how,
    }


def explain(golb, args: Dict[bytes, List[bytes]]) -> Dict[str, Any]:
    """
    The route, policies, candidates and pick for the request described by
    C{args} (see L{fakeRequestFrom}).

    @raise ExplainError: for a malformed description.
    """
    request = fakeRequestFrom(args)
    runtime = golb.runtime
    route = runtime.router.match(request)
    described = {
        "method": request.method.decode("ascii"),
        "host": (request.getHeader(b"host") or b"").decode("utf-8", "replace"),
        "target": request.uri.decode("utf-8", "replace"),
        "headers": [[name.decode("latin-1"), value.decode("latin-1")]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values],
        "client": request.clientAddress(),
    }
    result: Dict[str, Any] = {
        "request": described,
        "route": None,
        "policies": [],
        "pools": [],
        "mirror": None,
        "note": ("nothing was sent and no balancer state changed: the pick was made by a copy"
                 " of the pool's balancer; policies (rate limits, ACLs, auth) are listed, not"
                 " run, and may still answer the request themselves"),
    }
    if route is None:
        result["outcome"] = "404: no route matches and there is no default pool"
        return result
    isDefault = route is runtime.router.default
    result["route"] = {
        "name": route.name,
        "order": route.order,
        "default": isDefault,
        "host": route.host,
    }
    result["policies"] = policyKinds(golb, route)
    if route.pool is not None:
        result["pools"] = [explainPool(route.pool, request, 1.0)]
    else:
        total = route.split[-1][0]
        previous = 0
        for cumulative, pool in route.split:
            share = (cumulative - previous) / total
            previous = cumulative
            result["pools"].append(explainPool(pool, request, share))
    if route.mirror is not None:
        result["mirror"] = {"pool": route.mirror[0].name, "percent": route.mirror[1]}
    picks = [entry["pick"] for entry in result["pools"]]
    if len(picks) == 1:
        result["outcome"] = (f"forwarded to {result['pools'][0]['pool']}/{picks[0]}"
                             if picks[0] else "503: no backend available")
    else:
        result["outcome"] = "split: the pool is drawn by weight for each request"
    return result
