"""
Tests for L{golb.streams.BodyStream}.
"""

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from golb.streams import BodyStream


class Receiver:
    """
    The sink side of a L{BodyStream}: records what it is given.
    """

    def __init__(self):
        self.data = []
        self.done = None

    def dataReceived(self, data):
        self.data.append(data)

    def bodyDone(self, reason, trailers):
        self.done = (reason, trailers)


class Producer:
    """
    A push producer that records what it is told.
    """

    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


class BodyStreamTests(SynchronousTestCase):
    def test_bufferedThenLive(self):
        """
        Bytes written before a receiver is attached arrive first, in order,
        then live ones, then the end with the trailers.
        """
        stream = BodyStream()
        stream.write(b"a")
        stream.write(b"b")
        receiver = Receiver()
        stream.deliver(receiver)
        stream.write(b"c")
        self.assertIsNone(receiver.done)
        stream.finish([(b"x-t", b"1")])
        self.assertEqual(receiver.data, [b"a", b"b", b"c"])
        self.assertEqual(receiver.done, (None, [(b"x-t", b"1")]))
        self.assertEqual(stream.received, 3)

    def test_endedBeforeDelivery(self):
        """
        A body that ended before a receiver came is delivered whole.
        """
        stream = BodyStream(length=2)
        stream.write(b"hi")
        stream.finish()
        receiver = Receiver()
        stream.deliver(receiver)
        self.assertEqual((receiver.data, receiver.done), ([b"hi"], (None, [])))

    def test_failure(self):
        """
        A failed source ends the body with its reason.
        """
        stream = BodyStream()
        receiver = Receiver()
        stream.deliver(receiver)
        stream.fail(Failure(ValueError("reset")))
        self.assertIsInstance(receiver.done[0].value, ValueError)

    def test_highWaterPausesSource(self):
        """
        With no receiver yet, the source is paused once more than
        C{highWater} bytes wait, and resumed when they drain.
        """
        producer = Producer()
        stream = BodyStream(producer)
        stream.highWater = 10
        stream.write(b"x" * 8)
        self.assertEqual(producer.events, [])
        stream.write(b"x" * 8)
        self.assertEqual(producer.events, ["pause"])
        stream.deliver(Receiver())
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_sinkBackpressure(self):
        """
        A paused receiver pauses the source; bytes that still arrive wait
        and are delivered on resume.
        """
        producer = Producer()
        stream = BodyStream(producer)
        receiver = Receiver()
        stream.deliver(receiver)
        stream.pauseProducing()
        self.assertEqual(producer.events, ["pause"])
        stream.write(b"late")
        self.assertEqual(receiver.data, [])
        stream.resumeProducing()
        self.assertEqual(receiver.data, [b"late"])
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_stopProducing(self):
        """
        A receiver that gives up stops the source.
        """
        producer = Producer()
        stream = BodyStream(producer)
        stream.deliver(Receiver())
        stream.stopProducing()
        self.assertEqual(producer.events, ["stop"])
