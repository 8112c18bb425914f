"""
JSON-ready views of golb's live state, shared by the admin pages and the
JSON API: pools and backends, routes, the configuration (secrets redacted)
and the overview.

Everything is read from the current L{golb.runtime.Runtime} and the live
L{golb.pool.Backend}s at the moment of the call; nothing here changes state.
"""

import ipaddress
import re
from typing import Any, Dict, List, Optional

import attr

from golb import __version__
from golb._units import Address, Rate

__all__ = [
    "REDACTED",
    "backendView",
    "configView",
    "configuredWeight",
    "findBackend",
    "overviewView",
    "poolSummary",
    "poolView",
    "policyKinds",
    "routeView",
    "routesView",
]

REDACTED = "<redacted>"

# user:password@ in a URL (redis://:secret@host, https://user:pw@collector)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/@:]*):([^/@]*)@")
# setting names whose string values are secrets wherever they appear
_SECRET_KEYS = re.compile(r"(password|passwd|secret|token|api_key|apikey)$", re.IGNORECASE)
# header names whose values are credentials (in headers policies)
_SECRET_HEADERS = re.compile(
    r"^(authorization|proxy-authorization|cookie|set-cookie)$|(key|token|secret|password|auth)",
    re.IGNORECASE,
)


def findBackend(pool, backendId: str):
    """
    The backend of C{pool} whose id is C{backendId}, or L{None}.
    """
    for backend in pool.backends:
        if backend.id == backendId:
            return backend
    return None


def configuredWeight(golb, pool, backend) -> Optional[int]:
    """
    The weight the configuration gives C{backend} (what a reload sets it
    back to), or L{None} when it is not found there.
    """
    members = getattr(golb, "members", {}).get(pool.name)
    configs = members.backends if members is not None else pool.config.backends
    for backendConfig in configs:
        if backendConfig.url == backend.url:
            return backendConfig.weight
    return None


def backendView(golb, pool, backend, rates=None) -> Dict[str, Any]:
    """
    One backend: its admin state, health, counters and latency.
    """
    health = backend.health.asDict()
    return {
        "id": backend.id,
        "pool": pool.name,
        "url": backend.url,
        "state": backend.state,
        "healthy": backend.healthy,
        "available": backend.available(),
        "backup": backend.backup,
        "weight": backend.weight,
        "configured_weight": configuredWeight(golb, pool, backend),
        "effective_weight": backend.effectiveWeight,
        "max_connections": backend.maxConnections,
        "in_flight": backend.inFlight,
        "requests": backend.requests,
        "errors": backend.failures,
        "rate": rates.backendRate(pool.name, backend.id) if rates is not None else None,
        "latency": backend.latency,
        "health": health,
    }


def poolSummary(golb, pool, rates=None) -> Dict[str, Any]:
    """
    One pool in a list: name, algorithm and totals.
    """
    backends = pool.backends
    requestRate, errorRate = rates.rates(pool.name) if rates is not None else (None, None)
    return {
        "name": pool.name,
        "algorithm": pool.config.algorithm,
        "backends": len(backends),
        "ready": sum(1 for backend in backends if backend.state == "ready"),
        "healthy": sum(1 for backend in backends if backend.healthy),
        "available": sum(1 for backend in backends if backend.available()),
        "in_flight": sum(backend.inFlight for backend in backends),
        "requests": sum(backend.requests for backend in backends),
        "errors": sum(backend.failures for backend in backends),
        "rate": requestRate,
        "error_rate": errorRate,
        "panicking": pool.panicking,
        "queued": len(pool.waiting),
        "discovered": pool.config.discovery is not None,
    }


def poolView(golb, pool, rates=None) -> Dict[str, Any]:
    """
    One pool with every backend (L{backendView}).
    """
    view = poolSummary(golb, pool, rates)
    view["backends"] = [backendView(golb, pool, backend, rates) for backend in pool.backends]
    sticky = pool.config.sticky
    view["sticky_cookie"] = sticky.cookie or None
    view["slow_start"] = pool.config.slow_start
    view["panic_threshold"] = pool.panicThreshold
    view["health_check"] = plain(pool.config.health_check)
    return view


def policyKinds(golb, route) -> List[Dict[str, str]]:
    """
    The policies a request on C{route} goes through, in order: the global
    ones, then the route's own.
    """
    kinds = [{"kind": policy.kind, "scope": "global"} for policy in golb.config.policies]
    kinds += [{"kind": policy.kind, "scope": "route"} for policy in route.policies]
    return kinds


def routeView(golb, route, default: bool = False) -> Dict[str, Any]:
    """
    One compiled route.
    """
    rule = route.config
    view: Dict[str, Any] = {
        "name": route.name,
        "order": route.order,
        "default": default,
        "priority": rule.priority if rule is not None else None,
        "host": route.host,
        "match": plain(rule.match) if rule is not None else {},
        "pool": route.pool.name if route.pool is not None else None,
        "split": [],
        "mirror": None,
        "policies": policyKinds(golb, route),
    }
    if rule is not None:
        view["split"] = [{"pool": target.pool, "weight": target.weight}
                         for target in rule.split]
    if route.mirror is not None:
        view["mirror"] = {"pool": route.mirror[0].name, "percent": route.mirror[1]}
    return view


def routesView(golb) -> Dict[str, Any]:
    """
    The route table in the order rules are tried, and the default route.
    """
    router = golb.runtime.router
    return {
        "routes": [routeView(golb, route) for route in router.routes],
        "default": routeView(golb, router.default, default=True)
        if router.default is not None else None,
    }


def plain(value: Any) -> Any:
    """
    A configuration value as plain JSON data: attrs classes as mappings,
    addresses, networks and rates as text, tuples as lists.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (Address, Rate)):
        return str(value)
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network,
                          ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    kind = getattr(type(value), "kind", None)
    if attr.has(type(value)):
        fields = {field.name: plain(getattr(value, field.name))
                  for field in attr.fields(type(value))}
        if isinstance(kind, str):
            return {kind: fields}
        return fields
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    pattern = getattr(value, "pattern", None)
    if isinstance(pattern, str):
        return pattern
    return str(value)


def redact(value: Any, path: str = "") -> Any:
    """
    C{value} (plain data from L{plain}) with secrets replaced by
    L{REDACTED}: passwords in URLs (C{redis://:secret@host}), the values of
    C{monitoring.tracing.headers} (collector credentials), credential headers
    set by C{headers} policies (C{Authorization}, C{Cookie}, C{X-Api-Key} and
    the like), and any string setting named like a password, secret or
    token.  The configuration holds
    file I{paths} (htpasswd, tokens, TLS keys), never their contents.
    """
    if isinstance(value, dict):
        if path == "monitoring.tracing.headers":
            return {key: REDACTED for key in value}
        if path.endswith((".request.set", ".request.add", ".response.set", ".response.add")):
            # a headers policy's values: credentials for backends or clients
            return {key: (REDACTED if _SECRET_HEADERS.search(str(key)) else redact(item))
                    for key, item in value.items()}
        out = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if isinstance(item, str) and _SECRET_KEYS.search(key):
                out[key] = REDACTED
            else:
                out[key] = redact(item, child)
        return out
    if isinstance(value, list):
        return [redact(item, path) for item in value]
    if isinstance(value, str):
        return _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}@", value)
    return value


def configView(config) -> Dict[str, Any]:
    """
    The whole configuration as plain data, secrets redacted.
    """
    return redact(plain(config))


def overviewView(golb, rates=None, errors=None, audit=None, sites=None,
                 ready: Optional[bool] = None) -> Dict[str, Any]:
    """
    Everything the overview page shows: listeners, pools, routes, totals,
    rates, recent errors and changes.

    @param sites: the listeners' sites by name (for open connections).
    """
    config = golb.config
    pools = golb.runtime.pools
    backends = [backend for pool in pools.values() for backend in pool.backends]
    requestRate, errorRate = rates.rates() if rates is not None else (None, None)
    listeners = []
    for listener in config.listeners:
        site = (sites or {}).get(listener.name)
        connections = getattr(site, "openConnections", None)
        listeners.append({
            "name": listener.name,
            "address": str(listener.address) if listener.address is not None else None,
            "endpoint": listener.endpoint,
            "tls": listener.tls is not None,
            "connections": len(connections) if connections is not None else None,
        })
    view = {
        "version": __version__,
        "config_file": config.filename,
        "ready": ready,
        "reloads": golb.reloads,
        "reload_failures": golb.reloadFailures,
        "last_reload": golb.lastReload,
        "listeners": listeners,
        "routes": len(golb.runtime.router.routes),
        "default_pool": golb.runtime.router.default.pool.name
        if golb.runtime.router.default is not None else None,
        "totals": {
            "pools": len(pools),
            "backends": len(backends),
            "available": sum(1 for backend in backends if backend.available()),
            "in_flight": sum(backend.inFlight for backend in backends),
            "requests": sum(backend.requests for backend in backends),
            "errors": sum(backend.failures for backend in backends),
            "rate": requestRate,
            "error_rate": errorRate,
            "golb_errors": errors.total if errors is not None else None,
        },
        "pools": [poolSummary(golb, pool, rates) for pool in pools.values()],
        "workers": golb.workers.describe() if getattr(golb, "workers", None) else [],
        "errors": {
            "by_code": dict(errors.counts) if errors is not None else {},
            "recent": errors.recent(10) if errors is not None else [],
        },
        "audit": audit.recent(10) if audit is not None else [],
        "metrics": getattr(golb, "metrics", None) is not None,
    }
    return view
