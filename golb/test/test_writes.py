"""
Tests for L{golb._writes}: writes that skip the reactor round trip, and
response heads held back to leave with their body.
"""

import socket

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from golb import _writes
from golb._writes import directWrite, dispatching, holdHead


class Accepted(Protocol):
    def connectionMade(self):
        self.factory.accepted.callback(self)


class DirectWriteTests(TestCase):
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

    @defer.inlineCallbacks
    def test_sentAtOnce(self):
        """
        On an idle TCP connection the bytes are on the wire when
        C{directWrite} returns, before the reactor runs again.
        """
        transport, client = yield self.connected()
        directWrite(transport, b"hello")
        client.settimeout(5)
        self.assertEqual(client.recv(100), b"hello")
        self.assertNotIn(transport, reactor.getWriters())

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

    def test_otherTransports(self):
        """
        Transports that are not plain TCP (TLS, tests) get a normal write.
        """
        transport = StringTransport()
        directWrite(transport, b"data")
        self.assertEqual(transport.value(), b"data")


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
