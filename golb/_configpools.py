"""
The C{backend_pools} part of the configuration: pools, their backends and
how golb checks, limits, retries and connects to them.
"""

import functools
import ipaddress
import re
from typing import Any, Dict, Optional, Set, Tuple
from urllib.parse import urlsplit

import attr

from golb import _units
from golb._configschema import (
    Invalid,
    Node,
    Section,
    boolean,
    duration,
    enum,
    filePath,
    integer,
    listOf,
    optional,
    percent,
    positiveDuration,
    string,
    textOrRegex,
    units,
)

ALGORITHMS = (
    "round_robin", "weighted_round_robin", "least_connections", "random", "power_of_two",
    "ip_hash", "consistent_hash", "least_response_time", "first",
)
RETRY_CONDITIONS = ("connect_failure", "reset", "timeout")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def name(node: Node) -> str:
    """
    A name for a pool, listener or rule: letters, digits, C{_.:-}.
    """
    text = string(node)
    if not NAME.match(text):
        raise Invalid(
            f"{text!r} is not a valid name (letters, digits and _ . : - ; no spaces or slashes)"
        )
    return text


@functools.lru_cache(maxsize=1024)
def splitBackendURL(url: str) -> Tuple[str, str, int, str]:
    """
    Split a backend URL into C{(scheme, host, port, path_prefix)}.

    @raise _units.UnitError: if it is not a plain http(s) URL.
    """
    notURL = _units.UnitError(f"{url!r} is not an http(s) URL")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise notURL from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise notURL
    if "@" in parts.netloc:
        raise _units.UnitError(f"{url!r}: user names and passwords do not belong in backend URLs")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise _units.UnitError(f"{url!r}: a backend URL has no query or fragment")
    if not parts.hostname:
        raise _units.UnitError(f"{url!r} has no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    return scheme, parts.hostname, port, parts.path.rstrip("/")


@attr.s(frozen=True, auto_attribs=True)
class BackendConfig:
    """
    One static backend of a pool.  C{scheme}, C{host}, C{port} and
    C{path_prefix} are parsed from C{url}.

    @ivar name: its id in the admin site and metrics; C{host:port} by default.
    """

    url: str
    name: Optional[str] = None
    weight: int = 1
    max_connections: int = 0
    backup: bool = False

    @property
    def scheme(self) -> str:
        """C{http} or C{https}."""
        return splitBackendURL(self.url)[0]

    @property
    def host(self) -> str:
        """The host name or IP address (IPv6 without brackets)."""
        return splitBackendURL(self.url)[1]

    @property
    def port(self) -> int:
        """The port; 80 or 443 when the URL has none."""
        return splitBackendURL(self.url)[2]

    @property
    def path_prefix(self) -> str:
        """The URL's path without a trailing slash: C{""} or like C{/app}."""
        return splitBackendURL(self.url)[3]


def backendURL(node: Node) -> str:
    """
    A backend URL (see L{splitBackendURL}).
    """
    if not isinstance(node.value, str):
        raise Invalid(f"{node.value!r} is not an http(s) URL")
    units(splitBackendURL)(node)
    return node.value.strip()


def _checkBackend(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    if values.get("name") is None and values.get("url") and "url" not in failed:
        _, host, port, _ = splitBackendURL(values["url"])
        values["name"] = str(_units.Address(host, port))
    return values


backend = Section(BackendConfig, {
    "url": backendURL,
    "name": string,
    "weight": integer(0, 256),
    "max_connections": integer(0),
    "backup": boolean,
}, _checkBackend)


@attr.s(frozen=True, auto_attribs=True)
class StickyConfig:
    """
    Sticky sessions: a client's cookie names its backend.

    @ivar cookie: the cookie name; L{None} = no stickiness.
    @ivar ttl: cookie lifetime in seconds; 0 = a session cookie.
    """

    cookie: Optional[str] = None
    ttl: float = 0.0


@attr.s(frozen=True, auto_attribs=True)
class DiscoveryConfig:
    """
    Pool members from a DNS SRV record, refreshed periodically.
    """

    dns_srv: str
    refresh: float = 30.0
    nameservers: Optional[Tuple[_units.Address, ...]] = None
    scheme: str = "http"


@attr.s(frozen=True, auto_attribs=True)
class HealthCheckConfig:
    """
    Active health checks.

    @ivar expect_status: inclusive C{(low, high)} status ranges.
    @ivar expect_body: a substring, C{/regex/}, or L{None}.
    """

    type: str = "http"
    path: str = "/health"
    method: str = "GET"
    host: Optional[str] = None
    expect_status: Tuple[Tuple[int, int], ...] = ((200, 399),)
    expect_body: Optional[str] = None
    interval: float = 10.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


@attr.s(frozen=True, auto_attribs=True)
class PassiveHealthConfig:
    """
    Outlier detection from real traffic.
    """

    consecutive_failures: int = 5
    ejection_time: float = 30.0
    max_ejection_percent: float = 0.5


@attr.s(frozen=True, auto_attribs=True)
class CircuitBreakerConfig:
    """
    Pool-wide limits; 0 = no limit.
    """

    max_connections: int = 0
    max_pending: int = 0
    max_requests: int = 0


@attr.s(frozen=True, auto_attribs=True)
class QueueConfig:
    """
    The waiting room used when every backend is at C{max_connections}.
    """

    max: int = 0
    timeout: float = 5.0


@attr.s(frozen=True, auto_attribs=True)
class RetriesConfig:
    """
    Retries on another backend.

    @ivar on: conditions: C{connect_failure}, C{reset}, C{timeout} or a 5xx
        status as a string.
    """

    attempts: int = 1
    on: Tuple[str, ...] = ("connect_failure", "reset", "502", "503")
    idempotent_only: bool = True
    budget: float = 0.2


@attr.s(frozen=True, auto_attribs=True)
class PoolTimeouts:
    """
    Upstream timeouts in seconds; 0 = none.
    """

    connect: float = 3.0
    response_header: float = 30.0
    idle: float = 60.0


@attr.s(frozen=True, auto_attribs=True)
class KeepaliveConfig:
    """
    Idle upstream connections kept for reuse.
    """

    max_idle_per_backend: int = 32
    idle_timeout: float = 60.0


@attr.s(frozen=True, auto_attribs=True)
class UpstreamTLSConfig:
    """
    TLS towards https backends.
    """

    verify: bool = True
    ca: Optional[str] = None
    server_name: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None


@attr.s(frozen=True, auto_attribs=True)
class PoolConfig:
    """
    A backend pool: exactly one of C{backends} (static) or C{discovery}.
    """

    name: str
    algorithm: str = "round_robin"
    hash_on: str = "client_ip"
    sticky: StickyConfig = StickyConfig()
    slow_start: float = 0.0
    panic_threshold: float = 0.5
    backends: Tuple[BackendConfig, ...] = ()
    discovery: Optional[DiscoveryConfig] = None
    health_check: Optional[HealthCheckConfig] = None
    passive_health: Optional[PassiveHealthConfig] = None
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    queue: QueueConfig = QueueConfig()
    retries: RetriesConfig = RetriesConfig()
    timeouts: PoolTimeouts = PoolTimeouts()
    keepalive: KeepaliveConfig = KeepaliveConfig()
    tls: UpstreamTLSConfig = UpstreamTLSConfig()
    preserve_host: bool = True
    protocol: str = "http1"


_HASH_ON = re.compile(r"^(?:client_ip|path|(?:header|cookie|query):[^\s:]+)$")


def hashOn(node: Node) -> str:
    """
    C{client_ip}, C{path}, C{header:NAME}, C{cookie:NAME} or C{query:NAME}.
    """
    text = string(node)
    if not _HASH_ON.match(text):
        raise Invalid(
            f"{text!r} is not one of client_ip, path, header:NAME, cookie:NAME, query:NAME"
        )
    return text


def retryCondition(node: Node) -> str:
    """
    C{connect_failure}, C{reset}, C{timeout} or a 5xx status.
    """
    value = node.value
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if text in RETRY_CONDITIONS or (
        isinstance(text, str) and len(text) == 3 and text.isdigit() and text.startswith("5")
    ):
        return text
    raise Invalid(f"{value!r} is not one of connect_failure, reset, timeout or a 5xx status")


def httpMethod(node: Node) -> str:
    """
    An HTTP method, upper-cased.
    """
    text = string(node)
    if not re.match(r"^[A-Za-z]+$", text):
        raise Invalid(f"{text!r} is not an HTTP method")
    return text.upper()


def absolutePath(node: Node) -> str:
    """
    A URL path starting with C{/}.
    """
    text = string(node)
    if not text.startswith("/"):
        raise Invalid(f"{text!r} must start with '/'")
    return text


def _checkHealth(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    interval, timeout = values["interval"], values["timeout"]
    if not failed & {"interval", "timeout"} and timeout > interval:
        node.child("timeout").problem(
            f"timeout must not exceed interval ({_units.formatDuration(interval)})"
        )
    return values


def _checkUpstreamTLS(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    if (values.get("cert") is None) != (values.get("key") is None) and not failed:
        node.problem("set both cert and key, or neither")
    return values


def _checkPool(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    if not failed & {"backends", "discovery"}:
        hasBackends = bool(values.get("backends"))
        if hasBackends and values.get("discovery") is not None:
            node.problem("set only one of 'backends' or 'discovery'")
        elif not hasBackends and values.get("discovery") is None:
            where = node.child("backends") if node.has("backends") else node
            where.problem("a pool needs at least one backend in 'backends', or 'discovery'")
    wanted = {"h2": "https", "h2c": "http"}.get(values["protocol"])
    seen: Dict[str, int] = {}
    for backend in values.get("backends") or ():
        backendNode = node.report.origin(backend)
        if backend.name in seen:
            backendNode.child("name").problem(
                f"duplicate backend name {backend.name!r} (also backends[{seen[backend.name]}])"
                "; give each backend a distinct name"
            )
        elif backend.name is not None:
            seen[backend.name] = backendNode.index
        if wanted and backend.url and backend.scheme != wanted:
            backendNode.child("url").problem(
                f"protocol {values['protocol']} needs {wanted} backends"
            )
    return values


def _parseNameserver(value) -> _units.Address:
    address = _units.parseAddress(value, defaultPort=53)
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        raise _units.UnitError(
            f"{value!r}: a nameserver must be an IP address (like 10.96.0.10:53), not a name"
        ) from None
    return address


def _nameserver(node: Node) -> _units.Address:
    return units(_parseNameserver)(node)


pool = Section(PoolConfig, {
    "name": name,
    "algorithm": enum(*ALGORITHMS),
    "hash_on": hashOn,
    "sticky": Section(StickyConfig, {"cookie": string, "ttl": duration}),
    "slow_start": duration,
    "panic_threshold": percent,
    "backends": listOf(backend),
    "discovery": Section(DiscoveryConfig, {
        "dns_srv": string,
        "refresh": positiveDuration,
        "nameservers": optional(listOf(_nameserver, single=True)),
        "scheme": enum("http", "https"),
    }),
    "health_check": Section(HealthCheckConfig, {
        "type": enum("http", "tcp", "grpc"),
        "path": absolutePath,
        "method": httpMethod,
        "host": string,
        "expect_status": units(_units.parseStatusRanges),
        "expect_body": textOrRegex,
        "interval": positiveDuration,
        "timeout": positiveDuration,
        "healthy_threshold": integer(1),
        "unhealthy_threshold": integer(1),
    }, _checkHealth),
    "passive_health": Section(PassiveHealthConfig, {
        "consecutive_failures": integer(1),
        "ejection_time": positiveDuration,
        "max_ejection_percent": percent,
    }),
    "circuit_breaker": Section(CircuitBreakerConfig, {
        "max_connections": integer(0),
        "max_pending": integer(0),
        "max_requests": integer(0),
    }),
    "queue": Section(QueueConfig, {"max": integer(0), "timeout": duration}),
    "retries": Section(RetriesConfig, {
        "attempts": integer(0),
        "on": listOf(retryCondition, single=True),
        "idempotent_only": boolean,
        "budget": percent,
    }),
    "timeouts": Section(PoolTimeouts, {
        "connect": duration,
        "response_header": duration,
        "idle": duration,
    }),
    "keepalive": Section(KeepaliveConfig, {
        "max_idle_per_backend": integer(0),
        "idle_timeout": duration,
    }),
    "tls": Section(UpstreamTLSConfig, {
        "verify": boolean,
        "ca": filePath(),
        "server_name": string,
        "cert": filePath(),
        "key": filePath(),
    }, _checkUpstreamTLS),
    "preserve_host": boolean,
    "protocol": enum("http1", "h2", "h2c"),
}, _checkPool)


__all__ = [
    "ALGORITHMS",
    "BackendConfig",
    "CircuitBreakerConfig",
    "DiscoveryConfig",
    "HealthCheckConfig",
    "KeepaliveConfig",
    "PassiveHealthConfig",
    "PoolConfig",
    "PoolTimeouts",
    "QueueConfig",
    "RetriesConfig",
    "StickyConfig",
    "UpstreamTLSConfig",
    "absolutePath",
    "httpMethod",
    "name",
    "pool",
    "splitBackendURL",
]
