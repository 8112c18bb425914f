"""
Tests for L{golb.upstream} and its parser L{golb._http11client}.

Integration tests talk to scripted backends on loopback port 0; timeout tests
use a L{MemoryReactorClock} and L{StringTransport}.
"""

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    inlineCallbacks,
)
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from golb._http11client import (
    BodyParseError,
    HeadParseError,
    ResponseParser,
)
from golb.errors import GolbError
from golb.upstream import (
    ConnectFailed,
    InvalidResponse,
    ReadTimeout,
    ResponseHeaderTimeout,
    UpstreamBodyError,
    UpstreamPool,
    UpstreamRequest,
    UpstreamReset,
    UpstreamResponse,
    UpstreamTLSFailed,
)

# ---------------------------------------------------------------- helpers


class Recorder:
    """
    A parser delegate that records what it is told.
    """

    def __init__(self):
        self.events = []
        self.body = []
        self.finished = None

    def informationalReceived(self, code, phrase, headers):
        self.events.append(("info", code, phrase, headers))

    def headReceived(self, version, code, phrase, headers, length, chunked):
        self.events.append(("head", version, code, phrase, headers, length, chunked))

    def bodyDataReceived(self, data):
        self.body.append(data)

    def bodyFinished(self, extra):
        self.finished = extra

    def result(self):
        return self.events, b"".join(self.body), self.finished


def parse(data, expectsNoBody=False, pieces=None):
    """
    Feed C{data} to a new parser (in C{pieces} when given).

    @return: the recorder and the parser.
    """
    recorder = Recorder()
    parser = ResponseParser(recorder, expectsNoBody)
    for piece in pieces if pieces is not None else [data]:
        parser.feed(piece)
    return recorder, parser


class BodyCollector:
    """
    A body receiver that collects data and fires C{done}.
    """

    def __init__(self):
        self.data = []
        self.reason = None
        self.done = Deferred()

    def dataReceived(self, data):
        self.data.append(data)

    def bodyDone(self, reason):
        self.reason = reason
        self.done.callback(None)

    @property
    def body(self):
        return b"".join(self.data)


def readBody(response):
    """
    Collect C{response}'s body.

    @return: a Deferred firing with the body, or failing with the body error.
    """
    collector = BodyCollector()
    response.deliverBody(collector)

    def finished(_):
        if collector.reason is not None:
            return collector.reason
        return collector.body

    return collector.done.addCallback(finished)


class ServerRequest:
    """
    A request as the scripted backend saw it.
    """

    def __init__(self, method, target, headers, body, number):
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.number = number

    def header(self, name):
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class ScriptedServer(Protocol):
    """
    A backend that parses requests (Content-Length bodies only) and hands
    each to C{factory.handler(server, request)}; in C{echo} mode it echoes.
    """

    echo = False

    def connectionMade(self):
        self.factory.connections.append(self)
        self.buf = b""
        self.count = 0
        self.lost = Deferred()
        self.isLost = False

    def dataReceived(self, data):
        if self.echo:
            self.transport.write(data)
            return
        self.buf += data
        while not self.echo:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].split(b"\r\n")
            method, target, _ = lines[0].split(b" ")
            headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
            length = 0
            for key, value in headers:
                if key.lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self.count += 1
            self.factory.requests.append(ServerRequest(method, target, headers, body, self.count))
            self.factory.handler(self, self.factory.requests[-1])

    def connectionLost(self, reason):
        self.isLost = True
        self.lost.callback(None)


def ok(body=b"hello", extra=b""):
    """
    A handler answering 200 with C{body} and a Content-Length.
    """

    def handler(server, request):
        server.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))

    return handler


class LoopbackMixin:
    """
    Start scripted backends and pools, and clean them up.
    """

    def startServer(self, handler, tls=None):
        """
        Listen on loopback port 0 with a L{ScriptedServer} (over TLS with
        C{tls} server options).

        @return: the factory (with C{connections}, C{requests}, C{port}).
        """
        factory = Factory.forProtocol(ScriptedServer)
        factory.handler = handler
        factory.connections = []
        factory.requests = []
        if tls is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        factory.port = port.getHost().port
        self.addCleanup(self._stopServer, port, factory)
        return factory

    @inlineCallbacks
    def _stopServer(self, port, factory):
        for server in factory.connections:
            if not server.isLost:
                server.transport.abortConnection()
        yield DeferredList([server.lost for server in factory.connections])
        yield port.stopListening()

    def makePool(self, server, **kwargs):
        """
        A pool for C{server}, closed at cleanup.
        """
        pool = UpstreamPool(reactor, "127.0.0.1", server.port, **kwargs)
        self.addCleanup(pool.close)
        return pool


def get(target=b"/", method=b"GET", **kwargs):
    """
    An L{UpstreamRequest} with a Host header.
    """
    return UpstreamRequest(method, target, [(b"Host", b"backend")], **kwargs)


# ---------------------------------------------------------------- parser


class ParserTests(SynchronousTestCase):
    """
    Tests for L{ResponseParser}.
    """

    def test_contentLength(self):
        """
        A Content-Length body is delivered and the connection is reusable.
        """
        recorder, parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
        events, body, finished = recorder.result()
        self.assertEqual(
            events,
            [("head", b"HTTP/1.1", 200, b"OK", [(b"Content-Length", b"5"), (b"X-A", b"b")],
              5, False)])
        self.assertEqual(body, b"hello")
        self.assertEqual(finished, b"")
        self.assertTrue(parser.keepAlive)

    def test_chunked(self):
        """
        Chunked bodies are de-chunked; extensions and trailers are skipped.
        """
        recorder, parser = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\nA \r\n, world!!!\r\n0\r\nTrailer: x\r\n\r\n")
        events, body, finished = recorder.result()
        self.assertEqual(events[0][5:], (None, True))
        self.assertEqual(body, b"hello, world!!!")
        self.assertEqual(finished, b"")
        self.assertTrue(parser.keepAlive)

    def test_extraBytes(self):
        """
        Bytes after a complete response are reported to C{bodyFinished}.
        """
        recorder, _ = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiGARBAGE")
        self.assertEqual(recorder.result()[1:], (b"hi", b"GARBAGE"))

    def test_statusLineVariants(self):
        """
        An empty reason phrase is accepted, with or without the space.
        """
        for line in (b"HTTP/1.1 204 ", b"HTTP/1.1 204"):
            recorder, _ = parse(line + b"\r\n\r\n")
            self.assertEqual(recorder.events[0][1:4], (b"HTTP/1.1", 204, b""))

    def test_invalidHeads(self):
        """
        Garbage status lines, bad codes, bare CR/LF, obs-fold, invalid names
        and conflicting Content-Length values raise L{HeadParseError}.
        """
        for head in [
            b"garbage\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 099 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nName : x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ]:
            self.assertRaises(HeadParseError, parse, head)

    def test_headTooLarge(self):
        """
        A head over 64 KiB raises L{HeadParseError}, even before it ends.
        """
        big = b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000
        self.assertRaises(HeadParseError, parse, big)
        self.assertRaises(HeadParseError, parse, big + b"\r\n\r\n")

    def test_duplicateIdenticalContentLength(self):
        """
        Identical duplicate Content-Length values are accepted.
        """
        recorder, _ = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2, 2\r\n\r\nok")
        self.assertEqual(recorder.result()[1:], (b"ok", b""))

    def test_contentLengthAndChunked(self):
        """
        With both Content-Length and chunked, chunked wins and the connection
        is not reusable.
        """
        recorder, parser = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n")
        self.assertEqual(recorder.result()[1:], (b"ok", b""))
        self.assertFalse(parser.keepAlive)

    def test_untilClose(self):
        """
        Without framing, or with a transfer coding other than chunked last,
        the body runs until the connection closes.
        """
        for head in [b"HTTP/1.1 200 OK\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"]:
            recorder, parser = parse(head + b"abc")
            parser.feed(b"def")
            self.assertIsNone(recorder.finished)
            self.assertTrue(parser.connectionClosed())
            self.assertEqual(recorder.result()[1:], (b"abcdef", b""))
            self.assertFalse(parser.keepAlive)

    def test_bodiless(self):
        """
        HEAD responses and 204/304 have no body whatever their headers say.
        """
        recorder, parser = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", expectsNoBody=True)
        self.assertEqual(recorder.events[0][5], 0)
        self.assertEqual(recorder.finished, b"")
        self.assertTrue(parser.keepAlive)
        for code in (b"204", b"304"):
            recorder, _ = parse(b"HTTP/1.1 " + code + b" X\r\nContent-Length: 9\r\n\r\n")
            self.assertEqual(recorder.finished, b"")

    def test_keepAliveRules(self):
        """
        HTTP/1.1 is persistent unless "Connection: close"; HTTP/1.0 only with
        "Connection: keep-alive".
        """
        cases = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n", False),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
            (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        ]
        for data, keepAlive in cases:
            self.assertEqual(parse(data)[1].keepAlive, keepAlive, data)

    def test_informational(self):
        """
        1xx responses (but 101) are reported and parsing goes on.
        """
        recorder, _ = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        events, body, _ = recorder.result()
        self.assertEqual([e[:2] for e in events],
                         [("info", 100), ("info", 103), ("head", b"HTTP/1.1")])
        self.assertEqual(events[1][3], [(b"Link", b"</a>")])
        self.assertEqual(body, b"x")

    def test_switching(self):
        """
        A 101 head stops parsing; later bytes collect in C{extra}.
        """
        recorder, parser = parse(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\nabc")
        parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(recorder.events[0][2], 101)
        self.assertIsNone(recorder.finished)
        self.assertEqual(parser.extra, b"abcHTTP/1.1 200 OK\r\n\r\n")

    def test_badChunks(self):
        """
        Invalid hex, negative, huge or overlong chunk sizes and missing CRLF
        after chunk data raise L{BodyParseError}.
        """
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        for body in [b"zz\r\n", b"-1\r\n", b"0x5\r\n", b"\r\n", b"8000000000000000\r\n",
                     b"1" * 17 + b"\r\n", b"2\r\nokXY", b"2\r\nok\n0\r\n\r\n",
                     b"1" * 5000]:
            self.assertRaises(BodyParseError, parse, head + body)

    def test_stop(self):
        """
        After C{stop}, bytes are ignored.
        """
        recorder, parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        parser.stop()
        parser.feed(b"cde")
        self.assertEqual(recorder.result()[1:], (b"ab", None))


def _chunkedBody(chunks):
    return b"".join(b"%x;e=1\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\nT: 1\r\n\r\n"


def _cleanValue(value):
    return value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"").strip(b" \t")


@st.composite
def responses(draw):
    """
    A valid response (with optional 1xx) and a list of split points.
    """
    headers = draw(st.lists(
        st.tuples(st.sampled_from([b"X-A", b"set-cookie", b"Vary", b"ETag"]),
                  st.binary(max_size=20).map(_cleanValue)),
        max_size=5))
    chunks = draw(st.lists(st.binary(max_size=40), max_size=6))
    chunked = draw(st.booleans())
    data = b""
    if draw(st.booleans()):
        data += b"HTTP/1.1 100 Continue\r\n\r\n"
    data += b"HTTP/1.1 200 OK\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    body = b"".join(chunks)
    if chunked:
        data += b"Transfer-Encoding: chunked\r\n\r\n" + _chunkedBody(chunks)
    else:
        data += b"Content-Length: %d\r\n\r\n" % (len(body),) + body
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return data, cuts


class ParserPropertyTests(SynchronousTestCase):
    """
    Property tests for L{ResponseParser}.
    """

    @settings(max_examples=300, deadline=None)
    @given(responses())
    def test_anySplitSameResult(self, example):
        """
        However C{dataReceived} chunks a valid response, the parser reports
        the same head, body and end.
        """
        data, cuts = example
        whole, _ = parse(data)
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        split, _ = parse(data, pieces=pieces)
        self.assertEqual(split.result(), whole.result())
        self.assertEqual(whole.finished, b"")


# ---------------------------------------------------------------- loopback


class PoolTests(LoopbackMixin, TestCase):
    """
    L{UpstreamPool} against real loopback backends.
    """

    @inlineCallbacks
    def test_getContentLength(self):
        """
        A GET is answered with the response head, then the body; the request
        goes out with the headers as given.
        """
        server = self.startServer(ok(b"hello world"))
        pool = self.makePool(server)
        response = yield pool.request(UpstreamRequest(
            b"GET", b"/a?b=1", [(b"Host", b"x"), (b"X-Mixed-Case", b"1"), (b"accept", b"*/*")]))
        self.assertIsInstance(response, UpstreamResponse)
        verifyObject(IPushProducer, response)
        self.assertEqual((response.version, response.code, response.phrase),
                         (b"HTTP/1.1", 200, b"OK"))
        self.assertEqual(response.length, 11)
        self.assertFalse(response.chunked)
        body = yield readBody(response)
        self.assertEqual(body, b"hello world")
        request = server.requests[0]
        self.assertEqual((request.method, request.target), (b"GET", b"/a?b=1"))
        self.assertEqual(request.headers,
                         [(b"Host", b"x"), (b"X-Mixed-Case", b"1"), (b"accept", b"*/*")])
        self.assertEqual((pool.idleCount, pool.activeCount), (1, 0))

    @inlineCallbacks
    def test_postBytes(self):
        """
        A bytes body is sent with its Content-Length (any given framing
        header is replaced); a bodiless POST says "Content-Length: 0".
        """
        def echo(server, request):
            server.transport.write(
                b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s"
                % (len(request.body), request.body))

        server = self.startServer(echo)
        pool = self.makePool(server)
        response = yield pool.request(UpstreamRequest(
            b"POST", b"/", [(b"Host", b"x"), (b"Transfer-Encoding", b"chunked")],
            body=b"payload"))
        self.assertEqual(response.code, 201)
        self.assertEqual((yield readBody(response)), b"payload")
        self.assertEqual(server.requests[0].headers,
                         [(b"Host", b"x"), (b"Content-Length", b"7")])
        response = yield pool.request(UpstreamRequest(b"PUT", b"/", [(b"Host", b"x")]))
        self.assertEqual((yield readBody(response)), b"")
        self.assertEqual(server.requests[1].header(b"content-length"), b"0")
        self.assertEqual(pool.totalConnectionsMade, 1)

    @inlineCallbacks
    def test_postFile(self):
        """
        A file body is rewound and streamed in full (here 3 MiB).
        """
        payload = bytes(range(256)) * (3 * 4096)

        def echoLength(server, request):
            body = b"%d %d" % (len(request.body), request.body == payload)
            server.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                   % (len(body), body))

        server = self.startServer(echoLength)
        pool = self.makePool(server)
        bodyFile = io.BytesIO(payload)
        bodyFile.seek(100)
        response = yield pool.request(get(b"/up", b"POST", body=bodyFile,
                                          bodyLength=len(payload)))
        self.assertEqual((yield readBody(response)), b"%d 1" % (len(payload),))
        self.assertEqual(pool.idleCount, 1)

    @inlineCallbacks
    def test_chunkedResponse(self):
        """
        A chunked response is delivered de-chunked, then the connection is
        reused.
        """
        def chunked(server, request):
            server.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"3\r\nabc\r\n")
            server.transport.write(b"4;x=y\r\ndefg\r\n0\r\n\r\n")

        server = self.startServer(chunked)
        pool = self.makePool(server)
        for _ in range(3):
            response = yield pool.request(get())
            self.assertTrue(response.chunked)
            self.assertIsNone(response.length)
            self.assertEqual((yield readBody(response)), b"abcdefg")
        self.assertEqual(pool.totalConnectionsMade, 1)

    @inlineCallbacks
    def test_sequentialReuse(self):
        """
        Many sequential requests use one connection.
        """
        server = self.startServer(ok())
        pool = self.makePool(server)
        for i in range(50):
            response = yield pool.request(get(b"/%d" % (i,)))
            self.assertEqual((yield readBody(response)), b"hello")
        self.assertEqual(pool.totalConnectionsMade, 1)
        self.assertEqual(len(server.connections), 1)
        self.assertEqual(server.connections[0].count, 50)

    @inlineCallbacks
    def test_maxIdle(self):
        """
        No more than C{maxIdle} connections are kept; the others are closed.
        """
        server = self.startServer(ok())
        pool = self.makePool(server, maxIdle=1)
        responses = yield DeferredList([pool.request(get()), pool.request(get())],
                                       fireOnOneErrback=True)
        for _, response in responses:
            yield readBody(response)
        self.assertEqual(pool.totalConnectionsMade, 2)
        self.assertEqual(pool.idleCount, 1)
        self.assertEqual(pool.activeCount, 0)
        yield DeferredList([server.lost for server in server.connections], fireOnOneCallback=True)

    @inlineCallbacks
    def test_serverClosesIdle(self):
        """
        An idle connection that the backend closes leaves the pool; the next
        request opens a new one.
        """
        def closing(server, request):
            ok()(server, request)
            server.transport.loseConnection()

        server = self.startServer(closing)
        pool = self.makePool(server)
        response = yield pool.request(get())
        yield readBody(response)
        # the response has keep-alive framing: the pool kept it until the close
        if pool.idleCount:
            yield pool._idle[0].whenLost()
        self.assertEqual(pool.idleCount, 0)
        response = yield pool.request(get())
        self.assertEqual((yield readBody(response)), b"hello")
        self.assertEqual(pool.totalConnectionsMade, 2)

    @inlineCallbacks
    def test_staleRetry(self):
        """
        When the backend closes a reused connection as the next request
        arrives, the request is retried once on a new connection, with its
        body.
        """
        def closeSecond(server, request):
            if request.number == 2:
                server.transport.abortConnection()
            else:
                body = request.body or b"hello"
                server.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                       % (len(body), body))

        server = self.startServer(closeSecond)
        pool = self.makePool(server)
        response = yield pool.request(get())
        yield readBody(response)
        response = yield pool.request(get(b"/", b"POST", body=io.BytesIO(b"again"),
                                          bodyLength=5))
        self.assertEqual((yield readBody(response)), b"again")
        self.assertEqual(pool.totalConnectionsMade, 2)
        self.assertEqual([r.number for r in server.requests], [1, 2, 1])

    @inlineCallbacks
    def test_freshConnectionResetNotRetried(self):
        """
        A new connection closed before any response byte fails with
        L{UpstreamReset}; it is not retried.
        """
        server = self.startServer(lambda s, r: s.transport.loseConnection())
        pool = self.makePool(server)
        failure = yield self.assertFailure(pool.request(get()), UpstreamReset)
        self.assertTrue(failure.requestSent)
        self.assertEqual(failure.code, "upstream-reset")
        self.assertEqual(pool.totalConnectionsMade, 1)

    @inlineCallbacks
    def test_connectRefused(self):
        """
        A refused connection fails with L{ConnectFailed} saying so.
        """
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        pool = UpstreamPool(reactor, "127.0.0.1", number)
        self.addCleanup(pool.close)
        error = yield self.assertFailure(pool.request(get()), ConnectFailed)
        self.assertIn("refused", error.message)
        self.assertFalse(error.requestSent)
        self.assertEqual((error.code, error.status), ("connect-failure", 502))
        self.assertIsInstance(error, GolbError)

    @inlineCallbacks
    def test_midHeadClose(self):
        """
        A backend that closes in the middle of the head causes
        L{UpstreamReset}.
        """
        def partial(server, request):
            server.transport.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            server.transport.loseConnection()

        server = self.startServer(partial)
        pool = self.makePool(server)
        error = yield self.assertFailure(pool.request(get()), UpstreamReset)
        self.assertIn("middle of the response head", error.message)

    @inlineCallbacks
    def test_midBodyClose(self):
        """
        A backend that closes in the middle of the body ends the body with an
        L{UpstreamReset} failure.
        """
        def partial(server, request):
            server.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            server.transport.loseConnection()

        server = self.startServer(partial)
        pool = self.makePool(server)
        response = yield pool.request(get())
        collector = BodyCollector()
        response.deliverBody(collector)
        yield collector.done
        self.assertEqual(collector.body, b"abc")
        collector.reason.trap(UpstreamReset)
        self.assertEqual(pool.idleCount, 0)

    @inlineCallbacks
    def test_badChunkInBody(self):
        """
        Invalid chunk framing ends the body with L{UpstreamBodyError} and
        drops the connection.
        """
        server = self.startServer(lambda s, r: s.transport.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
        pool = self.makePool(server)
        response = yield pool.request(get())
        yield self.assertFailure(readBody(response), UpstreamBodyError)
        self.assertEqual((pool.idleCount, pool.activeCount), (0, 0))

    @inlineCallbacks
    def test_closeDelimited(self):
        """
        An HTTP/1.0 response without Content-Length is read until the close
        and the connection is not kept.
        """
        def old(server, request):
            server.transport.write(b"HTTP/1.0 200 OK\r\n\r\nold style")
            server.transport.loseConnection()

        server = self.startServer(old)
        pool = self.makePool(server)
        response = yield pool.request(get())
        self.assertIsNone(response.length)
        self.assertEqual((yield readBody(response)), b"old style")
        self.assertEqual(pool.idleCount, 0)

    @inlineCallbacks
    def test_garbageStatusLine(self):
        """
        A garbage status line fails with L{InvalidResponse}.
        """
        server = self.startServer(lambda s, r: s.transport.write(b"SSH-2.0-OpenSSH\r\n\r\n"))
        pool = self.makePool(server)
        error = yield self.assertFailure(pool.request(get()), InvalidResponse)
        self.assertEqual(error.code, "invalid-response")
        self.assertEqual(pool.activeCount, 0)

    @inlineCallbacks
    def test_conflictingContentLength(self):
        """
        Differing duplicate Content-Length values fail with
        L{InvalidResponse}.
        """
        server = self.startServer(lambda s, r: s.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"))
        pool = self.makePool(server)
        yield self.assertFailure(pool.request(get()), InvalidResponse)

    @inlineCallbacks
    def test_bodilessFraming(self):
        """
        HEAD, 204 and 304 responses have no body even with a Content-Length,
        and the connection stays usable for the next request.
        """
        def bodiless(server, request):
            if request.method == b"HEAD":
                server.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif request.target == b"/204":
                server.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif request.target == b"/304":
                server.transport.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n")
            else:
                ok(b"after")(server, request)

        server = self.startServer(bodiless)
        pool = self.makePool(server)
        for request in [get(method=b"HEAD"), get(b"/204"), get(b"/304")]:
            response = yield pool.request(request)
            self.assertEqual(response.length, 0)
            self.assertEqual((yield readBody(response)), b"")
        response = yield pool.request(get())
        self.assertEqual((yield readBody(response)), b"after")
        self.assertEqual(pool.totalConnectionsMade, 1)

    @inlineCallbacks
    def test_repeatedHeaders(self):
        """
        Repeated headers (Set-Cookie) are kept in order, with their case.
        """
        server = self.startServer(ok(b"", extra=(
            b"Set-Cookie: a=1\r\nX-Custom-HEADER: v\r\nset-cookie: b=2\r\nSet-Cookie: c=3\r\n")))
        pool = self.makePool(server)
        response = yield pool.request(get())
        yield readBody(response)
        self.assertEqual(response.headers, [
            (b"Content-Length", b"0"), (b"Set-Cookie", b"a=1"), (b"X-Custom-HEADER", b"v"),
            (b"set-cookie", b"b=2"), (b"Set-Cookie", b"c=3")])
        self.assertEqual(response.getHeader(b"x-custom-header"), b"v")

    @inlineCallbacks
    def test_informational(self):
        """
        100 Continue and 103 Early Hints go to C{onInformational}; the
        Deferred fires with the final response.
        """
        def hints(server, request):
            server.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            server.transport.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
            ok(b"final")(server, request)

        seen = []
        server = self.startServer(hints)
        pool = self.makePool(server)
        response = yield pool.request(get(onInformational=lambda *a: seen.append(a)))
        self.assertEqual(response.code, 200)
        self.assertEqual((yield readBody(response)), b"final")
        self.assertEqual(seen, [(100, b"Continue", []),
                                (103, b"Early Hints", [(b"Link", b"</s.css>")])])

    @inlineCallbacks
    def test_switchProtocolTunnel(self):
        """
        A 101 response can become a tunnel: bytes after the head come first,
        then the tunnel carries bytes both ways and reports the close.
        """
        def upgrade(server, request):
            server.echo = True
            server.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                                   b"Connection: Upgrade\r\n\r\nwelcome")

        server = self.startServer(upgrade)
        pool = self.makePool(server)
        response = yield pool.request(UpstreamRequest(
            b"GET", b"/ws", [(b"Host", b"x"), (b"Connection", b"Upgrade"),
                             (b"Upgrade", b"echo")]))
        self.assertEqual(response.code, 101)
        tunnel = response.switchProtocol()
        self.assertEqual((pool.activeCount, pool.idleCount), (0, 0))
        received = []
        lost = Deferred()
        echoed = Deferred()

        def onData(data):
            received.append(data)
            if b"".join(received) == b"welcomeping":
                echoed.callback(None)

        tunnel.setReceiver(onData, lambda reason: lost.callback([reason]))
        tunnel.write(b"ping")
        yield echoed
        tunnel.loseConnection()
        [reason] = yield lost
        reason.trap(ConnectionDone)
        self.assertRaises(RuntimeError, response.switchProtocol)

    @inlineCallbacks
    def test_pauseResumeLoopback(self):
        """
        A paused body receives nothing more until resumed, then completes.
        """
        release = Deferred()

        def twoParts(server, request):
            server.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
            release.addCallback(lambda _: server.transport.write(b"def"))

        server = self.startServer(twoParts)
        pool = self.makePool(server)
        response = yield pool.request(get())
        firstData = Deferred()
        collector = BodyCollector()
        collector.dataReceived = lambda data: (collector.data.append(data),
                                               firstData.called or firstData.callback(None))
        response.deliverBody(collector)
        if not collector.data:
            yield firstData
        response.pauseProducing()
        release.callback(None)
        connection = [p for p in pool._active][0]
        self.assertTrue(connection._transportPaused)
        self.assertEqual(collector.body, b"abc")
        response.resumeProducing()
        yield collector.done
        self.assertEqual(collector.body, b"abcdef")
        self.assertIsNone(collector.reason)
        self.assertEqual(pool.idleCount, 1)

    @inlineCallbacks
    def test_cancelBeforeHead(self):
        """
        Cancelling before the head arrives aborts the connection (it is not
        pooled) and fails with L{CancelledError}.
        """
        arrived = Deferred()
        server = self.startServer(lambda s, r: arrived.callback(None))
        pool = self.makePool(server)
        d = pool.request(get())
        yield arrived
        d.cancel()
        self.failureResultOf(d, CancelledError)
        yield server.connections[0].lost
        self.assertEqual((pool.idleCount, pool.activeCount), (0, 0))

    @inlineCallbacks
    def test_cancelWhileConnecting(self):
        """
        Cancelling while connecting stops the attempt.
        """
        server = self.startServer(ok())
        pool = self.makePool(server)
        d = pool.request(get())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(pool.activeCount, 0)
        yield pool.close()

    @inlineCallbacks
    def test_closeLeavesNothing(self):
        """
        C{close} closes idle connections, aborts active ones (failing their
        requests and bodies) and fires once all are gone; later requests fail.
        """
        def handler(server, request):
            if request.target == b"/partial":
                server.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
            elif request.target == b"/ok":
                ok()(server, request)

        server = self.startServer(handler)
        pool = self.makePool(server)
        response = yield pool.request(get(b"/ok"))
        yield readBody(response)
        partial = yield pool.request(get(b"/partial"))
        body = readBody(partial)
        waiting = pool.request(get(b"/never"))
        while len(server.requests) < 3:
            yield _turn()
        self.assertEqual((pool.idleCount, pool.activeCount), (0, 2))
        yield pool.close()
        self.assertEqual((pool.idleCount, pool.activeCount), (0, 0))
        self.assertFalse(pool._connections)
        self.failureResultOf(body, ConnectionAborted)
        self.failureResultOf(waiting, UpstreamReset)
        self.failureResultOf(pool.request(get()), ConnectFailed)
        yield DeferredList([s.lost for s in server.connections])

    @inlineCallbacks
    def test_closeCachedConnections(self):
        """
        C{closeCachedConnections} closes idle connections and fires once they
        are gone; the pool stays usable.
        """
        server = self.startServer(ok())
        pool = self.makePool(server)
        response = yield pool.request(get())
        yield readBody(response)
        yield pool.closeCachedConnections()
        self.assertEqual(pool.idleCount, 0)
        yield server.connections[0].lost
        response = yield pool.request(get())
        self.assertEqual((yield readBody(response)), b"hello")


def _testCertificate():
    """
    Twisted's test certificate (self-signed, for "localhost") and key.
    """
    import twisted.test

    pem = FilePath(twisted.test.__file__).sibling("server.pem").getContent()
    return ssl.PrivateCertificate.loadPEM(pem)


class TLSPoolTests(LoopbackMixin, TestCase):
    """
    L{UpstreamPool} over TLS.
    """

    @inlineCallbacks
    def test_tlsRequests(self):
        """
        With a TLS creator, requests go over verified TLS and reuse the
        connection.
        """
        certificate = _testCertificate()
        server = self.startServer(ok(b"secret"), tls=certificate.options())
        creator = ssl.optionsForClientTLS("localhost", trustRoot=certificate)
        pool = self.makePool(server, tls=creator)
        for _ in range(3):
            response = yield pool.request(get())
            self.assertEqual((yield readBody(response)), b"secret")
        self.assertEqual(pool.totalConnectionsMade, 1)

    @inlineCallbacks
    def test_tlsVerificationFails(self):
        """
        A certificate that does not verify fails with L{UpstreamTLSFailed}
        (a L{ConnectFailed}); nothing was sent.
        """
        certificate = _testCertificate()
        server = self.startServer(ok(), tls=certificate.options())
        for creator in [ssl.optionsForClientTLS("localhost"),
                        ssl.optionsForClientTLS("other.example", trustRoot=certificate)]:
            pool = self.makePool(server, tls=creator)
            error = yield self.assertFailure(pool.request(get()), UpstreamTLSFailed)
            self.assertIsInstance(error, ConnectFailed)
            self.assertEqual(error.code, "upstream-tls")
            self.assertFalse(error.requestSent)
            yield pool.close()
        self.assertEqual(server.requests, [])


def _turn():
    """
    A Deferred that fires on the next reactor iteration.
    """
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0, lambda: None)


# ---------------------------------------------------------------- memory


class PausingTransport(StringTransport):
    """
    A L{StringTransport} that pauses its streaming producer after each write
    of body data, like a full socket buffer.
    """

    def write(self, data):
        StringTransport.write(self, data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()


class MemoryPoolTests(SynchronousTestCase):
    """
    L{UpstreamPool} timeouts and backpressure on a L{MemoryReactorClock}.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pool = UpstreamPool(self.reactor, "10.0.0.1", 8080, idleTimeout=60.0,
                                 connectTimeout=3.0, responseHeaderTimeout=30.0,
                                 readTimeout=20.0)

    def accept(self, transport=None):
        """
        Complete the oldest pending connection attempt (on C{transport}, a
        new L{StringTransport} by default).

        @return: C{(protocol, transport)}, the protocol being the wrapper the
            transport feeds.
        """
        host, port, factory, timeout, _ = self.reactor.tcpClients.pop(0)
        self.assertEqual(timeout, 3.0)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        if transport is None:
            transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol, reason=ConnectionDone):
        protocol.connectionLost(Failure(reason()))

    def test_responseHeaderTimeout(self):
        """
        A backend that accepts and never answers causes
        L{ResponseHeaderTimeout} after C{responseHeaderTimeout}.
        """
        d = self.pool.request(get())
        protocol, transport = self.accept()
        self.assertTrue(transport.value().startswith(b"GET / HTTP/1.1\r\nHost: backend\r\n"))
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.reactor.advance(29.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        error = self.failureResultOf(d, ResponseHeaderTimeout).value
        self.assertEqual(error.status, 504)
        self.assertTrue(error.requestSent)
        self.assertTrue(transport.disconnected)
        self.lose(protocol, ConnectionAborted)
        self.assertEqual(self.pool.activeCount, 0)

    def test_connectTimeout(self):
        """
        A connect timeout fails with L{ConnectFailed} naming the timeout.
        """
        d = self.pool.request(get())
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(TwistedTimeoutError()))
        error = self.failureResultOf(d, ConnectFailed).value
        self.assertIn("timed out after 3s", error.message)
        self.assertEqual(self.pool.activeCount, 0)

    def respond(self, protocol, body=b"ok"):
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body))

    def test_idleTimeout(self):
        """
        An idle connection closes after C{idleTimeout}; reusing it cancels
        that.
        """
        d = self.pool.request(get())
        protocol, transport = self.accept()
        self.respond(protocol)
        self.assertEqual(self.successResultOf(readBody(self.successResultOf(d))), b"ok")
        self.assertEqual(self.pool.idleCount, 1)
        self.reactor.advance(50)
        d = self.pool.request(get())
        self.assertEqual(self.pool.idleCount, 0)
        self.reactor.advance(15)  # the first idle deadline passes
        self.assertFalse(transport.disconnecting)
        self.respond(protocol)
        self.successResultOf(readBody(self.successResultOf(d)))
        self.assertEqual(self.pool.totalConnectionsMade, 1)
        self.reactor.advance(59)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.idleCount, 0)
        self.lose(protocol)
        self.assertEqual(self.successResultOf(self.pool.close()), None)

    def test_readTimeout(self):
        """
        A body with no byte for C{readTimeout} ends with L{ReadTimeout};
        time spent paused by the receiver does not count.
        """
        d = self.pool.request(get())
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        response = self.successResultOf(d)
        collector = BodyCollector()
        response.deliverBody(collector)
        self.reactor.advance(15)
        protocol.dataReceived(b"cd")
        response.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.reactor.advance(100)
        self.assertNoResult(collector.done)
        response.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.reactor.advance(19)
        self.assertNoResult(collector.done)
        self.reactor.advance(1)
        self.successResultOf(collector.done)
        collector.reason.trap(ReadTimeout)
        self.assertEqual(collector.body, b"abcd")
        self.assertTrue(transport.disconnected)

    def test_bufferUntilDeliverBody(self):
        """
        Body bytes before C{deliverBody} are buffered and replayed; past 64
        KiB the connection stops reading until C{deliverBody}.
        """
        d = self.pool.request(get())
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        response = self.successResultOf(d)
        protocol.dataReceived(b"a" * 40000)
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"b" * 40000)
        self.assertEqual(transport.producerState, "paused")
        collector = BodyCollector()
        response.deliverBody(collector)
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"c" * 20000)
        self.successResultOf(collector.done)
        self.assertIsNone(collector.reason)
        self.assertEqual(collector.body, b"a" * 40000 + b"b" * 40000 + b"c" * 20000)
        self.assertEqual(self.pool.idleCount, 1)

    def test_stopProducing(self):
        """
        C{stopProducing} aborts the connection, which is not reused, and ends
        the body with L{ConnectionAborted}.
        """
        d = self.pool.request(get())
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        response = self.successResultOf(d)
        collector = BodyCollector()
        response.deliverBody(collector)
        response.stopProducing()
        collector.reason.trap(ConnectionAborted)
        self.assertTrue(transport.disconnected)
        protocol.dataReceived(b"cdefghij")
        self.assertEqual(collector.body, b"ab")
        self.lose(protocol, ConnectionLost)
        self.assertEqual((self.pool.idleCount, self.pool.activeCount), (0, 0))
        response.stopProducing()  # no-op once ended

    def test_unsolicitedBytesWhileIdle(self):
        """
        Bytes on an idle connection make the pool drop it.
        """
        d = self.pool.request(get())
        protocol, transport = self.accept()
        self.respond(protocol)
        self.successResultOf(readBody(self.successResultOf(d)))
        protocol.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertEqual(self.pool.idleCount, 0)
        self.assertTrue(transport.disconnected)

    def test_earlyResponseWhileUploading(self):
        """
        A response that completes while a file body is still being sent
        closes the connection instead of pooling it.
        """
        d = self.pool.request(get(method=b"PUT", body=io.BytesIO(b"x" * 200000),
                                  bodyLength=200000))
        protocol, transport = self.accept(PausingTransport())
        self.assertEqual(len(transport.value()), 65536 + transport.value().index(b"\r\n\r\n") + 4)
        protocol.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(d).code, 413)
        self.assertEqual(self.pool.idleCount, 0)
        self.assertTrue(transport.disconnecting)

    def test_invalidRequest(self):
        """
        A header holding CR/LF is refused before anything is written.
        """
        d = self.pool.request(UpstreamRequest(b"GET", b"/", [(b"X", b"a\r\nInjected: 1")]))
        protocol, transport = self.accept()
        self.assertEqual(transport.value(), b"")
        error = self.failureResultOf(d, GolbError).value
        self.assertFalse(error.requestSent)

    def test_closeWhileConnecting(self):
        """
        C{close} cancels pending connection attempts and fires.
        """
        d = self.pool.request(get())
        closed = self.pool.close()
        self.failureResultOf(d, ConnectFailed)
        self.assertEqual(self.successResultOf(closed), None)
        self.assertEqual(self.pool.activeCount, 0)


class RequestTests(SynchronousTestCase):
    """
    Tests for L{UpstreamRequest}.
    """

    def test_expectsNoBody(self):
        """
        Only HEAD requests expect a bodiless response.
        """
        self.assertTrue(UpstreamRequest(b"HEAD", b"/").expectsNoBody)
        self.assertFalse(UpstreamRequest(b"GET", b"/").expectsNoBody)
