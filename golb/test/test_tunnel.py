"""
Tests for L{golb.tunnel}.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from golb.tunnel import Tunnel


class FakeUpstream(StringTransport):
    """
    The backend side of a tunnel, as L{golb.upstream} hands it over.
    """

    def setReceiver(self, dataReceived, connectionLost):
        self.deliver = dataReceived
        self.lost = connectionLost


class TunnelTests(SynchronousTestCase):
    """
    Tests for L{Tunnel}.
    """

    def setUp(self):
        self.clock = Clock()
        self.client = StringTransport()
        self.upstream = FakeUpstream()
        self.tunnel = Tunnel(self.client, self.upstream, idleTimeout=5, reactor=self.clock)
        self.tunnel.start(b"early")

    def test_copiesBothWays(self):
        """
        Bytes read before the switch go first; then each side's bytes reach the
        other unchanged.
        """
        self.tunnel.fromClient(b"ping")
        self.upstream.deliver(b"pong")
        self.assertEqual(self.upstream.value(), b"earlyping")
        self.assertEqual(self.client.value(), b"pong")

    def test_idleTimeout(self):
        """
        A tunnel where nothing moves for its idle timeout is closed on both
        sides; traffic resets the timer.
        """
        closed = []
        self.tunnel.whenClosed().addCallback(closed.append)
        self.clock.advance(4)
        self.upstream.deliver(b"x")
        self.clock.advance(4)
        self.assertFalse(self.client.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(self.upstream.disconnecting)
        self.assertEqual(closed, [None])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneSideClosesBoth(self):
        """
        When the backend closes, the client connection is closed and no timer
        is left behind.
        """
        self.upstream.lost(None)
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backpressure(self):
        """
        A full client write buffer pauses the backend side.
        """
        self.client.producer.pauseProducing()
        self.assertEqual(self.upstream.producerState, "paused")
        self.client.producer.resumeProducing()
        self.assertEqual(self.upstream.producerState, "producing")
