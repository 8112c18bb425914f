"""
The listening side of the configuration: C{listeners} (and the C{server}
shorthand), C{monitoring}, C{admin}, C{manhole}, C{demo} and C{shutdown}.
"""

from typing import Any, Dict, Optional, Set, Tuple

import attr

from golb import _units
from golb._configpools import absolutePath, name
from golb._configschema import (
    Invalid,
    Node,
    Section,
    address,
    boolean,
    checkFile,
    duration,
    enum,
    filePath,
    integer,
    listOf,
    mapOf,
    resolvePath,
    size,
    string,
)

__all__ = [
    "AccessLogConfig",
    "AdminAuth",
    "AdminConfig",
    "CertificatePair",
    "ClientAuth",
    "DemoConfig",
    "H2Config",
    "ListenerConfig",
    "ListenerTLSConfig",
    "ListenerTimeouts",
    "LoggingConfig",
    "ManholeConfig",
    "MonitoringConfig",
    "PrometheusConfig",
    "ShutdownConfig",
    "TracingConfig",
    "admin",
    "demo",
    "listener",
    "manhole",
    "monitoring",
    "server",
    "shutdown",
]


@attr.s(frozen=True, auto_attribs=True)
class CertificatePair:
    """
    A certificate (chain) file and its private key file, absolute paths.
    """

    cert: str
    key: str


@attr.s(frozen=True, auto_attribs=True)
class ClientAuth:
    """
    Client certificate authentication against the CA file C{ca}.
    """

    ca: str
    required: bool = False


@attr.s(frozen=True, auto_attribs=True)
class ListenerTLSConfig:
    """
    TLS on a listener.  SNI picks a certificate by its names; the first is
    the default.

    @ivar ciphers: an OpenSSL cipher string, or L{None} for modern defaults.
    @ivar reload_interval: seconds between checks for changed certificate
        files; 0 = never.
    """

    certificates: Tuple[CertificatePair, ...]
    min_version: str = "1.2"
    ciphers: Optional[str] = None
    alpn: Tuple[str, ...] = ("http/1.1",)
    client_auth: Optional[ClientAuth] = None
    reload_interval: float = 0.0


@attr.s(frozen=True, auto_attribs=True)
class ListenerTimeouts:
    """
    Client-side timeouts in seconds.
    """

    request_header: float = 10.0
    idle: float = 60.0


@attr.s(frozen=True, auto_attribs=True)
class H2Config:
    """
    HTTP/2 options of a listener.
    """

    h2c: bool = False


@attr.s(frozen=True, auto_attribs=True)
class ListenerConfig:
    """
    One listening socket serving the routing rules.

    @ivar address: where to listen, unless C{endpoint} is set.
    @ivar endpoint: a Twisted server endpoint string; wins over C{address}.
    @ivar redirect_to_https: a port: answer every request with a 308 to
        https on that port.
    """

    name: Optional[str] = None
    address: Optional[_units.Address] = None
    endpoint: Optional[str] = None
    proxy_protocol: bool = False
    timeouts: ListenerTimeouts = ListenerTimeouts()
    max_header_bytes: int = 65536
    max_body_bytes: int = 100 * 1024 * 1024
    tls: Optional[ListenerTLSConfig] = None
    redirect_to_https: Optional[int] = None
    http2: H2Config = H2Config()

    def endpointDescription(self) -> str:
        """
        The Twisted server endpoint string to listen with.
        """
        if self.endpoint is not None:
            return self.endpoint
        return self.address.endpointDescription()


def _checkTLS(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    if "certificates" not in failed and not values.get("certificates"):
        node.child("certificates").problem("a TLS listener needs at least one certificate")
    return values


_tls = Section(ListenerTLSConfig, {
    "certificates": listOf(Section(CertificatePair, {"cert": filePath(), "key": filePath()})),
    "min_version": enum("1.2", "1.3"),
    "ciphers": string,
    "alpn": listOf(enum("http/1.1", "h2"), single=True),
    "client_auth": Section(ClientAuth, {"ca": filePath(), "required": boolean}),
    "reload_interval": duration,
})


def _checkListener(
    node: Node, values: Dict[str, Any], failed: Set[str], defaultName: Optional[str] = None,
    defaultAddress: Optional[_units.Address] = None,
) -> Dict[str, Any]:
    if values.get("name") is None:
        values["name"] = defaultName or f"listener{node.index}"
    if values.get("address") is None and values.get("endpoint") is None:
        if defaultAddress is not None and not failed & {"address", "endpoint"}:
            values["address"] = defaultAddress
        elif not failed & {"address", "endpoint"}:
            node.problem("a listener needs an 'address' (like ':8080') or an 'endpoint'")
    tls = values.get("tls")
    if tls is not None and values.get("redirect_to_https") is not None:
        node.child("redirect_to_https").problem("this listener is already HTTPS")
    if tls is not None and values["http2"].h2c:
        node.child("http2").problem("h2c is for plain listeners; with TLS, add 'h2' to tls.alpn")
    return values


_listenerParsers = {
    "name": name,
    "address": address,
    "endpoint": string,
    "proxy_protocol": boolean,
    "timeouts": Section(ListenerTimeouts, {"request_header": duration, "idle": duration}),
    "max_header_bytes": size,
    "max_body_bytes": size,
    "tls": _tls,
    "redirect_to_https": integer(1, 65535),
    "http2": Section(H2Config, {"h2c": boolean}),
}

listener = Section(ListenerConfig, _listenerParsers, _checkListener)
server = Section(
    ListenerConfig, _listenerParsers,
    lambda node, values, failed: _checkListener(
        node, values, failed, "default", _units.Address("", 8080)
    ),
)


@attr.s(frozen=True, auto_attribs=True)
class PrometheusConfig:
    """
    The Prometheus metrics endpoint.

    @ivar address: where to listen; wins over C{port}; L{None} = every
        interface on C{port}.
    """

    enabled: bool = True
    path: str = "/metrics"
    port: int = 9090
    address: Optional[_units.Address] = None

    def listenAddress(self) -> _units.Address:
        """
        The address to serve metrics on.
        """
        if self.address is not None:
            return self.address
        return _units.Address("", self.port)


@attr.s(frozen=True, auto_attribs=True)
class TracingConfig:
    """
    OpenTelemetry tracing (OTLP export).

    @ivar endpoint: C{host:port} or an http(s) URL of the collector.
    @ivar sampling_rate: the fraction of new traces sampled, 0 to 1.
    @ivar headers: extra headers sent to the collector.
    """

    enabled: bool = False
    service_name: str = "golb"
    endpoint: str = "localhost:4317"
    protocol: str = "grpc"
    sampling_rate: float = 1.0
    headers: Dict[str, str] = attr.Factory(dict)


@attr.s(frozen=True, auto_attribs=True)
class AccessLogConfig:
    """
    One line per request.

    @ivar path: C{-} for standard output, else an absolute file path.
    """

    enabled: bool = True
    format: str = "combined"
    path: str = "-"


@attr.s(frozen=True, auto_attribs=True)
class LoggingConfig:
    """
    golb's own log and the access log.

    @ivar level: C{debug}, C{info}, C{warn} or C{error} (C{warning} is read
        as C{warn}), the names of L{twisted.logger.LogLevel}.
    """

    level: str = "info"
    format: str = "text"
    access_log: AccessLogConfig = AccessLogConfig()


@attr.s(frozen=True, auto_attribs=True)
class MonitoringConfig:
    """
    Metrics, tracing and logging.
    """

    prometheus: PrometheusConfig = PrometheusConfig()
    tracing: TracingConfig = TracingConfig()
    logging: LoggingConfig = LoggingConfig()


def collectorEndpoint(node: Node) -> str:
    """
    C{host:port} or an http(s) URL.
    """
    text = string(node).strip()
    if "://" in text:
        if not text.startswith(("http://", "https://")):
            raise Invalid(f"{text!r} is not host:port or an http(s) URL")
        return text
    try:
        _units.parseAddress(text)
    except _units.UnitError as e:
        raise Invalid(str(e)) from None
    return text


def fraction(node: Node) -> float:
    """
    A number from 0 to 1, or a percentage like C{10%}.
    """
    value = node.value
    if isinstance(value, str):
        try:
            return _units.parsePercent(value)
        except _units.UnitError as e:
            raise Invalid(str(e)) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise Invalid(f"{value!r} is not a number from 0 to 1 (or a percentage like 10%)")
    return float(value)


def _logPath(node: Node) -> str:
    text = string(node)
    return text if text == "-" else resolvePath(text, node.report.baseDir)


monitoring = Section(MonitoringConfig, {
    "prometheus": Section(PrometheusConfig, {
        "enabled": boolean,
        "path": absolutePath,
        "port": integer(0, 65535),
        "address": address,
    }),
    "tracing": Section(TracingConfig, {
        "enabled": boolean,
        "service_name": string,
        "endpoint": collectorEndpoint,
        "protocol": enum("grpc", "http"),
        "sampling_rate": fraction,
        "headers": mapOf(),
    }),
    "logging": Section(LoggingConfig, {
        "level": enum(
            "debug", "info", "warn", "warning", "error",
            normalize=lambda level: "warn" if level == "warning" else level,
        ),
        "format": enum("text", "json"),
        "access_log": Section(AccessLogConfig, {
            "enabled": boolean,
            "format": enum("combined", "json"),
            "path": _logPath,
        }),
    }),
})


@attr.s(frozen=True, auto_attribs=True)
class AdminAuth:
    """
    Admin site authentication: an htpasswd file and/or a bearer token file.
    """

    users_file: Optional[str] = None
    token_file: Optional[str] = None


@attr.s(frozen=True, auto_attribs=True)
class AdminConfig:
    """
    The admin site (HTML and JSON API).
    """

    enabled: bool = True
    address: _units.Address = _units.Address("127.0.0.1", 8081)
    auth: AdminAuth = AdminAuth()


def _checkAdmin(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    enabled, auth, where = values["enabled"], values["auth"], values["address"]
    if enabled and "address" not in failed and not where.isLoopback() and not (
        auth.users_file or auth.token_file
    ):
        node.child("address").problem(
            f"{where} is not loopback; set admin.auth.users_file or token_file"
        )
    if enabled and "auth" not in failed:
        authNode = node.child("auth")
        for key in ("users_file", "token_file"):
            path = getattr(auth, key)
            if path is not None:
                try:
                    checkFile(authNode, path)
                except Invalid as e:
                    authNode.child(key).problem(str(e))
    return values


admin = Section(AdminConfig, {
    "enabled": boolean,
    "address": address,
    "auth": Section(AdminAuth, {"users_file": filePath(), "token_file": filePath()}),
}, _checkAdmin)


@attr.s(frozen=True, auto_attribs=True)
class ManholeConfig:
    """
    An SSH Manhole (a Python prompt inside golb), key authentication only.

    @ivar authorized_keys: absolute path of the public keys allowed in.
    @ivar host_key: the server's private key; L{None} = generate one into
        the state directory.
    """

    enabled: bool = False
    address: _units.Address = _units.Address("127.0.0.1", 2222)
    authorized_keys: str = "~/.ssh/authorized_keys"
    host_key: Optional[str] = None


def _checkManhole(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    keys = values["authorized_keys"] = resolvePath(values["authorized_keys"], node.report.baseDir)
    if values.get("enabled") and "authorized_keys" not in failed:
        try:
            checkFile(node, keys)
        except Invalid as e:
            node.child("authorized_keys").problem(str(e))
    return values


manhole = Section(ManholeConfig, {
    "enabled": boolean,
    "address": address,
    "authorized_keys": filePath(),
    "host_key": filePath(),
}, _checkManhole)


@attr.s(frozen=True, auto_attribs=True)
class DemoConfig:
    """
    Demo backends on 127.0.0.1, ports C{base_port} and up.
    """

    backends: int = 0
    base_port: int = 3001


def _checkDemo(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    count, base = values["backends"], values["base_port"]
    if not failed and base + count - 1 > 65535:
        node.child("base_port").problem(f"{count} backends from port {base} go past 65535")
    return values


demo = Section(DemoConfig, {"backends": integer(0, 64), "base_port": integer(1, 65535)}, _checkDemo)


@attr.s(frozen=True, auto_attribs=True)
class ShutdownConfig:
    """
    @ivar grace: seconds to drain requests in flight on SIGTERM.
    """

    grace: float = 20.0


shutdown = Section(ShutdownConfig, {"grace": duration})

