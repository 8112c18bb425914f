"""
golb's reactor: Twisted's epoll reactor, dispatching events directly.

For every readable or writable socket, Twisted's epoll reactor calls the
transport through C{log.callWithLogger}, which sets up a legacy logging
context (the protocol's log prefix, used as the I{system} of C{log.msg}
lines written while the event is handled) and tears it down again.  golb
logs through L{twisted.logger.Logger}, whose events do not read that
context, and the reactor's own handler around each event
(C{_doReadOrWrite}) already catches and logs what a transport raises.  On a
proxy that handles four socket events per request the context costs about
a twentieth of the time per request; L{GolbReactor} skips it and is
otherwise Twisted's L{EPollReactor}.

C{twistd golb} installs it when no reactor was chosen (C{twistd -r epoll
golb} keeps Twisted's own), and so do golb's worker processes.
"""

import errno
import sys

from golb import _writes

__all__ = ["GolbReactor", "install", "installIfUnchosen"]

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux: Twisted's default reactor is used
    EPollReactor = None


if EPollReactor is not None:

    class GolbReactor(EPollReactor):
        """
        L{EPollReactor} calling the handler of each event directly, without
        a legacy logging context around it.
        """

        # golb._writes: bytes queued by directWrite are sent by doPoll
        flushesWrites = True

        def doPoll(self, timeout):
            """
            Send the queued writes, poll for events and handle them, then send
            the writes they queued.
            """
            if _writes._queued:
                # queued by timers or other work since the last poll
                _writes.flushQueued()
            if timeout is None:
                timeout = -1
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            handle = self._doReadOrWrite
            selectables = self._selectables
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    handle(selectable, fd, event)
            if _writes._queued:
                _writes.flushQueued()

        doIteration = doPoll

else:  # pragma: no cover - epoll is Linux's
    GolbReactor = None


def install():
    """
    Install L{GolbReactor} as Twisted's reactor.

    @raise twisted.internet.error.ReactorAlreadyInstalledError: if a
        reactor is installed already.
    @raise RuntimeError: where epoll is not available.
    """
    if GolbReactor is None:
        raise RuntimeError("golb's reactor needs epoll (Linux)")
    from twisted.internet.main import installReactor

    reactor = GolbReactor()
    installReactor(reactor)
    return reactor


def installIfUnchosen() -> bool:
    """
    Install L{GolbReactor} unless a reactor is installed already (chosen
    with C{twistd -r}, or imported) or epoll is missing.

    @return: whether it was installed.
    """
    if GolbReactor is None or "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
