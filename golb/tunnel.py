"""
Byte tunnels for protocol upgrades (WebSocket and other C{Upgrade}s).

After a backend answers C{101 Switching Protocols}, golb stops speaking HTTP on
both connections and copies bytes between them, with backpressure both ways
and an idle timeout of its own.
"""

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

__all__ = ["Tunnel"]


@implementer(IPushProducer)
class _Pauser:
    """
    Pauses one side when the other side's write buffer is full.
    """

    def __init__(self, target):
        self.target = target

    def pauseProducing(self):
        self.target.pauseProducing()

    def resumeProducing(self):
        self.target.resumeProducing()

    def stopProducing(self):
        self.target.loseConnection()


class _ClientSide(Protocol):
    """
    The protocol that takes over the client's connection.
    """

    def __init__(self, tunnel: "Tunnel"):
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.fromClient(data)

    def connectionLost(self, reason=None) -> None:
        self.tunnel.clientLost(reason)


class Tunnel:
    """
    Copies bytes between a client connection and a backend connection.

    @ivar client: the client's transport.
    @ivar upstream: the backend side, from
        L{golb.upstream.UpstreamResponse.switchProtocol}.
    """

    log = Logger()

    def __init__(self, client, upstream, idleTimeout: float = 60.0, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.client = client
        self.upstream = upstream
        self.idleTimeout = idleTimeout
        self.closed = False
        self._waiters = []
        self._idleCall = None
        self.bytesIn = 0
        self.bytesOut = 0

    @classmethod
    def fromRequest(cls, request, upstream, head: bytes, idleTimeout: float = 60.0,
                    reactor=None) -> "Tunnel":
        """
        Take over the connection of C{request} (whose response has not
        started), send it the backend's C{101} C{head} and start tunnelling.
        """
        channel = request.channel
        transport = channel.transport
        buffered = b"".join(getattr(channel, "_dataBuffer", ()) or ())
        channel._dataBuffer = []
        channel.setTimeout(None)
        # Twisted's channel no longer owns this connection: detach it so that
        # nothing it does later (timeouts, finishing) touches the socket.
        channel.transport = None
        request.startedWriting = 1
        tunnel = cls(transport, upstream, idleTimeout, reactor)
        site = getattr(channel, "site", None)
        if site is not None:
            # The connection is a tunnel now: the site counts it apart, so
            # that draining waits for it (up to the grace) and the channel
            # is not kept as an open HTTP connection forever.
            site.openConnections.discard(channel)
            tunnels = getattr(site, "openTunnels", None)
            if tunnels is not None:
                tunnels.add(tunnel)
                tunnel.whenClosed().addCallback(lambda _: tunnels.discard(tunnel))
        protocol = _ClientSide(tunnel)
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        elif hasattr(transport, "wrappedProtocol"):
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.transport = transport
        transport.unregisterProducer()
        transport.write(head)
        tunnel.start(buffered)
        transport.resumeProducing()
        return tunnel

    def start(self, buffered: bytes = b"") -> None:
        """
        Begin copying; C{buffered} are client bytes read before the switch.
        """
        self.upstream.setReceiver(self.fromUpstream, self.upstreamLost)
        self.client.registerProducer(_Pauser(self.upstream), True)
        registerProducer = getattr(self.upstream, "registerProducer", None)
        if registerProducer is not None:
            registerProducer(_Pauser(self.client), True)
        self._touch()
        if buffered:
            self.fromClient(buffered)

    def whenClosed(self) -> Deferred:
        """
        A L{Deferred} that fires when both sides are closed.
        """
        d = Deferred()
        if self.closed:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def _touch(self) -> None:
        if self.closed or not self.idleTimeout:
            return
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.reset(self.idleTimeout)
        else:
            self._idleCall = self.reactor.callLater(self.idleTimeout, self._idle)

    def _idle(self) -> None:
        self._idleCall = None
        self.log.info("Tunnel idle for {timeout}s, closing", timeout=self.idleTimeout)
        self._close()

    def fromClient(self, data: bytes) -> None:
        self.bytesIn += len(data)
        self._touch()
        self.upstream.write(data)

    def fromUpstream(self, data: bytes) -> None:
        self.bytesOut += len(data)
        self._touch()
        self.client.write(data)

    def close(self) -> None:
        """
        Close both sides now (golb is shutting down and the grace is over).
        """
        self._close()

    def clientLost(self, reason=None) -> None:
        self._close()

    def upstreamLost(self, reason=None) -> None:
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        for side in (self.client, self.upstream):
            try:
                side.loseConnection()
            except Exception:
                self.log.failure("closing a tunnel side")
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

