"""
Writing without a round trip through the reactor, once per reactor turn.

Twisted's TCP transports never send in C{write}: they buffer, ask epoll to
report the socket writable, and send on the next turn of the reactor, then
tell epoll to stop reporting.  For a proxy that writes once per request on
each side, that is two extra epoll changes and one extra event per write,
about a tenth of golb's time per request.

L{directWrite} queues the bytes in the transport's own buffer without asking
epoll, and sends every connection's queued bytes at the end of the reactor
turn, each in one C{send}: L{golb.reactor.GolbReactor} calls L{flushQueued}
after handling the events of a poll and before polling again; on other
reactors a C{callLater(0)} does (it runs before the reactor polls again).
Under load one turn handles the events of many connections: sending their
answers together wakes the processes that read them (clients, backends)
once per turn instead of once per write, which halves the kernel's time per
proxied request on loopback (on CPython; see docs/performance.md).  What a
socket does not take is left to the transport's usual write path, and so is
a connection that is closing (C{loseConnection} sends the queue first) or
already buffering.  TLS and other transports get a plain C{write}.

L{dispatching} marks a stretch of work (one C{dataReceived}) during which a
response head may wait for its body, so that head and body leave in one
send; L{holdHead} registers a channel with such a head, and the head is sent
at the latest when the stretch ends.
"""

import platform

from twisted.internet import tcp

__all__ = ["directWrite", "dispatching", "holdHead", "flushQueued"]

_DIRECT = (tcp.Server, tcp.Client)

# beyond this many queued bytes a connection takes the transport's own
# write path, whose buffer limits pause the producer feeding it
_QUEUE_LIMIT = 65536

_depth = 0
_held = []

# the transports with bytes queued by directWrite, and the reactor call that
# sends them
_queued = []
_flushCall = None

# Whether directWrite queues for the end of the turn (else it sends at once
# when nothing is buffered).  On CPython it halves the kernel's time per
# request; on PyPy, which is about three times faster per request, it gained
# no throughput and tripled p99 (docs/performance.md), so PyPy sends at once.
batching = platform.python_implementation() == "CPython"


def directWrite(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport}: on a plain TCP connection with nothing
    buffered, queue it to be sent at the end of this reactor turn (or, when
    not L{batching}, send it at once).
    """
    global _flushCall
    if (
        transport.__class__ in _DIRECT
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
    ):
        queue = transport._tempDataBuffer
        if not batching:
            if not queue:
                _sendNow(transport, data)
                return
        elif transport._tempDataLen + len(data) <= _QUEUE_LIMIT:
            size = transport._tempDataLen + len(data)
            if not queue:
                # nothing buffered: not writing, not queued yet
                if not _queued:
                    reactor = transport.reactor
                    # golb's reactor flushes around each poll itself
                    if _flushCall is None and not getattr(reactor, "flushesWrites", False):
                        _flushCall = reactor.callLater(0, flushQueued)
                _queued.append(transport)
            queue.append(data)
            transport._tempDataLen = size
            return
    transport.write(data)


def flushQueued() -> None:
    """
    Send the bytes L{directWrite} queued, one C{send} per connection.
    """
    global _flushCall, _queued
    if _flushCall is not None:
        if _flushCall.active():
            _flushCall.cancel()
        _flushCall = None
    queued = _queued
    _queued = []
    for transport in queued:
        queue = transport._tempDataBuffer
        if not queue or transport.dataBuffer or not transport.connected or transport.disconnecting:
            # sent already, or the transport's own write path has it
            continue
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        transport._tempDataBuffer = []
        transport._tempDataLen = 0
        _sendNow(transport, data)


def _sendNow(transport, data: bytes) -> None:
    """
    Send C{data} on C{transport}'s socket; what it does not take goes to the
    transport's own write path.
    """
    try:
        sent = transport.socket.send(data)
    except OSError:
        # EAGAIN, or a dead socket: the transport's own write path
        # buffers, or notices the error and closes, as usual
        sent = 0
    if sent != len(data):
        transport.write(data[sent:] if sent else data)


class _Dispatching:
    """
    The context manager of L{dispatching}.
    """

    __slots__ = ()

    def __enter__(self):
        global _depth
        _depth += 1

    def __exit__(self, *exc):
        global _depth
        _depth -= 1
        if not _depth and _held:
            flushHeld()
        return False


dispatching = _Dispatching()


def holdHead(channel) -> bool:
    """
    Whether C{channel} may keep a response head back until its body is
    written (inside L{dispatching}); if so, the channel is remembered and
    its C{flushHead()} is called when the stretch ends.
    """
    if not _depth:
        return False
    _held.append(channel)
    return True


def flushHeld() -> None:
    """
    Send every head held back.
    """
    global _held
    held = _held
    _held = []
    for channel in held:
        channel.flushHead()
