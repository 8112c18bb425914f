"""
Tests for L{golb._writes}: writes queued for the end of the reactor turn, and
response heads held back to leave with their body.
"""

import socket

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from golb import _writes
from golb._writes import directWrite, dispatching, holdHead


@defer.inlineCallbacks
def receive(client, size=None, timeout=10.0):
    """
    Read from the blocking-free socket C{client} while the reactor runs,
    until C{size} bytes came (or, without C{size}, until the peer closed).
    """
    client.setblocking(False)
    received = b""
    deadline = reactor.seconds() + timeout
    while size is None or len(received) < size:
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            if reactor.seconds() > deadline:
                raise AssertionError(f"only {received!r} within {timeout}s") from None
            yield deferLater(reactor, 0.005, lambda: None)
            continue
        if not chunk:
            break
        received += chunk
    return received


class Accepted(Protocol):
    def connectionMade(self):
        self.factory.accepted.callback(self)


class Connected:
    @defer.inlineCallbacks
    def connected(self):
        factory = Factory.forProtocol(Accepted)
        factory.accepted = defer.Deferred()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        protocol = yield factory.accepted
        self.addCleanup(protocol.transport.abortConnection)
        return protocol.transport, client


class DirectWriteTests(Connected, TestCase):
    """
    Batching (CPython's default): writes leave at the end of the turn.
    """

    def setUp(self):
        self.patch(_writes, "batching", True)

    @defer.inlineCallbacks
    def test_sentAtEndOfTurn(self):
        """
        On an idle TCP connection the bytes are queued, not sent, and leave
        in one send at the end of the reactor turn, without epoll ever
        being asked to report the socket writable.
        """
        transport, client = yield self.connected()
        directWrite(transport, b"hello ")
        directWrite(transport, b"world")
        client.setblocking(False)
        self.assertRaises(BlockingIOError, client.recv, 100)
        self.assertNotIn(transport, reactor.getWriters())
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(client.recv(100), b"hello world")
        self.assertNotIn(transport, reactor.getWriters())

    @defer.inlineCallbacks
    def test_manyConnectionsOneTurn(self):
        """
        Bytes queued for several connections in one turn all leave at its
        end, each connection's in order.
        """
        connections = []
        for _ in range(3):
            connections.append((yield self.connected()))
        for index, (transport, _) in enumerate(connections):
            directWrite(transport, b"%d:a " % (index,))
        for index, (transport, _) in enumerate(connections):
            directWrite(transport, b"%d:b" % (index,))
        yield deferLater(reactor, 0, lambda: None)
        for index, (_, client) in enumerate(connections):
            received = yield receive(client, 7)
            self.assertEqual(received, b"%d:a %d:b" % (index, index))

    @defer.inlineCallbacks
    def test_afterBuffered(self):
        """
        Bytes already buffered in the transport go first: a later
        C{directWrite} is buffered behind them, keeping the order.
        """
        transport, client = yield self.connected()
        transport.write(b"first ")
        directWrite(transport, b"second")
        self.assertEqual(transport._tempDataBuffer, [b"first ", b"second"])
        received = yield receive(client, 12)
        self.assertEqual(received, b"first second")

    @defer.inlineCallbacks
    def test_writeAfterQueued(self):
        """
        A plain C{write} after queued bytes goes behind them.
        """
        transport, client = yield self.connected()
        directWrite(transport, b"queued ")
        transport.write(b"written")
        received = yield receive(client, 14)
        self.assertEqual(received, b"queued written")

    @defer.inlineCallbacks
    def test_loseConnectionSendsQueued(self):
        """
        Closing a connection right after C{directWrite} still sends the
        queued bytes first.
        """
        transport, client = yield self.connected()
        directWrite(transport, b"last words")
        transport.loseConnection()
        received = yield receive(client)
        self.assertEqual(received, b"last words")

    @defer.inlineCallbacks
    def test_largeWritesBuffered(self):
        """
        Beyond the queue limit bytes take the transport's own write path,
        whose buffer limit pauses a producer.
        """
        transport, client = yield self.connected()
        directWrite(transport, b"x" * 100)
        directWrite(transport, b"y" * _writes._QUEUE_LIMIT)
        self.assertIn(transport, reactor.getWriters())
        received = yield receive(client, 100 + _writes._QUEUE_LIMIT)
        self.assertEqual(received, b"x" * 100 + b"y" * _writes._QUEUE_LIMIT)

    def test_otherTransports(self):
        """
        Transports that are not plain TCP (TLS, tests) get a normal write.
        """
        transport = StringTransport()
        directWrite(transport, b"data")
        self.assertEqual(transport.value(), b"data")


class ImmediateWriteTests(Connected, TestCase):
    """
    Without batching (PyPy's default): writes leave at once.
    """

    def setUp(self):
        self.patch(_writes, "batching", False)

    @defer.inlineCallbacks
    def test_sentAtOnce(self):
        """
        On an idle TCP connection the bytes are on the wire when
        C{directWrite} returns, without epoll being asked to report the
        socket writable.
        """
        transport, client = yield self.connected()
        directWrite(transport, b"hello")
        client.settimeout(5)
        self.assertEqual(client.recv(100), b"hello")
        self.assertNotIn(transport, reactor.getWriters())

    @defer.inlineCallbacks
    def test_afterBuffered(self):
        """
        Bytes already buffered in the transport go first.
        """
        transport, client = yield self.connected()
        transport.write(b"first ")
        directWrite(transport, b"second")
        received = yield receive(client, 12)
        self.assertEqual(received, b"first second")


class Channel:
    def __init__(self):
        self.flushed = 0

    def flushHead(self):
        self.flushed += 1


class HoldTests(SynchronousTestCase):
    def test_onlyWhileDispatching(self):
        """
        Outside a dispatch nothing is held: the caller writes at once.
        """
        self.assertFalse(holdHead(Channel()))

    def test_flushedWhenDispatchEnds(self):
        """
        A held head is flushed when the outermost dispatch ends, even when
        no body follows.
        """
        channel = Channel()
        with dispatching:
            with dispatching:
                self.assertTrue(holdHead(channel))
            self.assertEqual(channel.flushed, 0)
        self.assertEqual(channel.flushed, 1)
        self.assertEqual(_writes._held, [])
