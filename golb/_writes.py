"""
Writing without a round trip through the reactor.

Twisted's TCP transports never send in C{write}: they buffer, ask epoll to
report the socket writable, and send on the next turn of the reactor, then
tell epoll to stop reporting.  For a proxy that writes once per request on
each side, that is two extra epoll changes and one extra event per write,
about a tenth of golb's time per request.

L{directWrite} sends at once when nothing is waiting in the transport's
buffer (the common case: a small response to a reading client), and gives
what the socket did not take to the transport as usual.  TLS and other
transports are left alone.

L{dispatching} marks a stretch of work (one C{dataReceived}) during which a
response head may wait for its body, so that head and body leave in one
send; L{holdHead} registers a channel with such a head, and the head is sent
at the latest when the stretch ends.
"""

from twisted.internet import tcp

__all__ = ["directWrite", "dispatching", "holdHead"]

_DIRECT = (tcp.Server, tcp.Client)

_depth = 0
_held = []


def directWrite(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once if the transport is a
    plain TCP connection with nothing buffered.
    """
    if (
        transport.__class__ in _DIRECT
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, or a dead socket: the transport's own write path
            # buffers, or notices the error and closes, as usual
            sent = 0
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    transport.write(data)


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
