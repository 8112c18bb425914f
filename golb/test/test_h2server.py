"""
Tests for L{golb._h2server}: HTTP/2 on golb's listeners.

Most tests drive an L{H2Channel} (or the L{SwitchingChannel} every golb
listener uses) over a L{StringTransport} with an C{h2} client connection;
the last ones go through real loopback sockets: h2c with prior knowledge
and ALPN over TLS, to a backend through golb's routing and proxy.
"""

from typing import Dict, List, Optional

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from golb._h2server import PREFACE, H2Channel, H2Stream, SwitchingChannel, isGRPC
from golb.app import Golb
from golb.config import ClientAuth, parseConfig
from golb.listener import GolbSite
from golb.tap import listenerSite
from golb.test.support import listenBackend, listenGolb, rawRequest
from golb.test.test_streams import Producer, Receiver
from golb.test.test_tls import ClientTLS, ServerPKI, listenTLS
from golb.tls import ServerTLS


def _get(path=b"/", authority=b"example.com", method=b"GET", scheme=b"http", extra=()):
    return [(b":method", method), (b":scheme", scheme), (b":authority", authority),
            (b":path", path)] + list(extra)


@implementer(ISSLTransport)
class SecureTransport(StringTransport):
    """
    A L{StringTransport} that says it is TLS, with what ALPN negotiated.
    """

    negotiatedProtocol = None

    def setTcpNoDelay(self, enabled):
        pass

    def getPeerCertificate(self):
        return None


class Response:
    """
    What the client received on one stream.
    """

    def __init__(self):
        self.headers: Optional[List] = None
        self.informational: List = []
        self.data = b""
        self.trailers: Optional[List] = None
        self.ended = False
        self.reset: Optional[int] = None
        self.endedWithHeaders = False

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> List[bytes]:
        return [value for key, value in self.headers if key == name]


class H2Client:
    """
    An C{h2} client connection wired to a server protocol over a
    L{StringTransport}; L{pump} moves bytes both ways until both are quiet.

    @ivar responses: L{Response}s by stream number.
    @ivar goaway: the server's C{ConnectionTerminated} event, if any.
    """

    def __init__(self, server, transport, settings=None, validate=True, ack=True, conn=None):
        if conn is None:
            config = h2.config.H2Configuration(
                client_side=True, header_encoding=None,
                validate_outbound_headers=validate, normalize_outbound_headers=validate,
            )
            conn = h2.connection.H2Connection(config=config)
            conn.initiate_connection()
        self.conn = conn
        if settings:
            self.conn.update_settings(settings)
        self.server = server
        self.transport = transport
        self.responses: Dict[int, Response] = {}
        self.goaway = None
        self.ack = ack
        self.pump()

    def pump(self) -> None:
        while True:
            moved = False
            data = self.conn.data_to_send()
            if data and not self.transport.disconnecting:
                self.server.dataReceived(data)
                moved = True
            received = self.transport.value()
            if received:
                self.transport.clear()
                if self.goaway is None:
                    self.handle(self.conn.receive_data(received))
                moved = True
            if not moved:
                return

    def handle(self, events) -> None:
        for event in events:
            stream = getattr(event, "stream_id", None)
            response = self.responses.setdefault(stream, Response()) if stream else None
            if isinstance(event, h2.events.ResponseReceived):
                response.headers = event.headers
                response.endedWithHeaders = event.stream_ended is not None
            elif isinstance(event, h2.events.InformationalResponseReceived):
                response.informational.append(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                response.data += event.data
                if self.ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.TrailersReceived):
                response.trailers = event.headers
            elif isinstance(event, h2.events.StreamEnded):
                response.ended = True
            elif isinstance(event, h2.events.StreamReset):
                response.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event

    def request(self, headers, body: Optional[bytes] = None, end: bool = True,
                pump: bool = True) -> int:
        """
        Send a request on a new stream.

        @return: the stream number.
        """
        streamID = self.conn.get_next_available_stream_id()
        self.conn.send_headers(streamID, headers, end_stream=end and body is None)
        if body is not None:
            self.send(streamID, body, end=end, pump=False)
        if pump:
            self.pump()
        return streamID

    def send(self, streamID: int, data: bytes, end: bool = False, pump: bool = True) -> None:
        """
        Send body bytes, in frames of the largest allowed size.
        """
        size = self.conn.max_outbound_frame_size
        for start in range(0, len(data), size):
            last = start + size >= len(data)
            self.conn.send_data(streamID, data[start:start + size], end_stream=end and last)
        if not data and end:
            self.conn.end_stream(streamID)
        if pump:
            self.pump()

    def get(self, path=b"/", **kwargs) -> Response:
        return self.responses[self.request(_get(path), **kwargs)]


class Recorder(Resource):
    """
    Records the requests it renders; answers C{ok:} and the body, unless
    C{hold} (then the test answers).
    """

    isLeaf = True

    def __init__(self, hold=False):
        Resource.__init__(self)
        self.requests = []
        self.hold = hold

    def render(self, request):
        self.requests.append(request)
        if self.hold:
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"text/plain")
        return b"ok:" + request.content.read()


class IStreamChannel(Interface):
    """
    What a request (and the proxy) use of a stream, its channel and
    transport.
    """

    def write(data):
        pass

    def writeSequence(data):
        pass

    def loseConnection():
        pass

    def abortConnection():
        pass

    def getPeer():
        pass

    def getHost():
        pass

    def registerProducer(producer, streaming):
        pass

    def unregisterProducer():
        pass

    def pauseProducing():
        pass

    def resumeProducing():
        pass

    def stopProducing():
        pass


class H2TestCase(SynchronousTestCase):
    """
    A L{GolbSite} over a L{Clock} whose connections are L{H2Channel}s (or
    L{SwitchingChannel}s), and h2 clients for them.
    """

    def makeSite(self, resource=None, protocol=H2Channel, **kwargs):
        self.clock = Clock()
        self.resource = Recorder() if resource is None else resource
        self.site = GolbSite(self.resource, reactor=self.clock, **kwargs)
        self.site.protocol = protocol
        return self.site

    def connect(self, secure=False):
        if not hasattr(self, "site"):
            self.makeSite()
        address = IPv4Address("TCP", "10.0.0.1", 40000)
        channel = self.site.buildProtocol(address)
        transportClass = SecureTransport if secure else StringTransport
        transport = transportClass(peerAddress=address)
        channel.makeConnection(transport)
        return channel, transport

    def client(self, settings=None, secure=False, **kwargs) -> H2Client:
        channel, transport = self.connect(secure)
        self.channel, self.transport = channel, transport
        return H2Client(channel, transport, settings, **kwargs)


class RequestTests(H2TestCase):
    """
    HTTP/2 requests reach the site's resources as golb requests.
    """

    def test_get(self):
        """
        A GET is answered; its request says HTTP/2, takes :authority as its
        Host and :path as its URI.
        """
        client = self.client()
        response = client.get(b"/a?b=c")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.data, b"ok:")
        self.assertTrue(response.ended)
        self.assertEqual(response.header(b"content-type"), [b"text/plain"])
        (request,) = self.resource.requests
        self.assertEqual(request.clientproto, b"HTTP/2")
        self.assertEqual((request.method, request.uri, request.path, request.args),
                         (b"GET", b"/a?b=c", b"/a", {b"b": [b"c"]}))
        self.assertEqual(request.getRequestHostname(), b"example.com")
        self.assertEqual(request.requestHeaders.getRawHeaders(b"host"), [b"example.com"])
        self.assertFalse(request.isSecure())
        self.assertEqual(request.scheme(), "http")
        self.assertEqual(request.clientAddress(), "10.0.0.1")
        self.assertIsNone(request.bodyStream)
        self.assertEqual(self.channel.streams, {})

    def test_secure(self):
        """
        On a TLS transport the request is secure (and https).
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client(secure=True)
        client.request(_get())
        (request,) = self.resource.requests
        self.assertTrue(request.isSecure())
        self.assertEqual(request.scheme(), "https")

    def test_interfaces(self):
        """
        A stream is a transport, consumer and producer for its request.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        client.request(_get())
        stream = self.channel.streams[1]
        self.assertIsInstance(stream, H2Stream)
        verifyObject(IStreamChannel, stream, tentative=True)
        self.assertIs(self.resource.requests[0].channel, stream)
        self.assertIs(self.resource.requests[0].transport, stream)

    def test_headersAndCookies(self):
        """
        Regular fields become request headers (canonical names); split
        cookies are joined again.
        """
        client = self.client()
        client.request(_get(extra=[(b"x-thing", b"1"), (b"cookie", b"a=1"),
                                   (b"cookie", b"b=2"), (b"x-thing", b"2")]))
        (request,) = self.resource.requests
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-thing"), [b"1", b"2"])
        self.assertEqual(request.getCookie(b"a"), b"1")
        self.assertEqual(request.getCookie(b"b"), b"2")

    def test_postBuffered(self):
        """
        A POST body is buffered in C{request.content}; the resource is
        called at the end of the stream.
        """
        client = self.client()
        streamID = client.request(_get(method=b"POST"), end=False)
        client.send(streamID, b"hello ")
        self.assertEqual(self.resource.requests, [])
        client.send(streamID, b"world", end=True)
        self.assertEqual(client.responses[streamID].data, b"ok:hello world")
        (request,) = self.resource.requests
        self.assertEqual(request.bodyLength, 11)
        self.assertIsNone(request.bodyStream)

    def test_largeBodyWindow(self):
        """
        A buffered body larger than the stream's window is received whole:
        the window opens as the body is buffered.
        """
        client = self.client()
        body = b"x" * (H2Channel.initialWindowSize * 3)
        streamID = client.request(_get(method=b"POST"), end=False)
        for start in range(0, len(body), 65536):
            client.send(streamID, body[start:start + 65536])
        client.send(streamID, b"", end=True)
        self.assertEqual(client.responses[streamID].data, b"ok:" + body)

    def test_manyStreams(self):
        """
        Many streams are served at once, on one connection.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        streams = [client.request(_get(b"/%d" % (n,)), pump=False) for n in range(50)]
        client.pump()
        self.assertEqual(len(self.resource.requests), 50)
        for request in reversed(self.resource.requests):
            request.write(request.path)
            request.finish()
        client.pump()
        for number, streamID in enumerate(streams):
            response = client.responses[streamID]
            self.assertEqual((response.status, response.data, response.ended),
                             (200, b"/%d" % (number,), True))
        self.assertEqual(self.channel.streams, {})

    def test_settings(self):
        """
        The server announces its stream limit (the site's
        C{maxConcurrentStreams}) and header list size (C{maxHeaderBytes}).
        """
        self.makeSite(maxHeaderBytes=4096)
        self.site.maxConcurrentStreams = 7
        client = self.client()
        settings = client.conn.remote_settings
        self.assertEqual(settings.max_concurrent_streams, 7)
        self.assertEqual(settings.max_header_list_size, 4096)
        self.assertEqual(settings.initial_window_size, H2Channel.initialWindowSize)

    def test_tooManyStreams(self):
        """
        A client opening more streams than allowed gets a GOAWAY.
        """
        self.makeSite(resource=Recorder(hold=True))
        self.site.maxConcurrentStreams = 2
        channel, transport = self.connect()
        # a client that does not wait for the server's SETTINGS
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        for _ in range(3):
            conn.send_headers(conn.get_next_available_stream_id(), _get(), end_stream=True)
        channel.dataReceived(conn.data_to_send())
        events = conn.receive_data(transport.value())
        (goaway,) = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        self.assertEqual(goaway.error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(transport.disconnecting)

    def test_expectContinue(self):
        """
        C{expect: 100-continue} gets a 100 before the body is sent.
        """
        client = self.client()
        streamID = client.request(_get(method=b"POST", extra=[(b"expect", b"100-continue")]),
                                  end=False)
        self.assertEqual(client.responses[streamID].informational, [[(b":status", b"100")]])
        client.send(streamID, b"x", end=True)
        self.assertEqual(client.responses[streamID].data, b"ok:x")

    def test_headResponse(self):
        """
        A bodiless response is one HEADERS frame ending the stream.
        """
        client = self.client()
        response = client.responses[client.request(_get(method=b"HEAD"))]
        self.assertEqual(response.status, 200)
        self.assertEqual(response.data, b"")
        self.assertTrue(response.ended)

    def test_responseDropsConnectionFields(self):
        """
        Connection-specific response fields are left out.
        """
        class Hop(Resource):
            isLeaf = True

            def render(self, request):
                request.setHeader(b"connection", b"close")
                request.setHeader(b"transfer-encoding", b"chunked")
                request.setHeader(b"keep-alive", b"5")
                request.setHeader(b"x-kept", b"yes")
                return b"body"

        self.makeSite(resource=Hop())
        response = self.client().get()
        names = [name for name, _ in response.headers]
        self.assertEqual([n for n in names if n in (b"connection", b"transfer-encoding",
                                                   b"keep-alive")], [])
        self.assertEqual(response.header(b"x-kept"), [b"yes"])
        self.assertEqual(response.data, b"body")


class MalformedTests(H2TestCase):
    """
    Malformed requests reset their stream with PROTOCOL_ERROR; the
    connection goes on.
    """

    def assertReset(self, headers, code=ErrorCodes.PROTOCOL_ERROR):
        client = self.client(validate=False)
        streamID = client.request(headers)
        self.assertEqual(client.responses[streamID].reset, code)
        self.assertEqual(self.resource.requests, [])
        self.assertEqual(self.channel.streams, {})
        self.assertFalse(self.transport.disconnecting)
        # the connection still serves
        self.assertEqual(client.get().status, 200)

    def test_noPath(self):
        """
        A request without C{:path} is reset.
        """
        self.assertReset([(b":method", b"GET"), (b":scheme", b"http"),
                          (b":authority", b"example.com")])

    def test_noMethod(self):
        """
        A request without C{:method} is reset.
        """
        self.assertReset([(b":scheme", b"http"), (b":authority", b"example.com"),
                          (b":path", b"/")])

    def test_noScheme(self):
        """
        A request without C{:scheme} is reset.
        """
        self.assertReset([(b":method", b"GET"), (b":authority", b"example.com"),
                          (b":path", b"/")])

    def test_repeatedPseudo(self):
        """
        A repeated pseudo-header field resets the stream.
        """
        self.assertReset([(b":method", b"GET"), (b":method", b"GET"), (b":scheme", b"http"),
                          (b":path", b"/"), (b":authority", b"example.com")])

    def test_pseudoAfterRegular(self):
        """
        A pseudo-header field after a regular one resets the stream.
        """
        self.assertReset([(b":method", b"GET"), (b":scheme", b"http"), (b"x-a", b"1"),
                          (b":path", b"/"), (b":authority", b"example.com")])

    def test_unknownPseudo(self):
        """
        An unknown pseudo-header field (or C{:status}) resets the stream.
        """
        self.assertReset([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                          (b":status", b"200"), (b":authority", b"example.com")])

    def test_connectionHeader(self):
        """
        Connection-specific fields reset the stream.
        """
        self.assertReset(_get(extra=[(b"connection", b"keep-alive")]))

    def test_transferEncoding(self):
        """
        C{transfer-encoding} resets the stream.
        """
        self.assertReset(_get(extra=[(b"transfer-encoding", b"chunked")]))

    def test_teOtherThanTrailers(self):
        """
        C{te} other than C{trailers} resets the stream; C{trailers} is fine.
        """
        self.assertReset(_get(extra=[(b"te", b"gzip")]))
        client = self.client()
        self.assertEqual(client.responses[client.request(_get(extra=[(b"te", b"trailers")]))]
                         .status, 200)

    def test_upperCaseName(self):
        """
        Upper-case field names reset the stream.
        """
        self.assertReset(_get(extra=[(b"X-Upper", b"1")]))

    def test_badValue(self):
        """
        A value with a leading space resets the stream.
        """
        self.assertReset(_get(extra=[(b"x-a", b" 1")]))

    def test_relativePath(self):
        """
        A C{:path} that is not origin-form resets the stream.
        """
        self.assertReset(_get(path=b"http://example.com/"))

    def test_hostDiffers(self):
        """
        A C{host} field naming another authority resets the stream.
        """
        self.assertReset(_get(extra=[(b"host", b"other.example")]))

    def test_noAuthority(self):
        """
        A request with neither C{:authority} nor C{host} is answered 400;
        with C{host} alone it is served.
        """
        client = self.client(validate=False)
        headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
        response = client.responses[client.request(headers)]
        self.assertEqual(response.status, 400)
        self.assertEqual(response.header(b"x-golb-error"), [b"bad-request"])
        response = client.responses[client.request(headers + [(b"host", b"h.example")])]
        self.assertEqual(response.status, 200)
        self.assertEqual(self.resource.requests[0].getRequestHostname(), b"h.example")

    def test_tooManyFields(self):
        """
        More fields than the site's C{maxHeaderCount} are answered 431.
        """
        self.makeSite()
        self.site.maxHeaderCount = 3
        client = self.client()
        response = client.responses[client.request(
            _get(extra=[(b"x-%d" % (n,), b"v") for n in range(4)]))]
        self.assertEqual(response.status, 431)
        self.assertEqual(self.resource.requests, [])

    def test_malformedTrailers(self):
        """
        Trailers with a pseudo-header field reset the stream.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client(validate=False)
        streamID = client.request(_get(method=b"POST"), end=False)
        client.conn.send_headers(streamID, [(b":path", b"/")], end_stream=True)
        client.pump()
        self.assertEqual(client.responses[streamID].reset, ErrorCodes.PROTOCOL_ERROR)

    def test_connectionError(self):
        """
        Bytes that are not HTTP/2 frames end the connection with a GOAWAY
        carrying PROTOCOL_ERROR, without a logged error.
        """
        client = self.client()
        self.channel.dataReceived(b"\x00\x00\x04\x09\x00\x00\x00\x00\x01abcd")
        client.pump()
        self.assertEqual(client.goaway.error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.site.openConnections, {self.channel})
        self.channel.connectionLost(None)
        self.assertEqual(self.site.openConnections, set())


class BodyLimitTests(H2TestCase):
    """
    Bodies over C{maxBodyBytes} are answered 413; bodies not received in
    time 408.
    """

    def test_declaredTooLarge(self):
        """
        A Content-Length over the limit is answered 413 at once.
        """
        self.makeSite(maxBodyBytes=10)
        client = self.client()
        streamID = client.request(_get(method=b"POST", extra=[(b"content-length", b"100")]),
                                  end=False)
        response = client.responses[streamID]
        self.assertEqual(response.status, 413)
        self.assertEqual(response.header(b"x-golb-error"), [b"body-too-large"])
        self.assertTrue(response.data.startswith(b"413 "))
        self.assertTrue(response.ended)
        # the client, still sending, is told to stop
        self.assertEqual(response.reset, ErrorCodes.NO_ERROR)
        self.assertEqual(self.resource.requests, [])
        self.assertEqual(self.channel.streams, {})

    def test_growsTooLarge(self):
        """
        A body without a length is answered 413 once it crosses the limit;
        what the client sends afterwards is dropped.
        """
        self.makeSite(maxBodyBytes=10)
        client = self.client()
        streamID = client.request(_get(method=b"POST"), end=False)
        client.send(streamID, b"x" * 8)
        self.assertIsNone(client.responses.get(streamID))
        client.send(streamID, b"x" * 8)
        response = client.responses[streamID]
        self.assertEqual(response.status, 413)
        self.assertEqual(self.resource.requests, [])
        self.assertEqual(client.get().status, 200)

    def test_requestLowersLimit(self):
        """
        The limit is the request's C{maxBodyBytes}.
        """
        self.makeSite(maxBodyBytes=None)
        client = self.client()
        client.get()
        streamID = client.request(_get(method=b"POST"), end=False)
        self.channel.streams[streamID].request.maxBodyBytes = 3
        client.send(streamID, b"abcd", end=True)
        self.assertEqual(client.responses[streamID].status, 413)

    def test_requestTimeout(self):
        """
        A body not complete within C{requestHeaderTimeout} is answered 408.
        """
        self.makeSite(requestHeaderTimeout=5)
        client = self.client()
        streamID = client.request(_get(method=b"POST"), end=False)
        self.clock.advance(4)
        client.send(streamID, b"x")
        self.assertIsNone(client.responses.get(streamID))
        self.clock.advance(1)
        client.pump()
        self.assertEqual(client.responses[streamID].status, 408)
        self.assertEqual(self.resource.requests, [])


class FlowControlTests(H2TestCase):
    """
    Responses are sent within the client's windows; the request's producer
    is paused while they are exhausted (or the transport is full).
    """

    def held(self, client, **kwargs):
        self.makeSite(resource=Recorder(hold=True))
        client = self.client(**kwargs)
        streamID = client.request(_get())
        (request,) = self.resource.requests
        producer = Producer()
        request.registerProducer(producer, True)
        return client, streamID, request, producer

    def test_windowExhausted(self):
        """
        With a window of 0, written bytes are queued and the producer is
        paused; a WINDOW_UPDATE sends them and resumes it.
        """
        client, streamID, request, producer = self.held(
            None, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}, ack=False)
        request.write(b"x" * 100000)
        client.pump()
        self.assertEqual(producer.events, ["pause"])
        response = client.responses[streamID]
        self.assertEqual((response.status, response.data), (200, b""))
        client.conn.increment_flow_control_window(50000, streamID)
        client.pump()
        self.assertEqual(len(response.data), 50000)
        self.assertEqual(producer.events, ["pause"])
        client.conn.increment_flow_control_window(100000, streamID)
        client.conn.increment_flow_control_window(100000)
        client.pump()
        self.assertEqual(len(response.data), 100000)
        self.assertEqual(producer.events, ["pause", "resume"])
        request.unregisterProducer()
        request.finish()
        client.pump()
        self.assertTrue(response.ended)

    def test_slowReaderPausesProducer(self):
        """
        A client that never opens its window keeps the producer paused
        however much is written (golb stops reading the backend).
        """
        client, streamID, request, producer = self.held(None, ack=False)
        for _ in range(40):
            request.write(b"y" * 16384)
            client.pump()
        # the client's connection window: 65535 bytes
        self.assertEqual(len(client.responses[streamID].data), 65535)
        self.assertEqual(producer.events, ["pause"])
        self.assertEqual(self.channel.streams[streamID]._outBytes, 40 * 16384 - 65535)

    def test_connectionWindow(self):
        """
        The connection's window limits every stream.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client(ack=False)
        first = client.request(_get())
        second = client.request(_get())
        one, two = self.resource.requests
        one.write(b"a" * 65535)
        client.pump()
        two.write(b"b" * 10)
        producer = Producer()
        two.registerProducer(producer, True)
        client.pump()
        self.assertEqual(client.responses[second].data, b"")
        self.assertEqual(producer.events, ["pause"])
        client.conn.increment_flow_control_window(10)
        client.pump()
        self.assertEqual(client.responses[second].data, b"b" * 10)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertEqual(len(client.responses[first].data), 65535)

    def test_transportFull(self):
        """
        When the transport is full the connection stops reading and
        sending; producers writing meanwhile are paused, then resumed.
        """
        client, streamID, request, producer = self.held(None)
        self.channel.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        request.write(b"z" * 1000)
        self.assertEqual(producer.events, ["pause"])
        self.assertEqual(self.transport.value(), b"")
        self.channel.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(producer.events, ["pause", "resume"])
        client.pump()
        self.assertEqual(client.responses[streamID].data, b"z" * 1000)

    def test_pullProducer(self):
        """
        A pull producer is asked for more whenever its stream's queue is
        empty.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        streamID = client.request(_get())
        (request,) = self.resource.requests
        chunks = [b"one", b"two", b"three"]

        class Pull:
            def resumeProducing(self):
                if chunks:
                    request.write(chunks.pop(0))
                else:
                    request.unregisterProducer()
                    request.finish()

            def stopProducing(self):
                pass

        request.registerProducer(Pull(), False)
        client.pump()
        response = client.responses[streamID]
        self.assertEqual(response.data, b"onetwothree")
        self.assertTrue(response.ended)

    def test_framesTakeTurns(self):
        """
        Streams with queued data share the connection frame by frame.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client(ack=False)
        first = client.request(_get())
        second = client.request(_get())
        one, two = self.resource.requests
        self.channel.pauseProducing()
        one.write(b"1" * 40000)
        two.write(b"2" * 40000)
        self.channel.resumeProducing()
        received = self.transport.value()
        order = []
        while received:
            frame, length = Frame.parse_frame_header(memoryview(received[:9]))
            if frame.type == 0:
                order.append(frame.stream_id)
            received = received[9 + length:]
        self.assertEqual(order[:4], [first, second, first, second])


class TrailerTests(H2TestCase):
    """
    C{request.responseTrailers} are sent as a final HEADERS frame.
    """

    def test_trailersAfterBody(self):
        """
        Body, then the trailers ending the stream.
        """
        class GRPC(Resource):
            isLeaf = True

            def render(self, request):
                request.setHeader(b"content-type", b"application/grpc")
                request.responseTrailers = [(b"grpc-status", b"0"), (b"Grpc-Message", b"ok"),
                                            (b"connection", b"x")]
                return b"\x00\x00\x00\x00\x00"

        self.makeSite(resource=GRPC())
        client = self.client()
        response = client.responses[client.request(_get(method=b"POST"))]
        self.assertEqual(response.data, b"\x00" * 5)
        self.assertEqual(response.trailers, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
        self.assertTrue(response.ended)

    def test_trailersOnly(self):
        """
        No body: the head, then the trailers.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        streamID = client.request(_get(method=b"POST"))
        (request,) = self.resource.requests
        request.setHeader(b"content-type", b"application/grpc")
        request.responseTrailers = [(b"grpc-status", b"12")]
        request.finish()
        client.pump()
        response = client.responses[streamID]
        self.assertEqual(response.status, 200)
        self.assertEqual(response.data, b"")
        self.assertEqual(response.trailers, [(b"grpc-status", b"12")])
        self.assertTrue(response.ended)

    def test_statusInHead(self):
        """
        A response finished without a body or trailers is one HEADERS frame
        ending the stream, as gRPC's "trailers-only" answers must be: the
        status in the head, no empty DATA frame after it.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        streamID = client.request(_get(method=b"POST"))
        (request,) = self.resource.requests
        request.setHeader(b"content-type", b"application/grpc")
        request.setHeader(b"grpc-status", b"14")
        request.finish()
        client.pump()
        response = client.responses[streamID]
        self.assertTrue(response.endedWithHeaders)
        self.assertIn((b"grpc-status", b"14"), response.headers)
        # golb's own answer: dated, and no Server header
        self.assertIn(b"date", dict(response.headers))
        self.assertNotIn(b"server", dict(response.headers))
        self.assertEqual((response.data, response.trailers), (b"", None))

    def test_headAlone(self):
        """
        A head written without body bytes (the body comes later) goes out on
        the next turn of the reactor, without ending the stream.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        streamID = client.request(_get(method=b"POST"))
        (request,) = self.resource.requests
        request.write(b"")
        client.pump()
        self.assertNotIn(streamID, client.responses)
        self.clock.advance(0)
        client.pump()
        response = client.responses[streamID]
        self.assertFalse(response.endedWithHeaders)
        self.assertEqual(response.status, 200)
        request.write(b"later")
        request.finish()
        client.pump()
        self.assertEqual((response.data, response.ended), (b"later", True))

    def test_trailersWaitForWindow(self):
        """
        Trailers follow the body even when the body waited for the window.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client(settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 3},
                             ack=False)
        streamID = client.request(_get(method=b"POST"))
        (request,) = self.resource.requests
        request.responseTrailers = [(b"grpc-status", b"0")]
        request.write(b"abcdef")
        request.finish()
        client.pump()
        response = client.responses[streamID]
        self.assertEqual((response.data, response.trailers), (b"abc", None))
        client.conn.increment_flow_control_window(3, streamID)
        client.pump()
        self.assertEqual((response.data, response.trailers),
                         (b"abcdef", [(b"grpc-status", b"0")]))


class StreamingTests(H2TestCase):
    """
    gRPC requests reach their resource with their headers; their body
    flows through C{request.bodyStream}.
    """

    GRPC = [(b"content-type", b"application/grpc+proto"), (b"te", b"trailers")]

    def start(self, **kwargs):
        self.makeSite(resource=Recorder(hold=True))
        client = self.client(**kwargs)
        streamID = client.request(_get(method=b"POST", extra=self.GRPC), end=False)
        (request,) = self.resource.requests
        return client, streamID, request

    def test_isGRPC(self):
        """
        gRPC's content types, and only them.
        """
        for value in [b"application/grpc", b"application/grpc+proto",
                      b"application/GRPC;charset=x", b"application/grpc+json"]:
            self.assertTrue(isGRPC(value), value)
        for value in [None, b"", b"application/grpc-web", b"application/json",
                      b"application/grpcx"]:
            self.assertFalse(isGRPC(value), value)

    def test_earlyDispatch(self):
        """
        The resource gets the request before any body; the body arrives
        piece by piece, then the client's trailers.
        """
        client, streamID, request = self.start()
        self.assertEqual(request.content.read(), b"")
        body = request.bodyStream
        self.assertIsNotNone(body)
        receiver = Receiver()
        body.deliver(receiver)
        client.send(streamID, b"one")
        self.assertEqual(receiver.data, [b"one"])
        client.send(streamID, b"two")
        self.assertEqual(receiver.data, [b"one", b"two"])
        self.assertIsNone(receiver.done)
        client.conn.send_headers(streamID, [(b"x-client-trailer", b"1")], end_stream=True)
        client.pump()
        self.assertEqual(receiver.done, (None, [(b"x-client-trailer", b"1")]))
        self.assertEqual(request.bodyLength, 6)
        request.write(b"reply")
        request.responseTrailers = [(b"grpc-status", b"0")]
        request.finish()
        client.pump()
        response = client.responses[streamID]
        self.assertEqual((response.data, response.trailers, response.reset),
                         (b"reply", [(b"grpc-status", b"0")], None))
        self.assertEqual(self.channel.streams, {})

    def test_endedAtHeaders(self):
        """
        A gRPC request without a body gets a finished L{BodyStream}.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        client.request(_get(method=b"POST", extra=self.GRPC))
        (request,) = self.resource.requests
        receiver = Receiver()
        request.bodyStream.deliver(receiver)
        self.assertEqual(receiver.done, (None, []))

    def test_declaredLength(self):
        """
        The stream knows a declared length.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        client.request(_get(method=b"POST", extra=self.GRPC + [(b"content-length", b"5")]),
                       end=False)
        (request,) = self.resource.requests
        self.assertEqual(request.bodyStream.length, 5)

    def test_pausedStopsAcknowledging(self):
        """
        While the body stream is paused, received data is not acknowledged
        (the client's window stays used up); resuming acknowledges it.
        """
        client, streamID, request = self.start()
        receiver = Receiver()
        request.bodyStream.deliver(receiver)
        request.bodyStream.pauseProducing()
        window = H2Channel.initialWindowSize
        client.send(streamID, b"d" * 200000)
        self.assertEqual(client.conn.local_flow_control_window(streamID), window - 200000)
        self.assertEqual(receiver.data, [])
        request.bodyStream.resumeProducing()
        client.pump()
        self.assertEqual(b"".join(receiver.data), b"d" * 200000)
        self.assertEqual(client.conn.local_flow_control_window(streamID), window)

    def test_bufferedBeyondHighWaterPauses(self):
        """
        Without a receiver, the stream buffers up to its high-water mark,
        then stops acknowledging.
        """
        client, streamID, request = self.start()
        stream = self.channel.streams[streamID]
        client.send(streamID, b"e" * 200000)
        self.assertEqual(stream._unacked, 0)
        client.send(streamID, b"e" * 70000)
        # the frame crossing the BodyStream's high-water mark, and those
        # after it, are not acknowledged
        crossing = 200000 + 4 * 16384
        self.assertGreater(crossing, request.bodyStream.highWater)
        self.assertEqual(stream._unacked, 270000 - (crossing - 16384))
        receiver = Receiver()
        request.bodyStream.deliver(receiver)
        self.assertEqual(stream._unacked, 0)
        self.assertEqual(len(b"".join(receiver.data)), 270000)

    def test_clientReset(self):
        """
        A client resetting the stream fails the body stream and the
        request's C{notifyFinish}.
        """
        client, streamID, request = self.start()
        receiver = Receiver()
        request.bodyStream.deliver(receiver)
        finished = request.notifyFinish()
        client.conn.reset_stream(streamID, ErrorCodes.CANCEL)
        client.pump()
        self.failureResultOf(finished, ConnectionLost)
        reason, trailers = receiver.done
        self.assertTrue(reason.check(ConnectionLost))
        self.assertEqual(self.channel.streams, {})
        # later writes are ignored
        request.write(b"late")

    def test_responseEndsFirst(self):
        """
        A response ending while the client still sends resets the stream
        with NO_ERROR, and ends the body stream.
        """
        client, streamID, request = self.start()
        receiver = Receiver()
        request.bodyStream.deliver(receiver)
        request.responseTrailers = [(b"grpc-status", b"3")]
        request.finish()
        client.pump()
        response = client.responses[streamID]
        self.assertEqual(response.trailers, [(b"grpc-status", b"3")])
        self.assertEqual(response.reset, ErrorCodes.NO_ERROR)
        self.assertIsNotNone(receiver.done[0])

    def test_receiverGivesUp(self):
        """
        A receiver stopping the body stream has the rest dropped (and
        acknowledged).
        """
        client, streamID, request = self.start()
        receiver = Receiver()
        request.bodyStream.deliver(receiver)
        request.bodyStream.stopProducing()
        client.send(streamID, b"f" * 131072)
        self.assertEqual(receiver.data, [])
        self.assertEqual(client.conn.local_flow_control_window(streamID),
                         H2Channel.initialWindowSize)

    def test_streamedTooLarge(self):
        """
        A streamed gRPC body crossing C{maxBodyBytes} ends the call with
        C{RESOURCE_EXHAUSTED} (the request is told its client went away, so
        the proxy cancels the backend call); the client, still sending, is
        told to stop.
        """
        client, streamID, request = self.start()
        request.maxBodyBytes = 4
        finished = request.notifyFinish()
        client.send(streamID, b"12345")
        self.failureResultOf(finished, ConnectionLost)
        response = client.responses[streamID]
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"grpc-status"), [b"8"])
        self.assertEqual(response.reset, ErrorCodes.NO_ERROR)


class ResetTests(H2TestCase):
    """
    Resets by the client reach the request; resets by golb reach the
    client.
    """

    def test_clientResetInFlight(self):
        """
        A client resetting a stream whose response is pending errbacks the
        request's C{notifyFinish}; other streams go on.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        first = client.request(_get())
        second = client.request(_get())
        one, two = self.resource.requests
        finished = one.notifyFinish()
        client.conn.reset_stream(first, ErrorCodes.CANCEL)
        client.pump()
        failure = self.failureResultOf(finished, ConnectionLost)
        self.assertIn("CANCEL", str(failure.value))
        two.write(b"two")
        two.finish()
        client.pump()
        self.assertEqual(client.responses[second].data, b"two")

    def test_resetWhileBuffering(self):
        """
        A reset before the request is complete never reaches the resource.
        """
        client = self.client()
        streamID = client.request(_get(method=b"POST"), end=False)
        client.conn.reset_stream(streamID, ErrorCodes.CANCEL)
        client.pump()
        self.assertEqual(self.resource.requests, [])
        self.assertEqual(self.channel.streams, {})

    def test_loseConnectionResets(self):
        """
        A response cut short (the proxy closes the request's transport)
        resets the stream with INTERNAL_ERROR, and only that stream.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        streamID = client.request(_get())
        (request,) = self.resource.requests
        finished = request.notifyFinish()
        request.write(b"partial")
        request.channel.transport.loseConnection()
        client.pump()
        response = client.responses[streamID]
        self.assertEqual((response.data, response.reset),
                         (b"partial", ErrorCodes.INTERNAL_ERROR))
        self.failureResultOf(finished)
        self.assertFalse(self.transport.disconnecting)

    def test_rapidReset(self):
        """
        A flood of resets (HTTP/2 Rapid Reset) ends the connection with
        ENHANCE_YOUR_CALM.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        self.channel.resetBurst = 5
        self.channel._resetTokens = 5
        for _ in range(6):
            streamID = client.request(_get(), pump=False)
            client.conn.reset_stream(streamID, ErrorCodes.CANCEL)
        client.pump()
        self.assertEqual(client.goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_connectionLost(self):
        """
        Losing the connection fails every request in progress.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        client.request(_get())
        client.request(_get())
        finished = [request.notifyFinish() for request in self.resource.requests]
        self.channel.connectionLost(ConnectionLost("gone"))
        for d in finished:
            self.failureResultOf(d, ConnectionLost)
        self.assertEqual(self.site.openConnections, set())


class ConnectionTests(H2TestCase):
    """
    Draining and idle connections.
    """

    def test_drain(self):
        """
        Draining sends GOAWAY naming the last stream; the stream in
        progress finishes; a new stream is refused; then the connection
        closes.
        """
        self.makeSite(resource=Recorder(hold=True))
        client = self.client()
        streamID = client.request(_get())
        (request,) = self.resource.requests
        self.channel.drain()
        sent = self.transport.value()
        self.transport.clear()
        frame, length = Frame.parse_frame_header(memoryview(sent[:9]))
        frame.parse_body(memoryview(sent[9:9 + length]))
        self.assertIsInstance(frame, GoAwayFrame)
        self.assertEqual((frame.last_stream_id, frame.error_code), (streamID, 0))
        self.assertFalse(self.transport.disconnecting)
        late = client.request(_get())
        self.assertEqual(client.responses[late].reset, ErrorCodes.REFUSED_STREAM)
        self.assertEqual(len(self.resource.requests), 1)
        request.write(b"done")
        request.finish()
        client.pump()
        self.assertEqual(client.responses[streamID].data, b"done")
        self.assertTrue(client.responses[streamID].ended)
        self.assertTrue(self.transport.disconnecting)

    def test_drainIdle(self):
        """
        Draining a connection without streams closes it at once.
        """
        self.client()
        self.channel.drain()
        self.assertTrue(self.transport.disconnecting)

    def test_idleTimeout(self):
        """
        A connection without streams for the idle timeout gets GOAWAY and
        is closed; one with a stream in progress is not.
        """
        self.makeSite(resource=Recorder(hold=True), idleTimeout=30)
        client = self.client()
        client.request(_get())
        self.clock.advance(100)
        self.assertFalse(self.transport.disconnecting)
        request = self.resource.requests[0]
        request.finish()
        client.pump()
        self.clock.advance(29)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        client.pump()
        self.assertEqual(client.goaway.error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(H2Channel.abortTimeout)
        self.assertTrue(self.transport.disconnected)

    def test_clientGoAway(self):
        """
        A client's GOAWAY closes the connection.
        """
        client = self.client()
        client.conn.close_connection()
        client.pump()
        self.assertTrue(self.transport.disconnecting)


class SwitchingTests(H2TestCase):
    """
    L{SwitchingChannel}: HTTP/1.1 unless the connection starts HTTP/2.
    """

    def test_isTheDefault(self):
        """
        Golb's listeners use L{SwitchingChannel}.
        """
        self.assertIs(GolbSite.protocol, SwitchingChannel)

    def test_h2cPreface(self):
        """
        With C{h2c}, a connection starting with the preface (even split)
        becomes HTTP/2.
        """
        self.makeSite(protocol=SwitchingChannel, h2c=True)
        channel, transport = self.connect()
        self.assertEqual(self.site.openConnections, {channel})
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        data = client.data_to_send()
        channel.dataReceived(data[:5])
        self.assertIsNone(channel.h2Channel)
        channel.dataReceived(data[5:])
        self.assertIsInstance(channel.h2Channel, H2Channel)
        self.assertEqual(self.site.openConnections, {channel.h2Channel})
        self.assertIs(transport.producer, channel.h2Channel)
        response = H2Client(channel, transport, conn=client).get()
        self.assertEqual((response.status, response.data), (200, b"ok:"))
        channel.connectionLost(ConnectionLost())
        self.assertEqual(self.site.openConnections, set())

    def test_h2cStillSpeaksHTTP11(self):
        """
        With C{h2c}, HTTP/1.1 requests are served as usual.
        """
        self.makeSite(protocol=SwitchingChannel, h2c=True)
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        channel.dataReceived(b"Host: a\r\n\r\n")
        self.assertIsNone(channel.h2Channel)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.resource.requests[0].clientproto, b"HTTP/1.1")

    def test_prefaceWithoutH2c(self):
        """
        Without C{h2c}, the preface is a bad HTTP/1.1 request.
        """
        self.makeSite(protocol=SwitchingChannel)
        channel, transport = self.connect()
        channel.dataReceived(PREFACE)
        self.assertIsNone(channel.h2Channel)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))

    def test_alpn(self):
        """
        On TLS, a connection whose ALPN chose h2 becomes HTTP/2.
        """
        self.makeSite(protocol=SwitchingChannel)
        channel, transport = self.connect(secure=True)
        transport.negotiatedProtocol = b"h2"
        client = H2Client(channel, transport)
        self.assertIsInstance(channel.h2Channel, H2Channel)
        response = client.get()
        self.assertEqual(response.status, 200)
        self.assertEqual(self.resource.requests[0].scheme(), "https")

    def test_alpnHTTP11(self):
        """
        On TLS without h2 negotiated, HTTP/1.1.
        """
        self.makeSite(protocol=SwitchingChannel)
        channel, transport = self.connect(secure=True)
        transport.negotiatedProtocol = b"http/1.1"
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIsNone(channel.h2Channel)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))


# ---------------------------------------------------------------- loopback


class H2ClientProtocol(Protocol):
    """
    An h2 client over a real connection.
    """

    def __init__(self):
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.responses: Dict[int, Response] = {}
        self.waiting: Dict[int, defer.Deferred] = {}
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data):
        for event in self.conn.receive_data(data):
            streamID = getattr(event, "stream_id", None)
            if not streamID:
                continue
            response = self.responses.setdefault(streamID, Response())
            if isinstance(event, h2.events.ResponseReceived):
                response.headers = event.headers
            elif isinstance(event, h2.events.DataReceived):
                response.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, streamID)
            elif isinstance(event, h2.events.TrailersReceived):
                response.trailers = event.headers
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                response.ended = True
                d = self.waiting.pop(streamID, None)
                if d is not None:
                    d.callback(response)
        self.transport.write(self.conn.data_to_send())

    def connectionLost(self, reason=None):
        self.lost.callback(None)

    def request(self, headers, body: bytes = b"") -> defer.Deferred:
        streamID = self.conn.get_next_available_stream_id()
        self.conn.send_headers(streamID, headers, end_stream=not body)
        if body:
            self.conn.send_data(streamID, body, end_stream=True)
        self.transport.write(self.conn.data_to_send())
        d = self.waiting[streamID] = defer.Deferred()
        return d


@defer.inlineCallbacks
def h2Connect(testCase, endpoint):
    client = H2ClientProtocol()
    yield connectProtocol(endpoint, client)

    def close():
        if client.transport.connected:
            client.transport.abortConnection()
            return client.lost

    testCase.addCleanup(close)
    return client


def _yaml(backendPort: int, extra: str = "") -> str:
    return f"""\
listeners: [{{name: web, address: "127.0.0.1:0"{extra}}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{backendPort}"}}]
"""


class LoopbackTests(TestCase):
    """
    HTTP/2 over real sockets, through golb's routing and proxy to a
    backend.
    """

    @defer.inlineCallbacks
    def test_h2c(self):
        """
        With C{h2c}, an HTTP/2 client with prior knowledge is proxied to the
        backend; HTTP/1.1 on the same listener still works.
        """
        backend, _ = listenBackend(self)
        _, port, site = listenGolb(self, _yaml(backend.getHost().port), h2c=True)
        number = port.getHost().port
        client = yield h2Connect(self, TCP4ClientEndpoint(reactor, "127.0.0.1", number))
        response = yield client.request(_get(b"/hello", authority=b"site.example"))
        self.assertEqual(response.status, 200)
        self.assertIn(b"GET /hello HTTP/1.1", response.data)
        self.assertIn(b"X-Forwarded-Proto: http", response.data)
        response = yield client.request(_get(b"/post", method=b"POST",
                                             authority=b"site.example"), b"some body")
        self.assertTrue(response.data.endswith(b"\n\nsome body"), response.data)
        raw = yield rawRequest(self, number, b"GET /h1 HTTP/1.1\r\nHost: a\r\n"
                               b"Connection: close\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 "), raw)
        self.assertIn(b"GET /h1 HTTP/1.1", raw)

    @defer.inlineCallbacks
    def test_noH2c(self):
        """
        Without C{h2c}, the HTTP/2 preface gets HTTP/1.1's 400.
        """
        backend, _ = listenBackend(self)
        _, port, _ = listenGolb(self, _yaml(backend.getHost().port))
        raw = yield rawRequest(self, port.getHost().port, PREFACE)
        self.assertTrue(raw.startswith(b"HTTP/1.1 400 "), raw)

    @defer.inlineCallbacks
    def test_alpnH2(self):
        """
        A TLS listener offering h2 serves an ALPN h2 client over HTTP/2,
        with https as the request's scheme.
        """
        certs = ServerPKI(self.mktemp())
        backend, _ = listenBackend(self)
        config = parseConfig(_yaml(backend.getHost().port), "test.yaml")
        golb = Golb(config, reactor=reactor)
        self.addCleanup(golb.close)
        serverTLS = ServerTLS(certs.tlsConfig(alpn=("h2", "http/1.1")), "web", reactor)
        site = listenerSite(golb, config.listeners[0], reactor)
        port = yield listenTLS(self, serverTLS, site)
        endpoint = wrapClientTLS(
            ClientTLS(serverName="a.example", ca=certs.pki.ca.cert, alpn=[b"h2"]),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        client = yield h2Connect(self, endpoint)
        response = yield client.request(_get(b"/tls", scheme=b"https", authority=b"a.example"))
        self.assertEqual(client.transport.negotiatedProtocol, b"h2")
        self.assertEqual(response.status, 200)
        self.assertIn(b"GET /tls HTTP/1.1", response.data)
        self.assertIn(b"X-Forwarded-Proto: https", response.data)
        self.assertIn(b"Host: a.example", response.data)

    @defer.inlineCallbacks
    def test_alpnClientCertificate(self):
        """
        Over HTTP/2 too, a request knows the client certificate verified
        on its connection.
        """
        certs = ServerPKI(self.mktemp())
        serverTLS = ServerTLS(
            certs.tlsConfig(alpn=("h2",), client_auth=ClientAuth(certs.pki.ca.cert, True)),
            "web", reactor,
        )
        port = yield listenTLS(self, serverTLS)
        endpoint = wrapClientTLS(
            ClientTLS(serverName="a.example", ca=certs.pki.ca.cert, alpn=[b"h2"],
                      cert=certs.client.cert, key=certs.client.key),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        client = yield h2Connect(self, endpoint)
        first = yield client.request(_get(scheme=b"https", authority=b"a.example"))
        second = yield client.request(_get(scheme=b"https", authority=b"a.example"))
        self.assertEqual(first.data, b"https CN=alice,O=golb tests")
        self.assertEqual(second.data, first.data)
