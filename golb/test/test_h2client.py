"""
Tests for L{golb.h2client}: an HTTP/2 connection pool driven against an
in-memory C{h2} server (L{Backend}) over L{StringTransport} on a
L{MemoryReactorClock}, plus real loopback TLS with ALPN.
"""

import io

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes, Settings
from OpenSSL import SSL
from twisted.internet import reactor as globalReactor
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IOpenSSLContextFactory, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from golb.errors import RESPONSES
from golb.h2client import CONNECTION_WINDOW, H2Pool, H2Response
from golb.streams import BodyStream
from golb.test.test_tls import PKI
from golb.upstream import (
    ConnectFailed,
    InvalidResponse,
    ReadTimeout,
    ResponseHeaderTimeout,
    UpstreamError,
    UpstreamRequest,
    UpstreamReset,
    UpstreamTLSFailed,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# ---------------------------------------------------------------- helpers


class Backend:
    """
    The server end of one pooled connection: an C{h2} server connection the
    test drives by hand.  L{receive} reads what the pool wrote, L{send}
    delivers what the server queued.

    @ivar events: every C{h2} event the server saw.
    """

    def __init__(self, protocol, transport, settings=None):
        self.protocol = protocol
        self.transport = transport
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        if settings:
            values = {SettingCodes.MAX_HEADER_LIST_SIZE: self.conn.DEFAULT_MAX_HEADER_LIST_SIZE}
            values.update(settings)
            self.conn.local_settings = Settings(client=False, initial_values=values)
        self.conn.initiate_connection()
        self.events = []
        self.raw = b""

    def receive(self):
        """
        Feed what the pool wrote to the server.

        @return: the new events.
        """
        data = self.transport.value()
        self.transport.clear()
        self.raw += data
        events = self.conn.receive_data(data) if data else []
        self.events.extend(events)
        return events

    def send(self):
        """
        Deliver what the server queued to the pool, then read the answer.
        """
        data = self.conn.data_to_send()
        if data:
            self.protocol.dataReceived(data)
        return self.receive()

    def requests(self):
        """
        The C{RequestReceived} events so far, by stream id.
        """
        return {e.stream_id: e for e in self.events if isinstance(e, RequestReceived)}

    def of(self, kind, streamId=None):
        """
        The events of type C{kind} (on C{streamId}).
        """
        return [e for e in self.events
                if isinstance(e, kind) and (streamId is None or e.stream_id == streamId)]

    def body(self, streamId):
        """
        The request body received on C{streamId}.
        """
        return b"".join(e.data for e in self.of(DataReceived, streamId))

    def respond(self, streamId, status=200, headers=(), body=None, trailers=None, end=True):
        """
        Answer on C{streamId} and deliver it to the pool.
        """
        conn = self.conn
        fields = [(b":status", b"%d" % (status,))] + list(headers)
        conn.send_headers(streamId, fields, end_stream=end and body is None and not trailers)
        if body is not None:
            conn.send_data(streamId, body, end_stream=end and not trailers)
        if trailers:
            conn.send_headers(streamId, trailers, end_stream=True)
        return self.send()


class Receiver:
    """
    An upstream call receiver, which also collects the response body.
    """

    def __init__(self, deliver=True):
        self.response = None
        self.failure = None
        self.data = []
        self.done = []
        self.trailersAtDone = None
        self.deliver = deliver

    def responseReceived(self, response):
        self.response = response
        if self.deliver:
            response.deliverBody(self)

    def requestFailed(self, reason):
        self.failure = reason

    def dataReceived(self, data):
        self.data.append(data)

    def bodyDone(self, reason):
        self.trailersAtDone = list(self.response.trailers)
        self.done.append(reason)

    @property
    def body(self):
        return b"".join(self.data)


class Source:
    """
    The client side of a L{BodyStream}: records being paused and resumed.
    """

    def __init__(self):
        self.paused = False
        self.stopped = False
        self.history = []

    def pauseProducing(self):
        self.paused = True
        self.history.append("pause")

    def resumeProducing(self):
        self.paused = False
        self.history.append("resume")

    def stopProducing(self):
        self.stopped = True


def get(target=b"/", headers=None, **kw):
    return UpstreamRequest(method=b"GET", target=target,
                           headers=headers if headers is not None else [(b"Host", b"example")],
                           **kw)


def post(body, target=b"/upload", **kw):
    return UpstreamRequest(method=b"POST", target=target, headers=[(b"Host", b"example")],
                           body=body, **kw)


class PoolTestMixin:
    """
    An L{H2Pool} on a L{MemoryReactorClock}, its connections accepted with
    L{accept}.
    """

    poolArgs: dict = {}

    def setUp(self):
        self.reactor = MemoryReactorClock()
        args = dict(idleTimeout=60.0, connectTimeout=3.0, responseHeaderTimeout=30.0,
                    readTimeout=20.0)
        args.update(self.poolArgs)
        self.pool = H2Pool(self.reactor, "10.0.0.1", 8080, **args)

    def accept(self, settings=None, ready=True):
        """
        Complete the oldest connection attempt with a L{Backend}; unless
        C{ready} is false, exchange SETTINGS so the connection takes streams.
        """
        host, port, factory, timeout, _ = self.reactor.tcpClients.pop(0)
        self.assertEqual((host, port, timeout), ("10.0.0.1", 8080, 3.0))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        backend = Backend(protocol, transport, settings)
        backend.receive()
        if ready:
            backend.send()
        return backend

    def call(self, req, receiver=None):
        receiver = receiver or Receiver()
        call = self.pool.call(req, receiver)
        call.start()
        return call, receiver

    def lose(self, backend, reason=ConnectionDone):
        backend.protocol.connectionLost(Failure(reason()))


# ---------------------------------------------------------------- basics


class BasicTests(PoolTestMixin, SynchronousTestCase):
    """
    Requests, responses and the connection preface.
    """

    def test_simpleGet(self):
        """
        A GET goes out as one HEADERS frame with END_STREAM and the pseudo
        headers; the response head, body and end reach the receiver.
        """
        _, receiver = self.call(get(b"/a?b=1"))
        backend = self.accept()
        [request] = backend.requests().values()
        self.assertEqual(request.headers[:4], [
            (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example"),
            (b":path", b"/a?b=1"),
        ])
        self.assertTrue(backend.of(StreamEnded, 1))
        backend.respond(1, headers=[(b"content-type", b"text/plain"),
                                    (b"content-length", b"5")], body=b"hello")
        response = receiver.response
        self.assertIsInstance(response, H2Response)
        verifyObject(IPushProducer, response)
        self.assertEqual((response.version, response.code, response.phrase, response.length,
                          response.chunked), (b"HTTP/2", 200, b"OK", 5, False))
        self.assertEqual(response.headers, [(b"content-type", b"text/plain"),
                                            (b"content-length", b"5")])
        self.assertEqual(response.getHeader(b"Content-Type"), b"text/plain")
        self.assertIsNone(response.getHeader(b"x-missing"))
        self.assertEqual((receiver.body, receiver.done, response.trailers), (b"hello", [None], []))
        self.assertEqual((self.pool.idleCount, self.pool.activeCount), (1, 0))

    def test_requestDeferred(self):
        """
        L{H2Pool.request} fires with the response; a body that arrived before
        C{deliverBody} is delivered by it.
        """
        d = self.pool.request(get())
        backend = self.accept()
        backend.respond(1, status=404, body=b"nope")
        response = self.successResultOf(d)
        self.assertEqual((response.code, response.phrase, response.length),
                         (404, b"Not Found", None))
        receiver = Receiver()
        receiver.response = response
        response.deliverBody(receiver)
        self.assertEqual((receiver.body, receiver.done), (b"nope", [None]))

    def test_h2cPreface(self):
        """
        Without TLS, the pool speaks h2c with prior knowledge: the client
        preface comes first, then SETTINGS disabling push and a large
        connection window; no request is sent before the backend's SETTINGS.
        """
        self.call(get())
        host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(PREFACE))
        backend = Backend(protocol, transport)
        backend.receive()
        self.assertEqual(backend.conn.remote_settings.enable_push, 0)
        self.assertEqual(backend.conn.outbound_flow_control_window, CONNECTION_WINDOW)
        self.assertEqual(backend.requests(), {})
        self.assertEqual(self.pool.connectingCount, 1)
        backend.send()
        self.assertEqual(list(backend.requests()), [1])
        self.assertEqual(self.pool.connectingCount, 0)

    def test_headersConverted(self):
        """
        Header names are lower-cased; connection-specific fields are dropped
        (TE kept only as C{trailers}); Host becomes C{:authority}; the body's
        Content-Length replaces the given one.
        """
        req = UpstreamRequest(method=b"POST", target=b"/x", body=b"abc", headers=[
            (b"Host", b"api.example"), (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"), (b"Proxy-Connection", b"x"),
            (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"websocket"),
            (b"TE", b"trailers"), (b"X-Thing", b"1"), (b"Content-Length", b"99"),
        ])
        self.call(req)
        backend = self.accept()
        self.assertEqual(backend.requests()[1].headers, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"api.example"),
            (b":path", b"/x"), (b"te", b"trailers"), (b"x-thing", b"1"),
            (b"content-length", b"3"),
        ])
        self.assertEqual(backend.body(1), b"abc")

    def test_teOtherThanTrailersDropped(self):
        """
        A TE other than C{trailers} is dropped; without Host, the
        C{:authority} is the backend's address; a bodiless POST gets
        C{content-length: 0}.
        """
        self.call(UpstreamRequest(method=b"POST", target=b"/", headers=[(b"te", b"gzip")]))
        backend = self.accept()
        self.assertEqual(backend.requests()[1].headers, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"10.0.0.1:8080"),
            (b":path", b"/"), (b"content-length", b"0"),
        ])

    def test_invalidRequest(self):
        """
        A request h2 refuses (a header with CR LF) fails without being sent,
        and the connection stays usable.
        """
        _, bad = self.call(UpstreamRequest(method=b"GET", target=b"/",
                                           headers=[(b"x", b"a\r\nb")]))
        backend = self.accept()
        error = bad.failure.check(UpstreamError) and bad.failure.value
        self.assertFalse(error.requestSent)
        self.assertIn("10.0.0.1:8080: invalid request", error.message)
        _, good = self.call(get())
        backend.receive()
        backend.respond(max(backend.requests()), body=b"ok")
        self.assertEqual(good.body, b"ok")

    def test_headResponseLength(self):
        """
        A HEAD response's length is 0 whatever its Content-Length says.
        """
        _, receiver = self.call(UpstreamRequest(method=b"HEAD", target=b"/"))
        backend = self.accept()
        backend.respond(1, headers=[(b"content-length", b"1000")])
        self.assertEqual((receiver.response.length, receiver.done), (0, [None]))

    def test_informational(self):
        """
        1xx responses but 101 go to C{onInformational}; the final response
        follows.
        """
        seen = []
        _, receiver = self.call(get(onInformational=lambda *a: seen.append(a)))
        backend = self.accept()
        backend.conn.send_headers(1, [(b":status", b"103"), (b"link", b"</a.css>")])
        backend.respond(1, body=b"x")
        self.assertEqual(seen, [(103, RESPONSES.get(103, b""), [(b"link", b"</a.css>")])])
        self.assertEqual(receiver.response.code, 200)

    def test_bodyBeforeDeliverBody(self):
        """
        Data arriving before C{deliverBody} is kept, not acknowledged, and
        delivered in order with the end.
        """
        _, receiver = self.call(get(), Receiver(deliver=False))
        backend = self.accept()
        backend.conn.send_headers(1, [(b":status", b"200")])
        backend.conn.send_data(1, b"one ")
        backend.conn.send_data(1, b"two", end_stream=True)
        backend.send()
        self.assertEqual(backend.of(WindowUpdated, 1), [])
        receiver.response.deliverBody(receiver)
        self.assertEqual((receiver.body, receiver.done), (b"one two", [None]))

    def test_fileBody(self):
        """
        A file body is rewound and sent with its length.
        """
        body = io.BytesIO(b"x" * 5000)
        body.read(10)
        self.call(UpstreamRequest(method=b"PUT", target=b"/f", body=body, bodyLength=5000))
        backend = self.accept()
        self.assertIn((b"content-length", b"5000"), backend.requests()[1].headers)
        self.assertEqual(backend.body(1), b"x" * 5000)
        self.assertTrue(backend.of(StreamEnded, 1))

    def test_fileBodyTooShort(self):
        """
        A file shorter than its length resets the stream and fails the
        request.
        """
        _, receiver = self.call(UpstreamRequest(method=b"PUT", target=b"/f",
                                                body=io.BytesIO(b"abc"), bodyLength=10))
        backend = self.accept()
        self.assertIn("shorter than its length", receiver.failure.value.message)
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)


# ---------------------------------------------------------------- flow control


class FlowControlTests(PoolTestMixin, SynchronousTestCase):
    """
    Request bodies respect the backend's windows; response bodies are
    acknowledged only once consumed.
    """

    def test_largePostWaitsForWindow(self):
        """
        A body larger than the initial window stops at 65535 bytes until the
        backend opens the windows, then completes.
        """
        body = bytes(range(256)) * 400  # 102400 bytes
        _, receiver = self.call(post(body))
        backend = self.accept()
        self.assertEqual(len(backend.body(1)), 65535)
        self.assertFalse(backend.of(StreamEnded, 1))
        backend.receive()
        self.assertEqual(len(backend.body(1)), 65535)
        backend.conn.acknowledge_received_data(65535, 1)
        backend.send()
        self.assertEqual(backend.body(1), body)
        self.assertTrue(backend.of(StreamEnded, 1))
        backend.respond(1, status=201)
        self.assertEqual(receiver.response.code, 201)

    def test_bodyStreamBackpressure(self):
        """
        A L{BodyStream} body is sent as it arrives; when the backend's window
        is exhausted the source is paused, and resumed once the window opens;
        its trailers end the stream in a HEADERS frame.
        """
        source = Source()
        stream = BodyStream(source)
        _, receiver = self.call(post(stream, target=b"/pkg.Svc/Stream"))
        backend = self.accept({SettingCodes.INITIAL_WINDOW_SIZE: 10})
        self.assertNotIn(b"content-length", dict(backend.requests()[1].headers))
        stream.write(b"12345")
        backend.receive()
        self.assertEqual((backend.body(1), source.paused), (b"12345", False))
        stream.write(b"abcdefgh")
        backend.receive()
        self.assertEqual((backend.body(1), source.paused), (b"12345abcde", True))
        stream.write(b"more")
        backend.receive()
        self.assertEqual(backend.body(1), b"12345abcde")
        backend.conn.acknowledge_received_data(10, 1)
        backend.send()
        self.assertEqual(backend.body(1), b"12345abcdefghmore")
        self.assertEqual(source.history, ["pause", "resume"])
        self.assertFalse(backend.of(StreamEnded, 1))
        stream.finish([(b"grpc-status", b"0"), (b"Connection", b"x")])
        backend.receive()
        [trailers] = backend.of(TrailersReceived, 1)
        self.assertEqual(trailers.headers, [(b"grpc-status", b"0")])
        self.assertTrue(backend.of(StreamEnded, 1))
        backend.respond(1, body=b"reply", trailers=[(b"grpc-status", b"0")])
        self.assertEqual(receiver.body, b"reply")

    def test_bodyStreamDeclaredLength(self):
        """
        A L{BodyStream} with a declared length sends it as Content-Length;
        bytes written before the stream started are sent first; finishing
        without trailers ends the stream with an empty DATA frame.
        """
        stream = BodyStream(length=6)
        stream.write(b"abc")
        self.call(post(stream))
        backend = self.accept()
        self.assertIn((b"content-length", b"6"), backend.requests()[1].headers)
        stream.write(b"def")
        stream.finish()
        backend.receive()
        self.assertEqual(backend.body(1), b"abcdef")
        self.assertTrue(backend.of(StreamEnded, 1))
        self.assertFalse(backend.of(TrailersReceived, 1))

    def test_bodyStreamFails(self):
        """
        A request body that fails resets the stream (CANCEL) and fails the
        call.
        """
        stream = BodyStream(Source())
        _, receiver = self.call(post(stream))
        backend = self.accept()
        stream.write(b"abc")
        stream.fail(Failure(ConnectionAborted()))
        backend.receive()
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)
        self.assertIn("the request body failed", receiver.failure.value.message)
        self.assertTrue(receiver.failure.value.requestSent)

    def test_bodyStreamFailsAfterHead(self):
        """
        A request body failing after the response head fails the response
        body.
        """
        stream = BodyStream(Source())
        _, receiver = self.call(post(stream))
        backend = self.accept()
        backend.respond(1, end=False)
        stream.fail(Failure(ConnectionAborted()))
        [reason] = receiver.done
        self.assertIn("the request body failed", reason.value.message)
        backend.receive()
        self.assertTrue(backend.of(StreamReset, 1))

    def test_responseEndsBeforeRequestBody(self):
        """
        A complete response before the whole request body stops the upload
        (RST_STREAM CANCEL) and stops the body's source.
        """
        source = Source()
        stream = BodyStream(source)
        _, receiver = self.call(post(stream))
        backend = self.accept()
        stream.write(b"part")
        backend.respond(1, status=413)
        self.assertEqual((receiver.response.code, receiver.done), (413, [None]))
        self.assertTrue(source.stopped)
        backend.receive()
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)
        self.assertEqual(self.pool.idleCount, 1)

    def test_headerTimeoutWaitsForStreamedBody(self):
        """
        The response header timeout does not run while a streamed request
        body waits for its source; it counts from the body's end.
        """
        stream = BodyStream(Source())
        _, receiver = self.call(post(stream))
        backend = self.accept()
        self.reactor.advance(100)
        stream.write(b"x")
        self.reactor.advance(100)
        self.assertIsNone(receiver.failure)
        stream.finish()
        self.reactor.advance(29)
        self.assertIsNone(receiver.failure)
        self.reactor.advance(1)
        receiver.failure.trap(ResponseHeaderTimeout)
        backend.receive()

    def test_responseBackpressure(self):
        """
        While the response is paused, received data is neither delivered
        nor acknowledged, so the backend's stream window closes; resuming
        delivers it and sends WINDOW_UPDATE.  Other streams keep flowing.
        """
        _, receiver = self.call(get())
        _, other = self.call(get(b"/other"))
        backend = self.accept()
        backend.respond(1, end=False)
        backend.respond(3, end=False)
        receiver.response.pauseProducing()
        backend.conn.send_data(1, b"a" * 16384)
        for _ in range(2):
            backend.conn.send_data(1, b"b" * 16384)
        backend.conn.send_data(1, b"c" * 16383)
        backend.send()
        self.assertEqual(backend.conn.local_flow_control_window(1), 0)
        self.assertEqual((receiver.data, backend.of(WindowUpdated, 1)), ([], []))
        backend.conn.send_data(3, b"still flowing", end_stream=True)
        backend.send()
        self.assertEqual((other.body, other.done), (b"still flowing", [None]))
        self.reactor.advance(100)
        self.assertEqual(receiver.done, [])
        receiver.response.resumeProducing()
        backend.receive()
        self.assertEqual(len(receiver.body), 65535)
        self.assertTrue(backend.of(WindowUpdated, 1))
        self.assertGreater(backend.conn.local_flow_control_window(1), 32767)
        backend.conn.send_data(1, b"end", end_stream=True)
        backend.send()
        self.assertEqual((len(receiver.body), receiver.done), (65538, [None]))

    def test_endWhilePaused(self):
        """
        A response that ends while paused reports its end only after the
        buffered data, once resumed.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        backend.respond(1, end=False)
        receiver.response.pauseProducing()
        backend.conn.send_data(1, b"data", end_stream=True)
        backend.send()
        self.assertEqual((receiver.data, receiver.done), ([], []))
        receiver.response.resumeProducing()
        self.assertEqual((receiver.body, receiver.done), (b"data", [None]))


# ---------------------------------------------------------------- multiplexing


class MultiplexingTests(PoolTestMixin, SynchronousTestCase):
    """
    Many streams share few connections.
    """

    def test_concurrentStreamsOnOneConnection(self):
        """
        Requests made while the first connection is being set up wait for
        it, and go out as concurrent streams on it; responses in any order
        reach their callers.
        """
        receivers = [self.call(get(b"/%d" % (i,)))[1] for i in range(3)]
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual((self.pool.connectingCount, self.pool.activeCount), (1, 1))
        backend = self.accept()
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual({s: r.headers[3][1] for s, r in backend.requests().items()},
                         {1: b"/0", 3: b"/1", 5: b"/2"})
        self.assertEqual((self.pool.activeCount, self.pool.streamCount), (1, 3))
        backend.respond(5, body=b"two")
        backend.respond(1, body=b"zero")
        backend.respond(3, body=b"one")
        self.assertEqual([r.body for r in receivers], [b"zero", b"one", b"two"])
        _, later = self.call(get())
        backend.receive()
        self.assertEqual(list(backend.requests()), [1, 3, 5, 7])
        self.assertEqual(self.pool.totalConnectionsMade, 1)

    def test_secondConnectionAtLimit(self):
        """
        Once a connection is at the backend's SETTINGS_MAX_CONCURRENT_STREAMS,
        a new connection carries further requests.
        """
        first = self.call(get(b"/1"))[1]
        second = self.call(get(b"/2"))[1]
        backend1 = self.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        self.assertEqual(list(backend1.requests()), [1])
        self.assertEqual(len(self.reactor.tcpClients), 1)
        backend2 = self.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        self.assertEqual(backend2.requests()[1].headers[3], (b":path", b"/2"))
        backend1.respond(1, body=b"a")
        backend2.respond(1, body=b"b")
        self.assertEqual((first.body, second.body), (b"a", b"b"))
        self.assertEqual((self.pool.idleCount, self.pool.connectionCount), (2, 2))

    def test_maxConcurrentStreamsCap(self):
        """
        The pool's own C{maxConcurrentStreams} caps streams per connection.
        """
        self.pool.maxConcurrentStreams = 2
        for _ in range(3):
            self.call(get())
        self.assertEqual(len(self.reactor.tcpClients), 2)
        backend = self.accept()
        self.assertEqual(list(backend.requests()), [1, 3])

    def test_queuedCallTakesFreedSlot(self):
        """
        A request waiting for a new connection takes a slot freed on a
        ready one first.
        """
        self.call(get(b"/1"))
        backend1 = self.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        _, waiting = self.call(get(b"/2"))
        self.assertEqual(self.pool.connectingCount, 1)
        backend1.respond(1, body=b"a")
        backend1.receive()
        self.assertEqual(backend1.requests()[3].headers[3], (b":path", b"/2"))
        backend1.respond(3, body=b"b")
        self.assertEqual(waiting.body, b"b")
        backend2 = self.accept()
        self.assertEqual(backend2.requests(), {})
        self.assertEqual(self.pool.idleCount, 2)

    def test_cancelResetsOnlyThatStream(self):
        """
        Cancelling a call resets its stream (CANCEL) and tells its receiver;
        the connection and the other streams go on.
        """
        call, cancelled = self.call(get(b"/1"))
        _, other = self.call(get(b"/2"))
        backend = self.accept()
        call.cancel()
        cancelled.failure.trap(CancelledError)
        backend.receive()
        [reset] = backend.of(StreamReset)
        self.assertEqual((reset.stream_id, reset.error_code), (1, ErrorCodes.CANCEL))
        self.assertFalse(backend.transport.disconnecting)
        backend.respond(3, body=b"fine")
        self.assertEqual(other.body, b"fine")
        call.cancel()

    def test_cancelDeferred(self):
        """
        Cancelling the Deferred of L{H2Pool.request} resets the stream.
        """
        d = self.pool.request(get())
        backend = self.accept()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        backend.receive()
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)

    def test_cancelWhileConnecting(self):
        """
        A call cancelled while its connection is being made is never sent;
        the connection becomes idle.
        """
        call, receiver = self.call(get())
        call.cancel()
        receiver.failure.trap(CancelledError)
        backend = self.accept()
        self.assertEqual(backend.requests(), {})
        self.assertEqual(self.pool.idleCount, 1)

    def test_stopProducingResetsStream(self):
        """
        C{stopProducing} on a response resets its stream only; the body
        ends with L{ConnectionAborted}.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        backend.respond(1, end=False)
        receiver.response.stopProducing()
        receiver.done[0].trap(ConnectionAborted)
        backend.receive()
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)
        self.assertFalse(backend.transport.disconnecting)
        self.assertEqual(self.pool.idleCount, 1)

    def test_idleTimeout(self):
        """
        A connection without streams closes (GOAWAY) after C{idleTimeout}.
        """
        self.call(get())
        backend = self.accept()
        backend.respond(1)
        self.reactor.advance(59)
        self.assertFalse(backend.transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(backend.transport.disconnecting)
        backend.receive()
        self.assertTrue(backend.of(ConnectionTerminated))
        self.assertEqual(self.pool.idleCount, 0)
        self.lose(backend)
        self.assertEqual(self.pool.connectionCount, 0)

    def test_idleTimerStopsWithNewStream(self):
        """
        A stream started on an idle connection keeps it open past the idle
        timeout.
        """
        self.call(get())
        backend = self.accept()
        backend.respond(1)
        self.reactor.advance(30)
        self.call(get())
        self.reactor.advance(30)
        self.assertFalse(backend.transport.disconnecting)

    def test_maxIdle(self):
        """
        With C{maxIdle=0}, a connection closes as soon as it has no stream.
        """
        self.pool.maxIdle = 0
        self.call(get())
        backend = self.accept()
        backend.respond(1, body=b"x")
        self.assertTrue(backend.transport.disconnecting)

    def test_closeOneIdleAndCached(self):
        """
        C{closeOneIdle} closes one idle connection; C{closeCachedConnections}
        the rest, firing once they are gone.
        """
        self.pool.maxConcurrentStreams = 1
        self.call(get())
        self.call(get())
        backends = [self.accept(), self.accept()]
        for backend in backends:
            backend.respond(1)
        self.assertEqual(self.pool.idleCount, 2)
        self.assertTrue(self.pool.closeOneIdle())
        self.assertEqual(self.pool.idleCount, 1)
        d = self.pool.closeCachedConnections()
        self.assertNoResult(d)
        self.assertFalse(self.pool.closeOneIdle())
        for backend in backends:
            self.lose(backend)
        self.successResultOf(d)

    def test_close(self):
        """
        C{close} fails streams in progress and queued calls, closes every
        connection, and refuses new requests.
        """
        _, waiting = self.call(get())
        _, streaming = self.call(get())
        backend = self.accept()
        backend.respond(3, end=False)
        self.pool.maxConcurrentStreams = 2
        _, queued = self.call(get())
        d = self.pool.close()
        self.assertIn("was closed", waiting.failure.value.message)
        streaming.done[0].trap(ConnectionAborted)
        queued.failure.trap(ConnectFailed)
        self.assertTrue(backend.transport.disconnected)
        self.assertNoResult(d)
        self.lose(backend, ConnectionAborted)
        self.successResultOf(d)
        _, late = self.call(get())
        self.assertIn("is closed", late.failure.value.message)


# ---------------------------------------------------------------- errors


class ErrorTests(PoolTestMixin, SynchronousTestCase):
    """
    Resets, GOAWAY, timeouts, lost connections and protocol errors.
    """

    def test_trailers(self):
        """
        Trailer fields (C{grpc-status}) are set on the response before
        C{bodyDone(None)}.
        """
        _, receiver = self.call(post(b"\x00\x00\x00\x00\x00", target=b"/pkg.Svc/Call"))
        backend = self.accept()
        backend.respond(1, headers=[(b"content-type", b"application/grpc")],
                        body=b"\x00\x00\x00\x00\x00",
                        trailers=[(b"grpc-status", b"0"), (b"grpc-message", b"")])
        self.assertEqual(receiver.done, [None])
        self.assertEqual(receiver.trailersAtDone, [(b"grpc-status", b"0"), (b"grpc-message", b"")])

    def test_trailersOnly(self):
        """
        A trailers-only response (one HEADERS with END_STREAM) has its
        status in the headers, an empty body and no trailers.
        """
        _, receiver = self.call(post(b"x"))
        backend = self.accept()
        backend.respond(1, headers=[(b"content-type", b"application/grpc"),
                                    (b"grpc-status", b"12")])
        response = receiver.response
        self.assertEqual(response.getHeader(b"grpc-status"), b"12")
        self.assertEqual((receiver.body, receiver.done, receiver.trailersAtDone),
                         (b"", [None], []))

    def test_resetBeforeHead(self):
        """
        RST_STREAM before the response head fails the call with
        L{UpstreamReset} (request sent); the connection stays usable.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        backend.conn.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        backend.send()
        error = receiver.failure.value
        self.assertIsInstance(error, UpstreamReset)
        self.assertTrue(error.requestSent)
        self.assertEqual(error.message, "10.0.0.1:8080 reset the stream (INTERNAL_ERROR)")
        _, again = self.call(get())
        backend.receive()
        backend.respond(3, body=b"ok")
        self.assertEqual(again.body, b"ok")

    def test_refusedStream(self):
        """
        REFUSED_STREAM means the request was not processed: requestSent is
        false, so it is safe to retry.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        backend.conn.reset_stream(1, ErrorCodes.REFUSED_STREAM)
        backend.send()
        error = receiver.failure.value
        self.assertIsInstance(error, UpstreamReset)
        self.assertFalse(error.requestSent)

    def test_resetInBody(self):
        """
        RST_STREAM after the head fails the body with L{UpstreamReset}.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        backend.respond(1, body=b"part", end=False)
        backend.conn.reset_stream(1, ErrorCodes.CANCEL)
        backend.send()
        self.assertEqual(receiver.body, b"part")
        [reason] = receiver.done
        reason.trap(UpstreamReset)
        self.assertIn("in the middle of the body", reason.value.message)

    def test_goAway(self):
        """
        After GOAWAY, streams above its last stream id fail with requestSent
        false, lower ones complete, and new requests use a new connection;
        the old one closes after its last stream.
        """
        receivers = [self.call(get(b"/%d" % (i,)))[1] for i in range(3)]
        backend = self.accept()
        backend.conn.close_connection(last_stream_id=1)
        backend.conn.state_machine.state = ConnectionState.SERVER_OPEN
        backend.send()
        for receiver in receivers[1:]:
            error = receiver.failure.value
            self.assertIsInstance(error, UpstreamReset)
            self.assertFalse(error.requestSent)
            self.assertIn("GOAWAY", error.message)
        self.assertIsNone(receivers[0].failure)
        _, fresh = self.call(get(b"/new"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        backend.respond(1, body=b"first")
        self.assertEqual((receivers[0].body, receivers[0].done), (b"first", [None]))
        self.assertTrue(backend.transport.disconnecting)
        backend2 = self.accept()
        self.assertEqual(backend2.requests()[1].headers[3], (b":path", b"/new"))
        self.lose(backend)

    def test_goAwayIdle(self):
        """
        GOAWAY on an idle connection closes it.
        """
        self.call(get())
        backend = self.accept()
        backend.respond(1)
        backend.conn.close_connection(last_stream_id=1)
        backend.send()
        self.assertTrue(backend.transport.disconnecting)
        self.assertEqual(self.pool.idleCount, 0)

    def test_responseHeaderTimeout(self):
        """
        No response head within C{responseHeaderTimeout}: the stream is
        reset and the call fails; the connection stays.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        self.reactor.advance(29.9)
        self.assertIsNone(receiver.failure)
        self.reactor.advance(0.1)
        error = receiver.failure.value
        self.assertIsInstance(error, ResponseHeaderTimeout)
        self.assertEqual(error.message, "10.0.0.1:8080 sent no response head within 30s")
        backend.receive()
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)
        self.assertFalse(backend.transport.disconnecting)
        self.assertEqual(self.pool.idleCount, 1)

    def test_headerTimeoutCountsFromBodyEnd(self):
        """
        For a body blocked by the backend's window, the response header
        timeout counts from the last progress.
        """
        _, receiver = self.call(post(b"x" * 70000))
        backend = self.accept()
        self.reactor.advance(20)
        backend.conn.acknowledge_received_data(65535, 1)
        backend.send()
        self.reactor.advance(29)
        self.assertIsNone(receiver.failure)
        self.reactor.advance(1)
        receiver.failure.trap(ResponseHeaderTimeout)

    def test_readTimeout(self):
        """
        No body byte for C{readTimeout} fails the body with L{ReadTimeout};
        a paused response does not time out.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        backend.respond(1, body=b"a", end=False)
        self.reactor.advance(15)
        backend.conn.send_data(1, b"b")
        backend.send()
        self.reactor.advance(15)
        self.assertEqual(receiver.done, [])
        receiver.response.pauseProducing()
        self.reactor.advance(100)
        self.assertEqual(receiver.done, [])
        receiver.response.resumeProducing()
        self.reactor.advance(20)
        [reason] = receiver.done
        reason.trap(ReadTimeout)
        self.assertEqual(reason.value.message, "10.0.0.1:8080 sent no body byte for 20s")
        backend.receive()
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)

    def test_lostBeforeHead(self):
        """
        A connection lost before the head fails its calls with
        L{UpstreamReset}.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        self.lose(backend)
        error = receiver.failure.value
        self.assertIsInstance(error, UpstreamReset)
        self.assertEqual(error.message,
                         "10.0.0.1:8080 closed the connection before answering")
        self.assertEqual(self.pool.connectionCount, 0)

    def test_lostInBody(self):
        """
        A connection lost in the middle of a body fails the body.
        """
        _, receiver = self.call(get())
        backend = self.accept()
        backend.respond(1, body=b"a", end=False)
        self.lose(backend)
        [reason] = receiver.done
        reason.trap(UpstreamReset)
        self.assertIn("in the middle of the body", reason.value.message)

    def test_protocolError(self):
        """
        Bytes that are not HTTP/2 frames fail every stream with
        L{InvalidResponse} and close the connection.
        """
        _, waiting = self.call(get())
        _, streaming = self.call(get())
        backend = self.accept()
        backend.respond(3, end=False)
        # DATA on stream 0
        backend.protocol.dataReceived(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        waiting.failure.trap(InvalidResponse)
        self.assertIn("10.0.0.1:8080: HTTP/2 protocol error", waiting.failure.value.message)
        streaming.done[0].trap(InvalidResponse)
        self.assertTrue(backend.transport.disconnected)
        self.assertEqual(self.pool.idleCount, 0)

    def test_notHTTP2(self):
        """
        A backend answering the preface with HTTP/1.1 fails the waiting
        calls with L{ConnectFailed}.
        """
        _, receiver = self.call(get())
        backend = self.accept(ready=False)
        backend.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        error = receiver.failure.value
        self.assertIsInstance(error, ConnectFailed)
        self.assertFalse(error.requestSent)
        self.assertTrue(backend.transport.disconnected)
        self.assertEqual(self.pool.connectionCount, 0)

    def test_setupTimeout(self):
        """
        A backend that accepts but never sends SETTINGS fails the calls
        after C{connectTimeout}.
        """
        _, receiver = self.call(get())
        backend = self.accept(ready=False)
        self.reactor.advance(3)
        error = receiver.failure.value
        self.assertIsInstance(error, ConnectFailed)
        self.assertEqual(error.message, "10.0.0.1:8080: HTTP/2 SETTINGS from the backend "
                                        "timed out after 3s")
        self.assertTrue(backend.transport.disconnected)

    def test_connectRefused(self):
        """
        A refused connection fails every call waiting for it.
        """
        _, first = self.call(get())
        _, second = self.call(get())
        _, _, factory, _, _ = self.reactor.tcpClients.pop(0)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        for receiver in (first, second):
            self.assertEqual(receiver.failure.value.message, "10.0.0.1:8080: connection refused")
        self.assertEqual(self.pool.connectingCount, 0)

    def test_lostDuringSetup(self):
        """
        A connection closed before SETTINGS fails its waiting calls.
        """
        _, receiver = self.call(get())
        backend = self.accept(ready=False)
        self.lose(backend)
        receiver.failure.trap(ConnectFailed)
        self.assertIn("before the HTTP/2 SETTINGS", receiver.failure.value.message)

    def test_zeroConcurrentStreams(self):
        """
        A backend allowing no streams fails the waiting calls rather than
        making connection after connection.
        """
        _, receiver = self.call(get())
        self.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 0})
        receiver.failure.trap(ConnectFailed)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_settingsIncreaseStartsQueued(self):
        """
        A SETTINGS update raising the stream limit starts requests waiting
        for a connection on the existing one.
        """
        self.call(get())
        backend = self.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        _, waiting = self.call(get())
        backend.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 5})
        backend.send()
        self.assertEqual(sorted(backend.requests()), [1, 3])
        backend.respond(3, body=b"ok")
        self.assertEqual(waiting.body, b"ok")


# ---------------------------------------------------------------- TLS


class _H2Server(Protocol):
    """
    A tiny h2 server: answers every request with C{hello over h2} and a
    C{grpc-status} trailer.
    """

    def connectionMade(self):
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data):
        for event in self.conn.receive_data(data):
            if isinstance(event, StreamEnded):
                self.conn.send_headers(event.stream_id, [(b":status", b"200")])
                self.conn.send_data(event.stream_id, b"hello over h2")
                self.conn.send_headers(event.stream_id, [(b"grpc-status", b"0")],
                                       end_stream=True)
        self.transport.write(self.conn.data_to_send())

    def connectionLost(self, reason):
        self.factory.lost.append(reason)
        waiter, self.factory.waiter = self.factory.waiter, None
        if waiter is not None:
            waiter.callback(None)


@implementer(IOpenSSLContextFactory)
class _PlainContextFactory:
    """
    A server context without ALPN (Twisted's own always selects a protocol
    or fails the handshake).
    """

    def __init__(self, issued):
        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.use_certificate_chain_file(issued.cert)
        self.context.use_privatekey_file(issued.key)

    def getContext(self):
        return self.context


class TLSTests(TestCase):
    """
    Real loopback TLS: ALPN must choose h2.
    """

    def setUp(self):
        self.pki = PKI(self.mktemp(), "h2 CA")
        self.issued = self.pki.issue("localhost", ["localhost"])

    def listen(self, alpn=True):
        """
        Serve L{_H2Server} over TLS on a loopback port, choosing h2 by ALPN
        unless C{alpn} is false (then the server ignores ALPN).

        @return: C{(port number, factory)}.
        """
        if alpn:
            with open(self.issued.cert, "rb") as f:
                certPEM = f.read()
            with open(self.issued.key, "rb") as f:
                keyPEM = f.read()
            certificate = ssl.PrivateCertificate.loadPEM(certPEM + keyPEM)
            options = ssl.CertificateOptions(
                privateKey=certificate.privateKey.original,
                certificate=certificate.original,
                acceptableProtocols=[b"h2"],
            )
        else:
            options = _PlainContextFactory(self.issued)
        factory = Factory.forProtocol(_H2Server)
        factory.lost = []
        factory.waiter = None
        port = globalReactor.listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, factory

    def makePool(self, port, pki=None):
        with open((pki or self.pki).ca.cert, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        tls = ssl.optionsForClientTLS("localhost", trustRoot=trust, acceptableProtocols=[b"h2"])
        pool = H2Pool(globalReactor, "127.0.0.1", port, tls=tls, connectTimeout=5.0)
        return pool

    @inlineCallbacks
    def closeAll(self, pool, factory):
        waiter = None
        if not factory.lost:
            waiter = factory.waiter = Deferred()
        yield pool.close()
        if waiter is not None:
            yield waiter

    @inlineCallbacks
    def test_alpnH2(self):
        """
        Over TLS with ALPN h2, requests use C{:scheme https}; body and
        trailers arrive.
        """
        port, factory = self.listen()
        pool = self.makePool(port)
        try:
            response = yield pool.request(get())
            done = Deferred()
            receiver = Receiver()
            receiver.response = response
            receiver.bodyDone = lambda reason: done.callback((receiver.body, reason,
                                                              response.trailers))
            response.deliverBody(receiver)
            body, reason, trailers = yield done
            self.assertEqual((response.code, body, reason, trailers),
                             (200, b"hello over h2", None, [(b"grpc-status", b"0")]))
            self.assertEqual(pool.idleCount, 1)
        finally:
            yield self.closeAll(pool, factory)

    @inlineCallbacks
    def test_alpnNotH2(self):
        """
        A TLS backend that does not do ALPN fails with
        L{UpstreamTLSFailed} saying so.
        """
        port, factory = self.listen(alpn=False)
        pool = self.makePool(port)
        try:
            error = yield self.assertFailure(pool.request(get()), UpstreamTLSFailed)
            self.assertIn("backend did not negotiate h2", error.message)
            self.assertFalse(error.requestSent)
        finally:
            yield self.closeAll(pool, factory)

    @inlineCallbacks
    def test_untrustedCertificate(self):
        """
        A certificate from an unknown CA fails with L{UpstreamTLSFailed},
        nothing sent.
        """
        port, factory = self.listen()
        pool = self.makePool(port, PKI(self.mktemp(), "other CA"))
        try:
            error = yield self.assertFailure(pool.request(get()), UpstreamTLSFailed)
            self.assertIn("TLS handshake failed", error.message)
            self.assertFalse(error.requestSent)
        finally:
            yield self.closeAll(pool, factory)
