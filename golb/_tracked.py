"""
L{TrackedChannel}: an HTTP connection its site remembers, for the small
sites golb serves besides its listeners (admin, metrics), so that stopping
their service can close every connection and wait for it to go.
"""

from twisted.internet.defer import Deferred
from twisted.web.http import HTTPChannel

__all__ = ["TrackedChannel"]


class TrackedChannel(HTTPChannel):
    """
    Adds itself to C{site.channels} while connected.

    @ivar gone: a L{Deferred} that fires once the connection is closed.
    """

    def connectionMade(self):
        HTTPChannel.connectionMade(self)
        self.gone = Deferred()
        self.site.channels.add(self)

    def connectionLost(self, reason):
        self.site.channels.discard(self)
        HTTPChannel.connectionLost(self, reason)
        if not self.gone.called:
            self.gone.callback(None)
