"""
Request bodies that are forwarded while they arrive.

golb buffers an HTTP/1.1 request body before it picks a backend (so that a
retry can send it again).  A gRPC call cannot wait for that: a streaming RPC's
request body is open for as long as the call lasts.  For such a request the
downstream side (the HTTP/2 server) gives the request a L{BodyStream}; the
upstream side (the HTTP/2 client) takes it as the L{UpstreamRequest} body and
sends each piece on as it comes, with flow control both ways:

    source (downstream stream)              sink (upstream stream)
    ---------------------------             ----------------------
    stream.write(data)           ------>    receiver.dataReceived(data)
    stream.finish(trailers)      ------>    receiver.bodyDone(None, trailers)
    stream.fail(reason)          ------>    receiver.bodyDone(reason, [])
    producer.pauseProducing()    <------    stream.pauseProducing()
    producer.resumeProducing()   <------    stream.resumeProducing()

Bytes written before a receiver is attached are kept, and the source is
paused once more than C{highWater} bytes wait, so a fast client cannot make
golb buffer without bound while a backend is being chosen or is slow.
"""

from typing import List, Optional, Tuple

from twisted.python.failure import Failure

__all__ = ["BodyStream"]

Headers = List[Tuple[bytes, bytes]]


class BodyStream:
    """
    A request body streamed from a client to a backend.

    @ivar length: the body length when the client declared one, else L{None}.
    @ivar received: how many bytes were written so far.
    @ivar started: whether a receiver was attached (a request whose body
        started to flow cannot be retried on another backend).
    """

    highWater = 256 * 1024

    def __init__(self, producer=None, length: Optional[int] = None):
        """
        @param producer: the source's push producer (C{pauseProducing},
            C{resumeProducing}, C{stopProducing}), or L{None}.
        @param length: the declared body length, if any.
        """
        self._producer = producer
        self.length = length
        self.received = 0
        self.started = False
        self._receiver = None
        self._buffer: List[bytes] = []
        self._buffered = 0
        self._ended = False
        self._endReason: Optional[Failure] = None
        self._trailers: Headers = []
        self._sinkPaused = False
        self._sourcePaused = False

    def __repr__(self) -> str:
        return (f"<BodyStream received={self.received} buffered={self._buffered} "
                f"ended={self._ended}>")

    # -- the source side

    def write(self, data: bytes) -> None:
        """
        Body bytes arrived from the client.
        """
        if self._ended or not data:
            return
        self.received += len(data)
        receiver = self._receiver
        if receiver is not None and not self._buffer and not self._sinkPaused:
            receiver.dataReceived(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        self._updateSource()

    def finish(self, trailers: Optional[Headers] = None) -> None:
        """
        The body is complete; C{trailers} are the client's trailer fields.
        """
        self._end(None, trailers or [])

    def fail(self, reason: Failure) -> None:
        """
        The body will not complete (the client reset the stream or went
        away).
        """
        self._end(reason, [])

    @property
    def ended(self) -> bool:
        """
        Whether the source finished or failed.
        """
        return self._ended

    def _end(self, reason: Optional[Failure], trailers: Headers) -> None:
        if self._ended:
            return
        self._ended = True
        self._endReason = reason
        self._trailers = trailers
        if self._receiver is not None and not self._buffer:
            self._deliverEnd()

    def _deliverEnd(self) -> None:
        receiver = self._receiver
        self._receiver = None
        reason, trailers = self._endReason, self._trailers
        self._endReason = None
        self._trailers = []
        receiver.bodyDone(reason, trailers)

    # -- the sink side

    def deliver(self, receiver) -> None:
        """
        Send the body to C{receiver}: C{receiver.dataReceived(bytes)} for
        each piece (buffered ones first), then C{receiver.bodyDone(reason,
        trailers)} once, with C{reason} L{None} when the body is complete.
        """
        if self.started:
            raise RuntimeError("deliver called twice")
        self.started = True
        self._receiver = receiver
        self._flush()

    def _flush(self) -> None:
        while self._buffer and self._receiver is not None and not self._sinkPaused:
            data = self._buffer.pop(0)
            self._buffered -= len(data)
            self._receiver.dataReceived(data)
        if self._ended and not self._buffer and self._receiver is not None:
            self._deliverEnd()
        self._updateSource()

    def pauseProducing(self) -> None:
        """
        The receiver cannot take more now: the source is paused.
        """
        self._sinkPaused = True
        self._updateSource()

    def resumeProducing(self) -> None:
        """
        The receiver can take more again.
        """
        self._sinkPaused = False
        self._flush()

    def stopProducing(self) -> None:
        """
        The receiver gave up (the backend failed): the rest is dropped.
        """
        self._receiver = None
        self._buffer = []
        self._buffered = 0
        producer = self._producer
        if producer is not None and not self._ended:
            producer.stopProducing()

    def _updateSource(self) -> None:
        producer = self._producer
        if producer is None or self._ended:
            return
        pause = self._sinkPaused or self._buffered > self.highWater
        if pause and not self._sourcePaused:
            self._sourcePaused = True
            producer.pauseProducing()
        elif not pause and self._sourcePaused:
            self._sourcePaused = False
            producer.resumeProducing()
