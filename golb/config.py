"""
golb's configuration: YAML in, frozen attrs objects out.

L{parseConfig} and L{loadConfig} return a L{Config} or raise L{ConfigError}
listing every problem in the file at once, each with its line and path::

    golb.yaml:14: backend_pools[0].backends[1].url: 'localhost:3002' is not an http(s) URL

Field names are the YAML key names, so the contract in C{docs/configuration.md}
reads the same in code.  Values are normalized: durations are float seconds,
sizes int bytes, percentages fractions from 0 to 1, addresses L{Address},
networks L{ipaddress} networks, relative file paths absolute.  Parsing never
touches the reactor.
"""

import os
from typing import Any, Dict, List, Optional, Set, Tuple

import attr
import yaml

from golb import _configpolicies, _configpools, _configrouting, _configservices
from golb._configpolicies import (
    POLICY_CLASSES,
    AclPolicy,
    BasicAuthPolicy,
    CompressPolicy,
    CorsPolicy,
    HeaderOps,
    HeadersPolicy,
    MaxBodyPolicy,
    PolicyConfig,
    RateLimitPolicy,
    RedirectPolicy,
    RewritePolicy,
)
from golb._configpools import (
    ALGORITHMS,
    BackendConfig,
    CircuitBreakerConfig,
    DiscoveryConfig,
    HealthCheckConfig,
    KeepaliveConfig,
    PassiveHealthConfig,
    PoolConfig,
    PoolTimeouts,
    QueueConfig,
    RetriesConfig,
    StickyConfig,
    UpstreamTLSConfig,
)
from golb._configrouting import MatchConfig, Mirror, RuleConfig, SplitTarget
from golb._configschema import (
    ConfigError,
    Node,
    Problem,
    Report,
    Section,
    integer,
    listOf,
    networks,
    suggestion,
)
from golb._configservices import (
    AccessLogConfig,
    AdminAuth,
    AdminConfig,
    CertificatePair,
    ClientAuth,
    DemoConfig,
    H2Config,
    ListenerConfig,
    ListenerTimeouts,
    ListenerTLSConfig,
    LoggingConfig,
    ManholeConfig,
    MonitoringConfig,
    PrometheusConfig,
    ShutdownConfig,
    TracingConfig,
)
from golb._units import Address, Network, Rate, UnitError
from golb._yamlsource import loadYAML

__all__ = [
    "ALGORITHMS",
    "POLICY_CLASSES",
    "AccessLogConfig",
    "AclPolicy",
    "Address",
    "AdminAuth",
    "AdminConfig",
    "BackendConfig",
    "BasicAuthPolicy",
    "CertificatePair",
    "CircuitBreakerConfig",
    "ClientAuth",
    "CompressPolicy",
    "Config",
    "ConfigError",
    "CorsPolicy",
    "DemoConfig",
    "DiscoveryConfig",
    "H2Config",
    "HeaderOps",
    "HeadersPolicy",
    "HealthCheckConfig",
    "KeepaliveConfig",
    "ListenerConfig",
    "ListenerTLSConfig",
    "ListenerTimeouts",
    "LoggingConfig",
    "ManholeConfig",
    "MatchConfig",
    "MaxBodyPolicy",
    "Mirror",
    "MonitoringConfig",
    "Network",
    "PassiveHealthConfig",
    "PolicyConfig",
    "PoolConfig",
    "PoolTimeouts",
    "Problem",
    "PrometheusConfig",
    "QueueConfig",
    "Rate",
    "RateLimitPolicy",
    "RedirectPolicy",
    "RetriesConfig",
    "RewritePolicy",
    "RuleConfig",
    "ShutdownConfig",
    "SplitTarget",
    "StickyConfig",
    "TracingConfig",
    "UnitError",
    "UpstreamTLSConfig",
    "loadConfig",
    "parseConfig",
    "summary",
]


@attr.s(frozen=True, auto_attribs=True)
class Config:
    """
    A whole, valid golb configuration.

    @ivar listeners: every listener; the C{server:} shorthand is the one
        named C{default}, first.
    @ivar trusted_proxies: networks whose forwarding headers and PROXY
        protocol headers are believed.
    @ivar routing_rules: in file order; see L{sortedRules}.
    @ivar policies: global policies, applied before each rule's own.
    @ivar filename: the file this came from.
    """

    listeners: Tuple[ListenerConfig, ...] = ()
    trusted_proxies: Tuple[Network, ...] = ()
    backend_pools: Tuple[PoolConfig, ...] = ()
    routing_rules: Tuple[RuleConfig, ...] = ()
    policies: Tuple[PolicyConfig, ...] = ()
    monitoring: MonitoringConfig = MonitoringConfig()
    admin: AdminConfig = AdminConfig()
    manhole: ManholeConfig = ManholeConfig()
    demo: DemoConfig = DemoConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    workers: int = 1
    filename: str = "golb.yaml"

    def pool(self, name: str) -> PoolConfig:
        """
        The pool called C{name}.

        @raise KeyError: if there is none.
        """
        for pool in self.backend_pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def sortedRules(self) -> Tuple[RuleConfig, ...]:
        """
        The routing rules in the order they are tried: higher C{priority}
        first, ties in file order.
        """
        return tuple(sorted(self.routing_rules, key=lambda rule: -rule.priority))


def _checkUnique(report: Report, objects, label: str) -> None:
    seen: Dict[str, str] = {}
    for obj in objects:
        node = report.origin(obj)
        if obj.name is None:
            continue
        if obj.name in seen:
            node.child("name").problem(
                f"duplicate {label} name {obj.name!r} (also {seen[obj.name]})"
            )
        else:
            seen[obj.name] = node.path


def _sockets(node: Node, values: Dict[str, Any]) -> List[Tuple[Address, Node]]:
    """
    Every address golb will listen on, with the node to blame for it.
    """
    found = [
        (listener.address, node.report.origin(listener).child("address"))
        for listener in values["listeners"]
        if listener.endpoint is None and listener.address is not None
    ]
    for key in ("admin", "manhole"):
        section = values[key]
        if section.enabled:
            found.append((section.address, node.child(key).child("address")))
    prometheus = values["monitoring"].prometheus
    if prometheus.enabled:
        where = node.child("monitoring").child("prometheus")
        where = where.child("address" if prometheus.address is not None else "port")
        found.append((prometheus.listenAddress(), where))
    return found


def _checkSockets(node: Node, values: Dict[str, Any]) -> None:
    used: List[Tuple[Address, Node]] = []
    for address, where in _sockets(node, values):
        if address.port == 0:
            continue
        for other, otherWhere in used:
            if other.port == address.port and (
                other.host == address.host or not other.host or not address.host
            ):
                where.problem(f"{address} is already used by {otherWhere.path}")
                break
        else:
            used.append((address, where))


def _checkPoolNames(node: Node, values: Dict[str, Any], pools: Set[str]) -> None:
    report = node.report
    for rule in values["routing_rules"]:
        named = []
        if rule.target_pool:
            named.append((report.origin(rule).child("target_pool"), rule.target_pool))
        for target in rule.split:
            named.append((report.origin(target).child("pool"), target.pool))
        if rule.mirror is not None:
            named.append((report.origin(rule.mirror).child("pool"), rule.mirror.pool))
        for where, name in named:
            if name and name not in pools:
                where.problem(f"no pool named {name!r}{suggestion(name, sorted(pools))}")


def _checkConfig(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    report = node.report
    listeners = tuple(values.pop("listeners", None) or ())
    server = values.pop("server", None)
    if server is not None:
        listeners = (server,) + listeners
    values["listeners"] = listeners
    pools = values["backend_pools"]
    noListener = not listeners and not failed & {"server", "listeners"}
    noPool = not pools and "backend_pools" not in failed
    if noListener and noPool:
        node.problem(
            "nothing to do: the smallest useful file is a listener ('server:' with an"
            " 'address', or 'listeners:') and one pool in 'backend_pools'"
        )
    elif noListener:
        node.problem("no listener: add 'server: {address: \":8080\"}' or a 'listeners' list")
    elif noPool:
        node.problem("no backend pool: add a 'backend_pools' list with at least one pool")
    _checkUnique(report, listeners, "listener")
    _checkUnique(report, pools, "pool")
    _checkSockets(node, values)
    _checkPoolNames(node, values, {pool.name for pool in pools if pool.name})
    values["filename"] = report.filename
    return values


_config = Section(Config, {
    "server": _configservices.server,
    "listeners": listOf(_configservices.listener),
    "trusted_proxies": networks,
    "backend_pools": listOf(_configpools.pool),
    "routing_rules": listOf(_configrouting.rule),
    "policies": _configpolicies.policies,
    "monitoring": _configservices.monitoring,
    "admin": _configservices.admin,
    "manhole": _configservices.manhole,
    "demo": _configservices.demo,
    "shutdown": _configservices.shutdown,
    "workers": integer(1),
}, _checkConfig)


def parseConfig(text: str, filename: str = "golb.yaml", baseDir: Optional[str] = None) -> Config:
    """
    Parse a configuration document.

    @param text: the YAML text.
    @param filename: the name used in problems and kept as C{Config.filename}.
    @param baseDir: the directory relative file paths resolve against; the
        current directory by default.
    @raise ConfigError: listing every problem found.
    """
    report = Report(filename, os.path.abspath(baseDir or os.getcwd()))
    try:
        document = loadYAML(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = ": ".join(part for part in (e.context, e.problem) if part)
        report.add("", mark.line + 1 if mark else None, f"YAML syntax error: {message}")
        raise ConfigError(report.problems) from None
    except yaml.YAMLError as e:
        report.add("", None, f"YAML error: {e}")
        raise ConfigError(report.problems) from None
    if document is None:
        document = {}
    root = Node(document, "", getattr(document, "line", None), report)
    if not isinstance(document, dict):
        root.problem("expected a mapping of settings at the top level (like 'server:')")
        raise ConfigError(report.problems)
    config = _config(root)
    if report.problems:
        problems = sorted(report.problems, key=lambda p: p.line if p.line is not None else 0)
        raise ConfigError(problems)
    return config


def loadConfig(path: str) -> Config:
    """
    Read and parse a configuration file; relative paths inside it resolve
    against its directory.

    @raise ConfigError: if it cannot be read or is not valid.
    """
    return loadConfigText(path)[0]


def loadConfigText(path: str, text: Optional[str] = None) -> Tuple[Config, str]:
    """
    L{loadConfig}, also returning the text it parsed (what C{workers: N}
    hands its workers, so that they run what the parent checked, whatever
    the file holds by then).

    @param text: the file's text, already read: parse it as if read from
        C{path}.
    """
    path = os.path.expanduser(path)
    if text is None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([Problem(path, None, "", f"cannot read: {e}")]) from None
    return parseConfig(text, path, os.path.dirname(os.path.abspath(path))), text


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def summary(config: Config) -> str:
    """
    One line describing a configuration, like
    C{1 listener, 1 pool, 2 backends, 1 routing rule}.
    """
    backends = sum(len(pool.backends) for pool in config.backend_pools)
    parts = [
        _count(len(config.listeners), "listener"),
        _count(len(config.backend_pools), "pool"),
        _count(backends, "backend"),
        _count(len(config.routing_rules), "routing rule"),
    ]
    discovered = sum(1 for pool in config.backend_pools if pool.discovery is not None)
    if discovered:
        parts.insert(3, _count(discovered, "discovered pool"))
    return ", ".join(parts)

