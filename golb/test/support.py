"""
Helpers for golb's tests: real loopback backends, a golb in front of them,
and small HTTP clients, each cleaned up so trial sees a clean reactor.
"""

import socket
from collections import deque
from typing import Deque, List, Optional

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from golb.app import Golb
from golb.config import parseConfig
from golb.demo import DemoBackend
from golb.tap import listenerSite

__all__ = [
    "RawClient",
    "freePort",
    "freePorts",
    "listenBackend",
    "listenGolb",
    "rawRequest",
    "waitUntil",
]


# ports freePort handed out lately: the kernel may offer a port again as
# soon as the probing socket closes, and two of them in one config clash
_recentPorts: Deque[int] = deque(maxlen=512)


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (for subprocesses that
    must be told their port in advance), and not one this process was given
    lately.
    """
    for _ in range(100):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _recentPorts:
            _recentPorts.append(port)
            return port
    raise RuntimeError("no fresh free port found")


def freePorts(count: int) -> int:
    """
    The first of C{count} consecutive TCP ports on 127.0.0.1 that were all
    free a moment ago (for demo backends, which take C{base_port} and up).
    """
    for _ in range(100):
        first = freePort()
        sockets = []
        try:
            for offset in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", first + offset))
            _recentPorts.extend(range(first + 1, first + count))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def listenBackend(testCase, resource=None, name="b1"):
    """
    Serve C{resource} (default: a L{DemoBackend} called C{name}) on an
    ephemeral loopback port for the duration of C{testCase}.

    @return: C{(port, resource)}; C{port.getHost().port} is the number.
    """
    if resource is None:
        resource = DemoBackend(name, "127.0.0.1")
    site = Site(resource)
    site.protocol = HTTPChannel
    site.log = lambda request: None
    _trackProtocols(site)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testCase.addCleanup(_closeSite, port, site)
    resource.site = site
    return port, resource


def _trackProtocols(site):
    """
    Make C{site} remember the protocols it builds, so cleanup can close them.
    """
    site.openProtocols = []
    original = site.buildProtocol

    def buildProtocol(addr):
        protocol = original(addr)
        site.openProtocols.append(protocol)
        return protocol

    site.buildProtocol = buildProtocol


def _closeSite(port, site):
    d = defer.maybeDeferred(port.stopListening)
    waits = [d]
    for protocol in site.openProtocols:
        transport = getattr(protocol, "transport", None)
        if transport is not None and transport.connected:
            lost = defer.Deferred()
            original = protocol.connectionLost

            def connectionLost(reason, original=original, lost=lost):
                original(reason)
                if not lost.called:
                    lost.callback(None)

            protocol.connectionLost = connectionLost
            transport.abortConnection()
            waits.append(lost)
    return defer.gatherResults(waits)


def listenGolb(testCase, yaml: str, **siteArgs):
    """
    Build a L{Golb} from C{yaml} and serve it on an ephemeral loopback port
    for the duration of C{testCase}.

    @return: C{(golb, port, site)}.
    """
    config = parseConfig(yaml, "test.yaml")
    golb = Golb(config, reactor=reactor)
    site = listenerSite(golb, config.listeners[0], reactor, **siteArgs)
    _trackProtocols(site)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testCase.addCleanup(golb.close)
    testCase.addCleanup(_closeSite, port, site)
    return golb, port, site


class RawClient(Protocol):
    """
    A raw TCP client that records what it receives and can wait for it.

    @ivar received: every byte received so far.
    """

    def __init__(self):
        self.received = b""
        self._waiters: List = []
        self.lost = defer.Deferred()
        self.connected = False

    def connectionMade(self):
        self.connected = True

    def dataReceived(self, data: bytes):
        self.received += data
        self._check()

    def connectionLost(self, reason=None):
        self.connected = False
        for _predicate, d in self._waiters:
            if not d.called:
                d.callback(self.received)
        self._waiters = []
        if not self.lost.called:
            self.lost.callback(self.received)

    def _check(self):
        remaining = []
        for predicate, d in self._waiters:
            if predicate(self.received):
                d.callback(self.received)
            else:
                remaining.append((predicate, d))
        self._waiters = remaining

    def waitFor(self, predicate) -> defer.Deferred:
        """
        A L{Deferred} firing with everything received once C{predicate(received)}
        holds (or when the connection closes).
        """
        d = defer.Deferred()
        if predicate(self.received) or not self.connected and self.transport is None:
            d.callback(self.received)
        else:
            self._waiters.append((predicate, d))
        return d

    def waitForBytes(self, marker: bytes, count: int = 1) -> defer.Deferred:
        return self.waitFor(lambda data: data.count(marker) >= count)


def responsesIn(data: bytes) -> int:
    """
    How many HTTP/1.1 status lines are in C{data}.
    """
    return data.count(b"HTTP/1.1 ")


@defer.inlineCallbacks
def rawConnect(testCase, port: int):
    """
    Connect a L{RawClient} to 127.0.0.1:C{port}, closed at cleanup.
    """
    client = RawClient()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)

    def close():
        if client.connected:
            client.transport.abortConnection()
            return client.lost

    testCase.addCleanup(close)
    return client


@defer.inlineCallbacks
def rawRequest(testCase, port: int, data: bytes, until: Optional[bytes] = None):
    """
    Send C{data} on a new connection and return what came back: everything
    until the server closes, or until C{until} appears.
    """
    client = yield rawConnect(testCase, port)
    client.transport.write(data)
    if until is None:
        result = yield client.lost
    else:
        result = yield client.waitForBytes(until)
    return result


def parseResponses(data: bytes, bodyless=()):
    """
    Parse complete HTTP/1.1 responses (Content-Length, chunked, or bodiless
    1xx/204/304) from C{data}.

    @param bodyless: indexes of responses to HEAD requests (no body whatever
        their headers say).
    @return: a list of C{(status, headers, body)} with C{headers} a list of
        C{(lowercased name, value)}; an incomplete last response is left out.
    """
    responses = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        head = data[:end].split(b"\r\n")
        status = int(head[0].split(b" ")[1])
        headers = []
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        rest = data[end + 4:]
        names = dict(headers)
        if status < 200 or status in (204, 304) or len(responses) in bodyless:
            responses.append((status, headers, b""))
            data = rest
            continue
        if names.get(b"transfer-encoding") == b"chunked":
            body = b""
            complete = False
            while True:
                lineEnd = rest.find(b"\r\n")
                if lineEnd < 0:
                    break
                size = int(rest[:lineEnd].split(b";")[0], 16)
                if len(rest) < lineEnd + 2 + size + 2:
                    break
                body += rest[lineEnd + 2:lineEnd + 2 + size]
                rest = rest[lineEnd + 2 + size + 2:]
                if size == 0:
                    complete = True
                    break
            if not complete:
                break
            responses.append((status, headers, body))
            data = rest
            continue
        length = int(names.get(b"content-length", b"0"))
        if len(rest) < length:
            break
        responses.append((status, headers, rest[:length]))
        data = rest[length:]
    return responses


def header(headers, name: bytes):
    """
    The values of C{name} (lowercase) in parsed C{headers}.
    """
    return [value for key, value in headers if key == name]


@defer.inlineCallbacks
def waitUntil(predicate, timeout: float = 10.0, interval: float = 0.005):
    """
    Poll C{predicate()} on the reactor until it holds; fail with
    L{AssertionError} after C{timeout} seconds so a broken feature cannot
    hang the test run.
    """
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate!r}")
        yield deferLater(reactor, interval, lambda: None)


def stopProcess(process, ended, clock=None, grace: float = 5.0):
    """
    Stop a process spawned by a test: C{SIGTERM}, then C{SIGKILL} if it is
    still running C{grace} seconds later.  For C{addCleanup}.

    @param ended: a L{Deferred} that fires when the process has exited.
    @return: C{ended}, or L{None} if it has fired already.
    """
    from twisted.internet.error import ProcessExitedAlready

    if ended.called:
        return None
    if clock is None:
        clock = reactor

    def signal(name):
        try:
            process.signalProcess(name)
        except ProcessExitedAlready:
            pass

    signal("TERM")
    kill = clock.callLater(grace, signal, "KILL")

    def exited(result):
        if kill.active():
            kill.cancel()
        return result

    return ended.addBoth(exited)
