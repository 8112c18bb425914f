"""
Tests for L{golb.observe.tracing}: spans for real requests through a real
golb, exported over OTLP to collectors running in the test.
"""

import platform
import threading

import attr
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from golb import __version__
from golb._configservices import TracingConfig
from golb.observe import Observer
from golb.observe.tracing import (
    TracingObserver,
    TracingService,
    TracingUnavailable,
    exporterFor,
    grpcTarget,
    httpEndpoint,
    shutdownProvider,
)
from golb.test.support import freePort, listenBackend, listenGolb, waitUntil
from golb.test.test_proxy import FunctionResource, ProxyTestCase

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def attributesOf(keyValues) -> dict:
    """
    OTLP C{KeyValue}s as a dict of plain values.
    """
    result = {}
    for keyValue in keyValues:
        value = keyValue.value
        result[keyValue.key] = getattr(value, value.WhichOneof("value"))
    return result


@attr.s
class Exported:
    """
    One span as a collector received it.

    @ivar resource: the attributes of its resource.
    @ivar scope: the name of the instrumentation scope.
    @ivar span: the OTLP C{Span} message.
    """

    resource = attr.ib()
    scope = attr.ib()
    span = attr.ib()

    @property
    def attributes(self):
        return attributesOf(self.span.attributes)


def exportedSpans(message) -> list:
    """
    The spans of an C{ExportTraceServiceRequest}.
    """
    spans = []
    for resourceSpans in message.resource_spans:
        resource = attributesOf(resourceSpans.resource.attributes)
        for scopeSpans in resourceSpans.scope_spans:
            for span in scopeSpans.spans:
                spans.append(Exported(resource, scopeSpans.scope.name, span))
    return spans


class Collector(Resource):
    """
    An OTLP/HTTP trace receiver: records the spans POSTed to C{/v1/traces}.

    @ivar posts: the C{Content-Type} of each export received.
    @ivar spans: the L{Exported} spans, in arrival order.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.posts = []
        self.spans = []

    def render_POST(self, request):
        if request.path != b"/v1/traces":
            request.setResponseCode(404)
            return b""
        self.posts.append(request.getHeader(b"content-type"))
        message = ExportTraceServiceRequest()
        message.ParseFromString(request.content.read())
        self.spans.extend(exportedSpans(message))
        request.setHeader(b"content-type", b"application/x-protobuf")
        return ExportTraceServiceResponse().SerializeToString()


class Finished(Observer):
    """
    Keeps the records of finished requests.
    """

    def __init__(self):
        self.records = []

    def requestFinished(self, record):
        self.records.append(record)


def echoed(body: bytes, name: str) -> list:
    """
    The values of header C{name} that a L{golb.demo.DemoBackend} echoed.
    """
    prefix = name.lower() + ":"
    return [line.split(":", 1)[1].strip() for line in body.decode("latin-1").splitlines()
            if line.lower().startswith(prefix)]


def traceparent(trace: str = CLIENT_TRACE, span: str = CLIENT_SPAN, flags: str = "01"):
    """
    A W3C C{traceparent} value, as a client would send it.
    """
    return f"00-{trace}-{span}-{flags}".encode("ascii")


class TracingTestCase(ProxyTestCase):
    """
    A golb traced to an OTLP/HTTP collector, both on loopback.
    """

    def setUp(self):
        ProxyTestCase.setUp(self)
        self.collector = Collector()
        port, _ = listenBackend(self, self.collector)
        self.endpoint = f"http://127.0.0.1:{port.getHost().port}"
        self.finished = Finished()

    def start(self, *ports, tracing="", pool="", protocol="http", **serviceArgs):
        backends = ", ".join(f'{{url: "http://127.0.0.1:{p}"}}' for p in ports)
        golb, listening, site = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{backends}]
{pool}
monitoring:
  tracing:
    enabled: true
    service_name: edge
    protocol: {protocol}
    endpoint: "{self.endpoint}"
{tracing}""")
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        self.port = listening.getHost().port
        self.service = TracingService(golb, reactor, **serviceArgs)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        golb.observatory.add(self.finished)
        self.golb = golb
        return golb

    @defer.inlineCallbacks
    def request(self, path="/", headers=None, **kw):
        """
        Send a request and wait until golb has finished with it.
        """
        count = len(self.finished.records)
        response, body = yield self.get(path, headers=headers, **kw)
        yield waitUntil(lambda: len(self.finished.records) > count)
        return response, body, self.finished.records[-1]

    @defer.inlineCallbacks
    def flush(self, count):
        """
        Export the spans ended so far and wait until C{count} have arrived.
        """
        yield deferToThread(self.service.provider.force_flush)
        yield waitUntil(lambda: len(self.collector.spans) >= count)
        return self.collector.spans

    def byKind(self, spans, kind):
        return [exported for exported in spans if exported.span.kind == kind]


class PropagationTests(TracingTestCase):
    """
    The trace context goes from the client through golb to the backend.
    """

    @defer.inlineCallbacks
    def test_clientContext(self):
        """
        A request carrying a C{traceparent} reaches the backend with the same
        trace id and golb's attempt span as its parent (the client's span id
        and any duplicate are gone); the client's C{tracestate} is kept.
        golb's server span is the child of the client's span, and the
        record's ids are the server span's.
        """
        port, backend = listenBackend(self)
        self.start(port.getHost().port)
        response, body, record = yield self.request("/a", headers={
            b"traceparent": [traceparent()],
            b"tracestate": [b"vendor=abc"],
        })
        self.assertEqual(response.code, 200)
        [sent] = echoed(body, "traceparent")
        version, traceId, parentId, flags = sent.split("-")
        self.assertEqual((version, traceId, flags), ("00", CLIENT_TRACE, "01"))
        self.assertNotEqual(parentId, CLIENT_SPAN)
        self.assertEqual(echoed(body, "tracestate"), ["vendor=abc"])

        spans = yield self.flush(2)
        [server] = self.byKind(spans, Span.SPAN_KIND_SERVER)
        [client] = self.byKind(spans, Span.SPAN_KIND_CLIENT)
        self.assertEqual(client.span.span_id.hex(), parentId)
        self.assertEqual(client.span.parent_span_id, server.span.span_id)
        self.assertEqual(server.span.parent_span_id.hex(), CLIENT_SPAN)
        self.assertEqual({server.span.trace_id.hex(), client.span.trace_id.hex()},
                         {CLIENT_TRACE})
        self.assertEqual((record.traceId, record.spanId),
                         (CLIENT_TRACE, server.span.span_id.hex()))

    @defer.inlineCallbacks
    def test_newTrace(self):
        """
        A request without trace context starts a new trace (a root server
        span), which the backend receives.
        """
        port, backend = listenBackend(self)
        self.start(port.getHost().port)
        response, body, record = yield self.request("/")
        [sent] = echoed(body, "traceparent")
        _, traceId, parentId, flags = sent.split("-")
        self.assertEqual(traceId, record.traceId)
        self.assertTrue(int(flags, 16) & 1)
        spans = yield self.flush(2)
        [server] = self.byKind(spans, Span.SPAN_KIND_SERVER)
        [client] = self.byKind(spans, Span.SPAN_KIND_CLIENT)
        self.assertEqual(server.span.parent_span_id, b"")
        self.assertEqual(server.span.trace_id.hex(), record.traceId)
        self.assertEqual(client.span.span_id.hex(), parentId)

    @defer.inlineCallbacks
    def test_malformedContext(self):
        """
        A malformed C{traceparent} is ignored: golb starts a new trace and
        the backend gets golb's context, not the client's garbage.
        """
        port, backend = listenBackend(self)
        self.start(port.getHost().port)
        response, body, record = yield self.request("/", headers={
            b"traceparent": [b"00-nothex-0000-01"]})
        [sent] = echoed(body, "traceparent")
        self.assertEqual(sent.split("-")[1], record.traceId)
        self.assertEqual(len(record.traceId), 32)


class ExportTests(TracingTestCase):
    """
    Spans reach an OTLP/HTTP collector with the HTTP semantic conventions'
    attributes and golb's own.
    """

    @defer.inlineCallbacks
    def test_attributes(self):
        """
        The server span is named after the method and route and describes
        the client's request and golb's answer; the client span describes
        the attempt to the backend.  Both carry the service's name and golb's
        version, and span the request's own times.
        """
        port, backend = listenBackend(self)
        backendPort = port.getHost().port
        self.start(backendPort)
        response, body, record = yield self.request(
            "/path/x?token=secret", headers={b"User-Agent": [b"probe/1"]})
        spans = yield self.flush(2)
        self.assertEqual(set(self.collector.posts), {b"application/x-protobuf"})
        [server] = self.byKind(spans, Span.SPAN_KIND_SERVER)
        [client] = self.byKind(spans, Span.SPAN_KIND_CLIENT)

        self.assertEqual(server.span.name, "GET default")
        self.assertEqual(server.attributes, {
            "http.request.method": "GET",
            "url.path": "/path/x",
            "url.scheme": "http",
            "server.address": "127.0.0.1",
            "server.port": self.port,
            "client.address": "127.0.0.1",
            "user_agent.original": "probe/1",
            "network.protocol.version": "1.1",
            "http.response.status_code": 200,
            "http.request.body.size": 0,
            "http.response.body.size": len(body),
            "golb.listener": "web",
            "golb.route": "default",
            "golb.pool": "default",
            "golb.backend": f"127.0.0.1:{backendPort}",
            "golb.retries": 0,
        })
        self.assertEqual(server.span.status.code, Status.STATUS_CODE_UNSET)

        self.assertEqual(client.span.name, "GET")
        self.assertEqual(client.attributes, {
            "http.request.method": "GET",
            "server.address": "127.0.0.1",
            "server.port": backendPort,
            "url.scheme": "http",
            "golb.pool": "default",
            "golb.backend": f"127.0.0.1:{backendPort}",
            "http.response.status_code": 200,
        })
        self.assertEqual(client.span.status.code, Status.STATUS_CODE_UNSET)

        for exported in (server, client):
            self.assertEqual(exported.scope, "golb")
            self.assertEqual(exported.resource["service.name"], "edge")
            self.assertEqual(exported.resource["service.version"], __version__)
        self.assertEqual(server.span.start_time_unix_nano, int(record.started * 1e9))
        self.assertEqual(server.span.end_time_unix_nano, int(record.finished * 1e9))
        self.assertLessEqual(server.span.start_time_unix_nano, client.span.start_time_unix_nano)
        self.assertLessEqual(client.span.end_time_unix_nano, server.span.end_time_unix_nano)

    @defer.inlineCallbacks
    def test_retries(self):
        """
        A retried request has one client span per attempt under its server
        span: the failed one is an error with golb's code, the second counts
        as a resend and is the parent the backend sees.
        """
        port, backend = listenBackend(self)
        dead = freePort()
        self.start(dead, port.getHost().port)
        response, body, record = yield self.request("/")
        self.assertEqual(response.code, 200)
        spans = yield self.flush(3)
        [server] = self.byKind(spans, Span.SPAN_KIND_SERVER)
        first, second = sorted(self.byKind(spans, Span.SPAN_KIND_CLIENT),
                               key=lambda exported: exported.span.start_time_unix_nano)
        self.assertEqual({first.span.parent_span_id, second.span.parent_span_id},
                         {server.span.span_id})
        self.assertEqual(first.span.status.code, Status.STATUS_CODE_ERROR)
        self.assertEqual(first.attributes["golb.error"], "connect-failure")
        self.assertEqual(first.attributes["error.type"], "connect-failure")
        self.assertEqual(first.attributes["golb.backend"], f"127.0.0.1:{dead}")
        self.assertNotIn("http.request.resend_count", first.attributes)
        self.assertEqual(second.attributes["http.request.resend_count"], 1)
        self.assertEqual(second.attributes["http.response.status_code"], 200)
        self.assertEqual(server.attributes["golb.retries"], 1)
        self.assertEqual(server.span.status.code, Status.STATUS_CODE_UNSET)
        [sent] = echoed(body, "traceparent")
        self.assertEqual(sent.split("-")[2], second.span.span_id.hex())

    @defer.inlineCallbacks
    def test_golbError(self):
        """
        When golb answers 5xx itself, the server span is an error carrying
        golb's error code.
        """
        self.start(freePort(), pool="    retries: {attempts: 0}")
        response, body, record = yield self.request("/")
        self.assertEqual(response.code, 502)
        spans = yield self.flush(2)
        [server] = self.byKind(spans, Span.SPAN_KIND_SERVER)
        self.assertEqual(server.span.status.code, Status.STATUS_CODE_ERROR)
        self.assertEqual(server.span.status.message, "connect-failure")
        self.assertEqual(server.attributes["http.response.status_code"], 502)
        self.assertEqual(server.attributes["golb.error"], "connect-failure")
        self.assertEqual(server.attributes["error.type"], "connect-failure")

    @defer.inlineCallbacks
    def test_backend5xx(self):
        """
        A backend's 5xx answer makes both its attempt span and the server
        span errors, typed by the status; a 4xx answer makes neither.
        """
        def render(request):
            request.setResponseCode(503 if request.path == b"/down" else 404)
            return b"no"

        port, backend = listenBackend(self, FunctionResource(render))
        self.start(port.getHost().port, pool="    retries: {attempts: 0}")
        response, body, record = yield self.request("/down")
        self.assertEqual(response.code, 503)
        response, body, record = yield self.request("/missing")
        self.assertEqual(response.code, 404)
        spans = yield self.flush(4)
        down = {exported.span.kind: exported for exported in spans
                if exported.span.trace_id.hex() != record.traceId}
        missing = {exported.span.kind: exported for exported in spans
                   if exported.span.trace_id.hex() == record.traceId}
        for kind in (Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT):
            self.assertEqual(down[kind].span.status.code, Status.STATUS_CODE_ERROR)
            self.assertEqual(down[kind].attributes["error.type"], "503")
            self.assertEqual(down[kind].attributes["http.response.status_code"], 503)
            self.assertEqual(missing[kind].span.status.code, Status.STATUS_CODE_UNSET)
            self.assertNotIn("error.type", missing[kind].attributes)

    @defer.inlineCallbacks
    def test_stopExports(self):
        """
        Stopping the service exports the spans not yet sent and stops
        tracing: later requests make no spans.
        """
        port, backend = listenBackend(self)
        golb = self.start(port.getHost().port)
        yield self.request("/")
        self.assertEqual(self.collector.spans, [])
        yield self.service.stopService()
        self.assertEqual(len(self.collector.spans), 2)
        self.assertIsNone(self.service.provider)
        self.assertNotIn(self.service.observer, golb.observatory.observers)
        response, body, record = yield self.request("/")
        self.assertIsNone(record.traceId)
        self.assertEqual(echoed(body, "traceparent"), [])

    @defer.inlineCallbacks
    def test_noGlobalProvider(self):
        """
        golb's tracer provider is its own: the process-wide one stays the
        default.
        """
        before = trace.get_tracer_provider()
        port, backend = listenBackend(self)
        self.start(port.getHost().port)
        yield self.request("/")
        self.assertIs(trace.get_tracer_provider(), before)
        self.assertIsInstance(before, trace.ProxyTracerProvider)


class SamplingTests(TracingTestCase):
    """
    C{sampling_rate} decides which new traces are recorded; the trace
    context is propagated either way.
    """

    @defer.inlineCallbacks
    def test_unsampled(self):
        """
        At rate 0 nothing is exported, but the backend still gets a trace
        context (not sampled) - a new one, or the client's trace with golb's
        span as parent - and the record still has its ids.
        """
        port, backend = listenBackend(self)
        self.start(port.getHost().port, tracing="    sampling_rate: 0.0")
        response, body, record = yield self.request("/")
        [sent] = echoed(body, "traceparent")
        _, traceId, parentId, flags = sent.split("-")
        self.assertEqual(traceId, record.traceId)
        self.assertFalse(int(flags, 16) & 1)

        response, body, record = yield self.request("/", headers={
            b"traceparent": [traceparent(flags="00")]})
        [sent] = echoed(body, "traceparent")
        _, traceId, parentId, flags = sent.split("-")
        self.assertEqual((traceId, record.traceId), (CLIENT_TRACE, CLIENT_TRACE))
        self.assertNotEqual(parentId, CLIENT_SPAN)
        self.assertFalse(int(flags, 16) & 1)

        yield deferToThread(self.service.provider.force_flush)
        self.assertEqual((self.collector.posts, self.collector.spans), ([], []))

    @defer.inlineCallbacks
    def test_clientDecides(self):
        """
        A client's sampled trace context is recorded whatever the rate.
        """
        port, backend = listenBackend(self)
        self.start(port.getHost().port, tracing="    sampling_rate: 0%")
        yield self.request("/", headers={b"traceparent": [traceparent(flags="01")]})
        spans = yield self.flush(2)
        self.assertEqual({exported.span.trace_id.hex() for exported in spans}, {CLIENT_TRACE})


class MethodTests(TracingTestCase):
    """
    Span names and methods follow the HTTP semantic conventions.
    """

    @defer.inlineCallbacks
    def test_unknownMethod(self):
        """
        A method the conventions do not know is named C{HTTP}, recorded as
        C{_OTHER} with the original beside it.
        """
        exporter = InMemorySpanExporter()
        port, backend = listenBackend(self)
        self.start(port.getHost().port, exporterFactory=lambda config: exporter)
        count = len(self.finished.records)
        response = yield self.client.request("PURGE", self.base + "/")
        yield response.content()
        yield waitUntil(lambda: len(self.finished.records) > count)
        yield deferToThread(self.service.provider.force_flush)
        spans = {span.kind: span for span in exporter.get_finished_spans()}
        server = spans[trace.SpanKind.SERVER]
        self.assertEqual(server.name, "HTTP default")
        self.assertEqual(server.attributes["http.request.method"], "_OTHER")
        self.assertEqual(server.attributes["http.request.method_original"], "PURGE")
        self.assertEqual(spans[trace.SpanKind.CLIENT].name, "HTTP")


ON_PYPY = platform.python_implementation() == "PyPy"


def assertGrpcRefusedOnPyPy(testCase):
    """
    On PyPy (no grpcio wheels, so golb does not depend on it there),
    C{protocol: grpc} is refused when the service is built, with a message
    pointing to C{protocol: http}: check that with the real imports.
    """
    golb = golbWith(testCase, "{enabled: true, protocol: grpc}")
    e = testCase.assertRaises(TracingUnavailable, TracingService, golb, reactor)
    testCase.assertIn("protocol: http", str(e))


class GRPCTests(TracingTestCase):
    """
    OTLP/gRPC export on CPython; on PyPy, where grpcio does not exist, the
    clear refusal of C{protocol: grpc} instead.
    """

    def setUp(self):
        TracingTestCase.setUp(self)
        if not ON_PYPY:
            import grpc  # noqa: F401 (a dependency on CPython: fail loudly without it)

    def listenGRPC(self):
        """
        Run an OTLP/gRPC trace receiver on a free loopback port (in gRPC's
        own threads) until the test ends.

        @return: C{(port, spans)}, C{spans} filling with L{Exported}s.
        """
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        spans = []

        class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                spans.extend(exportedSpans(request))
                return ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(deferToThread, lambda: server.stop(None).wait(5))
        return port, spans

    @defer.inlineCallbacks
    def test_export(self):
        """
        With C{protocol: grpc} and a C{host:port} endpoint, spans reach a
        plaintext OTLP/gRPC collector.
        """
        if ON_PYPY:
            return assertGrpcRefusedOnPyPy(self)
        grpcPort, spans = self.listenGRPC()
        self.endpoint = f"127.0.0.1:{grpcPort}"
        port, backend = listenBackend(self)
        self.start(port.getHost().port, protocol="grpc")
        response, body, record = yield self.request(
            "/", headers={b"traceparent": [traceparent()]})
        yield deferToThread(self.service.provider.force_flush)
        yield waitUntil(lambda: len(spans) >= 2)
        kinds = {exported.span.kind: exported for exported in spans}
        server = kinds[Span.SPAN_KIND_SERVER]
        self.assertEqual(server.span.trace_id.hex(), CLIENT_TRACE)
        self.assertEqual(server.span.parent_span_id.hex(), CLIENT_SPAN)
        self.assertEqual(kinds[Span.SPAN_KIND_CLIENT].span.parent_span_id, server.span.span_id)
        self.assertEqual(server.resource["service.name"], "edge")
        self.assertEqual(self.collector.spans, [])


class Module:
    """
    A stand-in for an exporter module: its C{OTLPSpanExporter} returns the
    keyword arguments it was called with.
    """

    def OTLPSpanExporter(self, **kwargs):
        return kwargs


class ExporterTests(TestCase):
    """
    The collector endpoint and protocol choose and set up the exporter.
    """

    def test_httpEndpoint(self):
        """
        OTLP/HTTP posts to C{/v1/traces} of a C{host:port} or of a URL
        without a path; a URL with a path is used as it is.
        """
        self.assertEqual(httpEndpoint("collector:4318"), "http://collector:4318/v1/traces")
        self.assertEqual(httpEndpoint("[::1]:4318"), "http://[::1]:4318/v1/traces")
        self.assertEqual(httpEndpoint(":4318"), "http://localhost:4318/v1/traces")
        self.assertEqual(httpEndpoint("https://otlp.example.com"),
                         "https://otlp.example.com/v1/traces")
        self.assertEqual(httpEndpoint("http://c:4318/"), "http://c:4318/v1/traces")
        self.assertEqual(httpEndpoint("https://c/otlp/v1/traces"), "https://c/otlp/v1/traces")

    def test_grpcTarget(self):
        """
        OTLP/gRPC connects in plaintext to a C{host:port} or an C{http} URL
        and with TLS to an C{https} URL (port 443 unless given).
        """
        self.assertEqual(grpcTarget("collector:4317"), ("collector:4317", True))
        self.assertEqual(grpcTarget("http://collector:4317"), ("collector:4317", True))
        self.assertEqual(grpcTarget("https://otlp.example.com"), ("otlp.example.com:443", False))
        self.assertEqual(grpcTarget("https://[::1]:4317"), ("[::1]:4317", False))

    def test_grpcExporter(self):
        """
        C{protocol: grpc} builds the OTLP/gRPC exporter with the collector's
        target, its security, lowercase metadata keys and a timeout.
        """
        imported = []

        def importModule(name):
            imported.append(name)
            return Module()

        config = TracingConfig(enabled=True, endpoint="https://otlp.example.com:4317",
                               headers={"X-Api-Key": "k"})
        kwargs = exporterFor(config, importModule)
        self.assertEqual(imported, ["opentelemetry.exporter.otlp.proto.grpc.trace_exporter"])
        self.assertEqual(kwargs["endpoint"], "otlp.example.com:4317")
        self.assertIs(kwargs["insecure"], False)
        self.assertEqual(kwargs["headers"], (("x-api-key", "k"),))
        self.assertGreater(kwargs["timeout"], 0)

    def test_realGrpcExporter(self):
        """
        The real OTLP/gRPC exporter accepts what golb gives it.
        """
        if ON_PYPY:
            return assertGrpcRefusedOnPyPy(self)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = exporterFor(TracingConfig(enabled=True, endpoint="127.0.0.1:4317"))
        self.addCleanup(exporter.shutdown)
        self.assertIsInstance(exporter, OTLPSpanExporter)

    def test_httpExporter(self):
        """
        C{protocol: http} builds the OTLP/HTTP exporter for the URL, with the
        configured headers.
        """
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        config = TracingConfig(enabled=True, protocol="http", endpoint="collector:4318",
                               headers={"Authorization": "Bearer t"})
        kwargs = exporterFor(config, lambda name: Module())
        self.assertEqual(kwargs["endpoint"], "http://collector:4318/v1/traces")
        self.assertEqual(kwargs["headers"], {"Authorization": "Bearer t"})
        exporter = exporterFor(config)
        self.addCleanup(exporter.shutdown)
        self.assertIsInstance(exporter, OTLPSpanExporter)


def golbWith(testCase, tracing: str):
    """
    A served L{golb.app.Golb} whose C{monitoring.tracing} is C{tracing}.
    """
    golb, port, site = listenGolb(testCase, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools: [{{name: default, backends: [{{url: "http://127.0.0.1:1"}}]}}]
monitoring:
  tracing: {tracing}
""")
    return golb


class ServiceTests(TestCase):
    """
    The service starts tracing only when enabled, fails early when it cannot
    export, and never waits long for the collector when stopping.
    """

    def test_name(self):
        """
        The service is called C{tracing}.
        """
        self.assertEqual(TracingService(golbWith(self, "{}"), reactor).name, "tracing")

    def test_disabled(self):
        """
        Disabled tracing builds no provider and no exporter and plugs in no
        observer, so requests carry no record.
        """
        golb = golbWith(self, "{enabled: false}")
        built = []
        service = TracingService(golb, reactor, exporterFactory=built.append)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual((service.provider, service.observer, built), (None, None, []))
        self.assertEqual(golb.observatory.observers, [])
        self.assertFalse(golb.observatory.active)

    def test_enabled(self):
        """
        Enabled tracing plugs a L{TracingObserver} in while running and
        unplugs it when stopped.
        """
        golb = golbWith(self, "{enabled: true, protocol: http, endpoint: '127.0.0.1:4318'}")
        service = TracingService(golb, reactor, exporterFactory=lambda c: InMemorySpanExporter())
        service.startService()
        self.addCleanup(service.stopService)
        [observer] = golb.observatory.observers
        self.assertIsInstance(observer, TracingObserver)
        self.assertIs(observer, service.observer)

    def test_grpcUnavailable(self):
        """
        When the OTLP/gRPC exporter cannot be imported (PyPy has no grpcio),
        C{protocol: grpc} fails when the service is built, saying to use
        C{protocol: http}; C{protocol: http} does not need it.
        """
        def importModule(name):
            if "grpc" in name:
                raise ImportError("No module named 'grpc'")
            return Module()

        golb = golbWith(self, "{enabled: true, protocol: grpc}")
        e = self.assertRaises(TracingUnavailable, TracingService, golb, reactor,
                              importModule=importModule)
        self.assertIn("protocol: http", str(e))
        self.assertIn("PyPy", str(e))
        golb = golbWith(self, "{enabled: true, protocol: http, endpoint: '127.0.0.1:4318'}")
        TracingService(golb, reactor, importModule=importModule)

    def test_httpOnGrpcPort(self):
        """
        OTLP/HTTP aimed at port 4317 (OTLP/gRPC's) logs a warning naming 4318.
        """
        golb = golbWith(self, "{enabled: true, protocol: http, endpoint: 'localhost:4317'}")
        service = TracingService(golb, reactor, exporterFactory=lambda c: InMemorySpanExporter())
        events = []
        service.log = Logger(observer=events.append)
        service.startService()
        self.addCleanup(service.stopService)
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn("4318", warnings[0]["log_format"])

    @defer.inlineCallbacks
    def test_shutdownBounded(self):
        """
        Shutting the provider down happens in another thread and is given up
        after the timeout when the collector hangs.
        """
        release = threading.Event()
        self.addCleanup(release.set)

        class Hanging:
            def shutdown(self):
                release.wait(10)

        class Quick:
            def shutdown(self):
                return "done"

        result = yield shutdownProvider(reactor, Quick(), 5)
        self.assertEqual(result, "done")
        d = shutdownProvider(reactor, Hanging(), 0.05)
        yield self.assertFailure(d, defer.TimeoutError)
