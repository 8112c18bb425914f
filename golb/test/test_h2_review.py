"""
Regression tests for problems found reviewing HTTP/2 and gRPC: a client
cancelling a streaming call is not a backend failure, golb's own rejections
of gRPC calls are gRPC statuses, an oversized frame is refused at its
header, a TLS backend that did not choose h2 by ALPN fails at once, and a
bidirectional call waiting for its client does not time out as idle.
"""

from typing import Dict, List

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from h2.events import StreamReset
from twisted.internet import defer, reactor
from twisted.internet import ssl as tssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from golb.grpc import frameMessage
from golb.h2client import H2Pool
from golb.streams import BodyStream
from golb.test.support import listenGolb, waitUntil
from golb.test.test_h2client import PoolTestMixin, _PlainContextFactory, get, post
from golb.test.test_h2server import H2TestCase, Recorder, _get
from golb.test.test_tls import PKI
from golb.upstream import UpstreamTLSFailed

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


class _HoldingBackend(Protocol):
    """
    An h2c backend that answers nothing: it records the streams it was sent
    and how they were reset.
    """

    def connectionMade(self):
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data):
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.factory.streams.append(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.factory.resets[event.stream_id] = event.error_code
        self.transport.write(self.conn.data_to_send())


class _RawClient(Protocol):
    """
    An h2 client over a real connection, recording every stream's events.
    """

    def __init__(self):
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.events: Dict[int, List] = {}

    def connectionMade(self):
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data):
        for event in self.conn.receive_data(data):
            streamID = getattr(event, "stream_id", None)
            if streamID:
                self.events.setdefault(streamID, []).append(event)
        self.transport.write(self.conn.data_to_send())

    def flush(self):
        self.transport.write(self.conn.data_to_send())


class GrpcThroughGolbTests(TestCase):
    """
    gRPC calls from an h2c client through golb to an h2c backend that holds
    them open.
    """

    @defer.inlineCallbacks
    def start(self, listenerExtra=""):
        factory = Factory.forProtocol(_HoldingBackend)
        factory.streams, factory.resets = [], {}
        backend = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        self.backend = factory
        golb, port, _ = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"{listenerExtra}}}]
backend_pools:
  - name: default
    protocol: h2c
    backends: [{{name: b1, url: "http://127.0.0.1:{backend.getHost().port}"}}]
""", h2c=True)
        self.pool = golb.pools["default"]
        client = _RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                              client)
        self.addCleanup(client.transport.abortConnection)
        self.client = client
        return client

    def openCall(self):
        client = self.client
        streamID = client.conn.get_next_available_stream_id()
        client.conn.send_headers(streamID, _get(b"/test.Echo/Bidi", method=b"POST",
                                                extra=GRPC))
        client.conn.send_data(streamID, frameMessage(b"first"))
        client.flush()
        return streamID

    def backendFailures(self):
        return sum(backend.failures for backend in self.pool.backends)

    def inFlight(self):
        return self.pool.inFlight

    @defer.inlineCallbacks
    def test_clientResetIsNotABackendFailure(self):
        """
        A client resetting a gRPC call while it streams its request cancels
        the backend's stream; it is not counted as the backend's failure
        (which passive health checks would hold against it).
        """
        client = yield self.start()
        self.openCall()
        yield from waitUntil(lambda: self.backend.streams)
        client.conn.reset_stream(1, ErrorCodes.CANCEL)
        client.flush()
        backendStream = self.backend.streams[0]
        yield from waitUntil(lambda: backendStream in self.backend.resets)
        yield from waitUntil(lambda: self.inFlight() == 0)
        self.assertEqual(self.backend.resets[backendStream], ErrorCodes.CANCEL)
        self.assertEqual(self.backendFailures(), 0)

    @defer.inlineCallbacks
    def test_streamedBodyTooLarge(self):
        """
        A gRPC call whose streamed request grows over C{max_body_bytes}
        ends with C{RESOURCE_EXHAUSTED} (not a bare stream reset, which
        clients read as CANCELLED); the backend's stream is cancelled.
        """
        client = yield self.start(", max_body_bytes: 100")
        streamID = self.openCall()
        yield from waitUntil(lambda: self.backend.streams)
        client.conn.send_data(streamID, frameMessage(b"x" * 200))
        client.flush()
        yield from waitUntil(lambda: any(
            isinstance(event, h2.events.StreamEnded)
            for event in client.events.get(streamID, [])))
        (head,) = [event for event in client.events[streamID]
                   if isinstance(event, h2.events.ResponseReceived)]
        fields = dict(head.headers)
        self.assertEqual(fields[b":status"], b"200")
        self.assertEqual(fields[b"grpc-status"], b"8")
        self.assertEqual(fields[b"x-golb-error"], b"body-too-large")
        backendStream = self.backend.streams[0]
        yield from waitUntil(lambda: backendStream in self.backend.resets)
        yield from waitUntil(lambda: self.inFlight() == 0)
        self.assertEqual(self.backendFailures(), 0)


class H2ServerReviewTests(H2TestCase):
    """
    L{golb._h2server} on an in-memory transport.
    """

    def test_declaredTooLargeGrpc(self):
        """
        A gRPC call declaring a body over the limit gets a trailers-only
        C{RESOURCE_EXHAUSTED}, not an HTML 413.
        """
        self.makeSite(maxBodyBytes=10)
        client = self.client()
        streamID = client.request(
            _get(method=b"POST", extra=GRPC + [(b"content-length", b"100")]), end=False)
        response = client.responses[streamID]
        self.assertEqual(response.status, 200)
        self.assertTrue(response.endedWithHeaders)
        self.assertEqual(response.header(b"grpc-status"), [b"8"])
        self.assertEqual(response.header(b"x-golb-error"), [b"body-too-large"])
        self.assertEqual(response.data, b"")

    def test_noAuthorityGrpc(self):
        """
        A gRPC call golb answers itself before dispatching it gets a gRPC
        status (INTERNAL for a bad request).
        """
        self.makeSite()
        client = self.client(validate=False)
        streamID = client.request(
            [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x")] + GRPC)
        response = client.responses[streamID]
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"grpc-status"), [b"13"])
        self.assertEqual(response.header(b"x-golb-error"), [b"bad-request"])

    def test_streamedTooLargeAfterResponseBegan(self):
        """
        When the response already began, a gRPC call over the body limit
        ends with C{RESOURCE_EXHAUSTED} in trailers after what was sent.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        streamID = client.request(_get(method=b"POST", extra=GRPC), end=False)
        (request,) = self.resource.requests
        request.write(b"reply")
        client.pump()
        request.maxBodyBytes = 4
        finished = request.notifyFinish()
        client.send(streamID, b"12345")
        self.failureResultOf(finished)
        response = client.responses[streamID]
        self.assertEqual((response.status, response.data), (200, b"reply"))
        self.assertEqual(dict(response.trailers)[b"grpc-status"], b"8")
        self.assertTrue(response.ended)

    def test_oversizedFrameHeader(self):
        """
        A frame header announcing more than C{SETTINGS_MAX_FRAME_SIZE} ends
        the connection with C{FRAME_SIZE_ERROR} at once, before golb
        buffers the frame.
        """
        self.makeSite()
        client = self.client()
        self.channel.dataReceived(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"\0" * 1000)
        client.pump()
        self.assertIsNotNone(client.goaway)
        self.assertEqual(client.goaway.error_code, ErrorCodes.FRAME_SIZE_ERROR)
        self.assertTrue(self.transport.disconnecting)


class _ClosingServer(Protocol):
    """
    What an HTTP/1.1-only TLS server does with the HTTP/2 preface: it
    hangs up.
    """

    def dataReceived(self, data):
        self.transport.loseConnection()


class ALPNReviewTests(TestCase):
    """
    A TLS backend that does not choose h2 by ALPN, and does not speak it.
    """

    @defer.inlineCallbacks
    def test_http11Backend(self):
        """
        The failure says ALPN did not choose h2, not that the connection
        closed before SETTINGS.
        """
        pki = PKI(self.mktemp(), "h2 CA")
        issued = pki.issue("localhost", ["localhost"])
        port = reactor.listenSSL(0, Factory.forProtocol(_ClosingServer),
                                 _PlainContextFactory(issued), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        with open(pki.ca.cert, "rb") as f:
            trust = tssl.Certificate.loadPEM(f.read())
        tls = tssl.optionsForClientTLS("localhost", trustRoot=trust,
                                       acceptableProtocols=[b"h2"])
        pool = H2Pool(reactor, "127.0.0.1", port.getHost().port, tls=tls, connectTimeout=5.0)
        self.addCleanup(pool.close)
        error = yield self.assertFailure(pool.request(get()), UpstreamTLSFailed)
        self.assertIn("backend did not negotiate h2 (ALPN: none)", error.message)


class BidiIdleTests(PoolTestMixin, SynchronousTestCase):
    """
    The read (idle) timeout of a stream whose request body is a stream.
    """

    def test_waitingForClientIsNotIdle(self):
        """
        A backend silent while the client sends nothing (a bidirectional
        call between messages) is not timed out; once the client's body
        ended, silence counts again.
        """
        source = BodyStream()
        _, receiver = self.call(post(source))
        backend = self.accept()
        source.write(b"m1")
        backend.receive()
        backend.respond(1, body=b"r1", end=False)
        self.reactor.advance(100)
        self.assertEqual(receiver.done, [])
        source.finish()
        backend.receive()
        self.reactor.advance(20)
        [reason] = receiver.done
        self.assertEqual(reason.value.message, "10.0.0.1:8080 sent no body byte for 20s")
        backend.receive()
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)

