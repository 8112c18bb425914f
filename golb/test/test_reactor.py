"""
Tests for L{golb.reactor}: Twisted's epoll reactor without the legacy
logging context around each event.
"""

import socket

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from golb import _writes
from golb._writes import directWrite
from golb.reactor import GolbReactor, installIfUnchosen


class Echo(Protocol):
    def dataReceived(self, data):
        if data == b"boom":
            raise ValueError("protocol bug")
        directWrite(self.transport, data.upper())

    def connectionLost(self, reason):
        self.factory.lost.append(reason)


class GolbReactorTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = GolbReactor()
        self.addCleanup(self._close)
        factory = Factory.forProtocol(Echo)
        factory.lost = []
        self.factory = factory
        self.port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.client.setblocking(False)
        self.addCleanup(self.client.close)

    def _close(self):
        # this reactor never runs to its shutdown: close what it holds
        for selectable in self.reactor.removeAll():
            selectable.socket.close()
        self.reactor._poller.close()
        waker = self.reactor.waker
        if waker is not None:
            waker.connectionLost(None)

    def turn(self, until, turns=200):
        """
        Run turns of the reactor (polling up to 50 ms each) until C{until()}.
        """
        for _ in range(turns):
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.05)
            if until():
                return
        self.fail(f"not reached in {turns} turns: {until!r}")

    def receive(self):
        try:
            return self.client.recv(100)
        except BlockingIOError:
            return None

    def test_events(self):
        """
        Sockets' events reach their protocols: the server accepts, reads
        and answers.  What a protocol queued with C{directWrite} leaves when
        the reactor has handled the poll's events, without a timed call.
        """
        self.patch(_writes, "batching", True)
        self.client.sendall(b"hello")
        self.turn(lambda: self.factory.lost or self.receive() is not None or
                  self.reactor.getDelayedCalls())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_answers(self):
        """
        The answer arrives.
        """
        self.client.sendall(b"hello")
        received = []
        self.turn(lambda: received.append(self.receive()) or received[-1])
        self.assertEqual(received[-1], b"HELLO")

    def test_protocolError(self):
        """
        An exception from a protocol is logged and its connection closed, as
        Twisted's reactor does.
        """
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.client.sendall(b"boom")
        self.turn(lambda: self.factory.lost)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertTrue([event for event in logged if event.get("isError")])

    def test_alreadyInstalled(self):
        """
        With a reactor installed (here, trial's), L{installIfUnchosen} leaves
        it alone.
        """
        from twisted.internet import reactor

        self.assertFalse(installIfUnchosen())
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)
