"""
OpenTelemetry tracing: a C{SERVER} span for each client request and a
C{CLIENT} span for each attempt to a backend, exported over OTLP.

The L{TracingService} (C{monitoring.tracing}) owns a C{TracerProvider} of its
own - never the process-wide one - with a C{BatchSpanProcessor} whose thread
runs the OTLP exporter; it plugs a L{TracingObserver} into golb's
L{golb.observe.Observatory} while it runs.

Spans are handed along explicitly (C{record.span}, C{attempt.span}): the
OpenTelemetry "current context" lives in context variables, which do not
follow a request through Twisted's callbacks.  A span holds only plain values
(text, numbers), so the exporter thread never touches a Twisted object.

A client's W3C C{traceparent} / C{tracestate} make golb's server span a child
of the client's span, and every attempt carries golb's own C{traceparent}, so
the backend's spans hang under golb's attempt span.  Unsampled requests still
get (non-recording) spans, so the trace context reaches the backend, but
nothing of them is recorded or exported.
"""

import importlib
import threading
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from golb import __version__
from golb._units import UnitError, parseAddress
from golb.observe import Observer

__all__ = [
    "EXPORT_TIMEOUT",
    "TracingObserver",
    "TracingService",
    "TracingUnavailable",
    "buildProvider",
    "exporterFor",
    "grpcTarget",
    "httpEndpoint",
    "shutdownProvider",
]

# Seconds one export to the collector may take (the exporter's own timeout).
EXPORT_TIMEOUT = 10.0

_HTTP_EXPORTER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_GRPC_EXPORTER = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"

# The methods HTTP semantic conventions name; any other is "_OTHER".
_KNOWN_METHODS = frozenset(
    ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"]
)

# Headers of the W3C trace context that golb replaces on the way to a backend.
_TRACE_HEADERS = frozenset([b"traceparent", b"tracestate"])

# No parent: an explicit empty context, so that a span never picks up
# whatever happens to be "current" in a context variable.
_ROOT = Context()


class TracingUnavailable(Exception):
    """
    The configured tracing cannot run in this Python (the OTLP/gRPC exporter
    needs grpcio, which does not exist for PyPy).
    """


class _RequestHeaders(Getter):
    """
    Reads a propagated trace context from a request's
    L{twisted.web.http_headers.Headers}.
    """

    def get(self, carrier, key):
        values = carrier.getRawHeaders(key.encode("ascii"))
        if values is None:
            return None
        return [value.decode("latin-1") for value in values]

    def keys(self, carrier):
        return [name.decode("latin-1").lower() for name, _ in carrier.getAllRawHeaders()]


_GETTER = _RequestHeaders()


def _nanoseconds(seconds: float) -> int:
    return int(seconds * 1e9)


def _serverAddress(host: str) -> Tuple[str, Optional[int]]:
    """
    The host and port of a C{Host} header value.
    """
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, sep, port = host.rpartition(":")
        if not sep:
            return host, None
    if port.isdigit():
        return name, int(port)
    return name, None


class TracingObserver(Observer):
    """
    Turns the requests golb handles into spans: one C{SERVER} span per client
    request (parent: the client's C{traceparent}, if any) and one C{CLIENT}
    span per attempt, whose context is sent to the backend in place of the
    client's.

    Span names follow the HTTP semantic conventions: the method, then the
    route's name once one matched (C{GET api}); methods the conventions do not
    know are named C{HTTP}.  A span is an error when its status is 5xx or
    golb could not get an answer.

    @ivar tracer: the C{opentelemetry.trace.Tracer} that makes the spans.
    @ivar propagator: reads and writes W3C trace context headers.
    """

    def __init__(self, tracer, propagator=None):
        self.tracer = tracer
        self.propagator = propagator if propagator is not None else TraceContextTextMapPropagator()

    def requestStarted(self, record, request):
        """
        Start the request's server span, a child of the client's span when the
        request carries a C{traceparent}; put its ids in C{record}.
        """
        headers = request.requestHeaders
        if headers.hasHeader(b"traceparent"):
            parent = self.propagator.extract(headers, context=_ROOT, getter=_GETTER)
        else:
            parent = _ROOT
        method = record.method
        name = method if method in _KNOWN_METHODS else "HTTP"
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                      start_time=_nanoseconds(record.started))
        record.span = span
        spanContext = span.get_span_context()
        if spanContext.is_valid:
            record.traceId = format(spanContext.trace_id, "032x")
            record.spanId = format(spanContext.span_id, "016x")
        if not span.is_recording():
            return
        attributes = {
            "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
            "url.path": request.path.decode("latin-1"),
            "url.scheme": "https" if request.isSecure() else "http",
            "network.protocol.version": record.version[5:] if record.version.startswith(
                "HTTP/") else record.version,
            "client.address": record.client,
            "golb.listener": record.listener,
        }
        if name == "HTTP":
            attributes["http.request.method_original"] = method
        if record.host:
            address, port = _serverAddress(record.host)
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        if record.userAgent:
            attributes["user_agent.original"] = record.userAgent
        span.set_attributes(attributes)

    def attemptStarted(self, record, attempt, headers):
        """
        Start a client span under the request's server span and send its
        context to the backend, replacing any the client sent.
        """
        parent = record.span
        if parent is None:
            return
        method = record.method
        span = self.tracer.start_span(
            method if method in _KNOWN_METHODS else "HTTP",
            context=set_span_in_context(parent, _ROOT),
            kind=SpanKind.CLIENT,
            start_time=_nanoseconds(attempt.started),
        )
        attempt.span = span
        carrier: Dict[str, str] = {}
        self.propagator.inject(carrier, context=set_span_in_context(span, _ROOT))
        headers[:] = [header for header in headers if header[0].lower() not in _TRACE_HEADERS]
        for key, value in carrier.items():
            headers.append((key.encode("ascii"), value.encode("latin-1")))
        if not span.is_recording():
            return
        backend = attempt.backend
        attributes = {
            "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
            "server.address": backend.host,
            "server.port": backend.port,
            "url.scheme": backend.scheme,
            "golb.pool": attempt.pool,
            "golb.backend": backend.id,
        }
        if backend.address:
            attributes["network.peer.address"] = backend.address
        if attempt.number > 1:
            attributes["http.request.resend_count"] = attempt.number - 1
        span.set_attributes(attributes)

    def attemptFinished(self, record, attempt):
        """
        End the attempt's span with the backend's status, or golb's error.
        """
        span = attempt.span
        if span is None:
            return
        if span.is_recording():
            status, error = attempt.status, attempt.error
            if error is not None:
                attributes = {"error.type": error, "golb.error": error}
                span.set_status(StatusCode.ERROR, error)
            else:
                attributes = {}
            if status:
                attributes["http.response.status_code"] = status
                if status >= 500:
                    attributes["error.type"] = str(status)
                    span.set_status(StatusCode.ERROR)
            span.set_attributes(attributes)
        span.end(end_time=_nanoseconds(attempt.finished))

    def requestFinished(self, record):
        """
        End the server span with what became of the request.
        """
        span = record.span
        if span is None:
            return
        if span.is_recording():
            attributes = {"golb.retries": record.retries,
                          "http.request.body.size": record.bytesIn,
                          "http.response.body.size": record.bytesOut}
            status = record.status
            if status:
                attributes["http.response.status_code"] = status
            if record.route is not None:
                attributes["golb.route"] = record.route
                method = record.method
                span.update_name(
                    f"{method if method in _KNOWN_METHODS else 'HTTP'} {record.route}")
            if record.pool is not None:
                attributes["golb.pool"] = record.pool
            if record.backend is not None:
                attributes["golb.backend"] = record.backend
            if record.error is not None:
                attributes["golb.error"] = record.error
            if record.aborted:
                attributes["golb.aborted"] = True
            if status >= 500:
                attributes["error.type"] = record.error or str(status)
                span.set_status(StatusCode.ERROR, record.error)
            span.set_attributes(attributes)
        span.end(end_time=_nanoseconds(record.finished))


def httpEndpoint(endpoint: str) -> str:
    """
    The OTLP/HTTP URL spans are posted to: C{host:port} becomes
    C{http://host:port/v1/traces}; a URL without a path gets C{/v1/traces};
    a URL with a path is used as it is.
    """
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.path in ("", "/"):
            return f"{parts.scheme}://{parts.netloc}/v1/traces"
        return endpoint
    host, port = _hostPort(endpoint)
    return f"http://{host}:{port}/v1/traces"


def grpcTarget(endpoint: str) -> Tuple[str, bool]:
    """
    The gRPC target (C{host:port}) of a collector endpoint, and whether it is
    plaintext: C{host:port} and C{http://} URLs are, C{https://} URLs use TLS
    (the system's CA certificates).
    """
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        secure = parts.scheme == "https"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if secure else 80)
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{port}", not secure
    host, port = _hostPort(endpoint)
    return f"{host}:{port}", True


def _hostPort(endpoint: str) -> Tuple[str, int]:
    try:
        address = parseAddress(endpoint)
    except UnitError as e:
        raise ValueError(f"monitoring.tracing.endpoint: {e}") from None
    host = address.host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return host, address.port


def _grpcExporterModule(importModule):
    try:
        return importModule(_GRPC_EXPORTER)
    except ImportError as e:
        raise TracingUnavailable(
            "monitoring.tracing.protocol grpc needs the OTLP/gRPC exporter and grpcio, which "
            f"cannot be imported here ({e}; grpcio does not exist for PyPy): use "
            "'protocol: http' with the collector's OTLP/HTTP endpoint (port 4318)"
        ) from None


def exporterFor(config, importModule: Callable = importlib.import_module,
                timeout: float = EXPORT_TIMEOUT):
    """
    The OTLP span exporter for a L{golb.config.TracingConfig}.  The gRPC
    exporter is imported only when asked for.

    @param importModule: imports a module by name (for tests).
    @param timeout: seconds one export may take.
    @raise TracingUnavailable: when the protocol's exporter cannot be imported.
    """
    headers = dict(config.headers) or None
    if config.protocol == "http":
        module = importModule(_HTTP_EXPORTER)
        return module.OTLPSpanExporter(endpoint=httpEndpoint(config.endpoint),
                                       headers=headers, timeout=timeout)
    module = _grpcExporterModule(importModule)
    target, insecure = grpcTarget(config.endpoint)
    if headers is not None:
        # gRPC metadata keys must be lowercase.
        headers = tuple((key.lower(), value) for key, value in headers.items())
    return module.OTLPSpanExporter(endpoint=target, insecure=insecure,
                                   headers=headers, timeout=timeout)


def buildProvider(config, exporter) -> TracerProvider:
    """
    A C{TracerProvider} for a L{golb.config.TracingConfig} that batches its
    spans to C{exporter} in a thread of its own.  It is not made the
    process-wide provider.

    New traces are sampled at C{config.sampling_rate}; a request whose client
    sent a trace context follows the client's decision.
    """
    resource = Resource.create({
        SERVICE_NAME: config.service_name,
        SERVICE_VERSION: __version__,
    })
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(config.sampling_rate)),
        resource=resource,
        shutdown_on_exit=False,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _inDaemonThread(reactor, f) -> Deferred:
    """
    Call C{f} in a new daemon thread; the result fires on the reactor.  Unlike
    the reactor's thread pool, the reactor does not wait for such a thread
    when it stops, so a collector that hangs cannot hold up golb's exit.
    """
    d = Deferred()

    def fire(result):
        if not d.called:
            d.callback(result)

    def fail(failure):
        if not d.called:
            d.errback(failure)

    def run():
        try:
            result = f()
        except BaseException:
            reactor.callFromThread(fail, Failure())
        else:
            reactor.callFromThread(fire, result)

    threading.Thread(target=run, name="golb-tracing-shutdown", daemon=True).start()
    return d


def shutdownProvider(reactor, provider, timeout: float) -> Deferred:
    """
    Flush C{provider}'s pending spans and shut it down, in another thread.

    @return: a L{Deferred} that fires when that is done, or after C{timeout}
        seconds (with L{twisted.internet.defer.TimeoutError}).
    """
    d = _inDaemonThread(reactor, provider.shutdown)
    d.addTimeout(timeout, reactor)
    return d


class TracingService(Service):
    """
    Traces requests while it runs, as C{monitoring.tracing} says: when
    enabled, it builds the tracer provider and OTLP exporter when started
    and plugs a L{TracingObserver} into the observatory; stopping it unplugs
    the observer and flushes the spans not yet exported, waiting at most
    L{shutdownTimeout} seconds.  When disabled it does nothing at all.

    Changes to C{monitoring.tracing} take effect on restart, not on reload.

    @ivar provider: the running C{TracerProvider} (L{None} when stopped or
        disabled).
    @ivar observer: the plugged-in L{TracingObserver}, or L{None}.
    @ivar shutdownTimeout: how long stopping waits for the last spans to be
        exported.
    """

    name = "tracing"
    log = Logger()
    shutdownTimeout = 5.0

    def __init__(self, golb, reactor=None, exporterFactory: Optional[Callable] = None,
                 importModule: Callable = importlib.import_module):
        """
        @param golb: the L{golb.app.Golb} whose requests are traced.
        @param exporterFactory: makes the span exporter from the
            L{golb.config.TracingConfig} (L{exporterFor} by default).
        @param importModule: imports the exporter's module (for tests).
        @raise TracingUnavailable: when the configured protocol cannot be
            used in this Python (gRPC on PyPy), so golb fails at startup.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.golb = golb
        self.reactor = reactor
        self.config = golb.config.monitoring.tracing
        self.importModule = importModule
        if exporterFactory is None:
            def exporterFactory(config):
                return exporterFor(config, importModule)
        self.exporterFactory = exporterFactory
        self.provider: Optional[TracerProvider] = None
        self.observer: Optional[TracingObserver] = None
        if self.config.enabled and self.config.protocol == "grpc":
            _grpcExporterModule(importModule)

    def startService(self) -> None:
        """
        Build the provider and start tracing (when enabled).
        """
        Service.startService(self)
        config = self.config
        if not config.enabled:
            return
        exporter = self.exporterFactory(config)
        self.provider = buildProvider(config, exporter)
        self.observer = TracingObserver(self.provider.get_tracer("golb", __version__))
        self.golb.observatory.add(self.observer)
        if config.protocol == "http":
            where = f"OTLP/HTTP {httpEndpoint(config.endpoint)}"
            if where.endswith(":4317/v1/traces"):
                self.log.warn(
                    "monitoring.tracing: port 4317 is OTLP/gRPC's; OTLP/HTTP collectors "
                    "usually listen on 4318 ({endpoint})", endpoint=config.endpoint)
        else:
            target, insecure = grpcTarget(config.endpoint)
            where = f"OTLP/gRPC {target}{'' if insecure else ' (TLS)'}"
        self.log.info("Tracing to {where} as {service}, sampling {rate:.0%} of new traces",
                      where=where, service=config.service_name, rate=config.sampling_rate)

    def stopService(self):
        """
        Stop tracing and export what is left.

        @return: a L{Deferred} that fires once the spans are exported or
            L{shutdownTimeout} has passed.
        """
        Service.stopService(self)
        observer, self.observer = self.observer, None
        if observer is not None:
            self.golb.observatory.remove(observer)
        provider, self.provider = self.provider, None
        if provider is None:
            return succeed(None)
        d = shutdownProvider(self.reactor, provider, self.shutdownTimeout)

        def failed(failure):
            if failure.check(TimeoutError):
                self.log.warn("Tracing: gave up exporting the last spans after {timeout}s",
                              timeout=self.shutdownTimeout)
            else:
                self.log.failure("Tracing: shutting down the exporter failed", failure)

        d.addErrback(failed)
        return d
