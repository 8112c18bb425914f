"""
Reload under load, end to end: SIGHUP to a running twistd golb while
requests flow, a WebSocket is open and a download streams.
"""

import base64
import hashlib
import os

import treq
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import NOT_DONE_YET

from golb.test.support import freePort, listenBackend, rawConnect
from golb.test.test_e2e import Streaming, runTwistd
from golb.test.test_proxy import FunctionResource

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _Echo(Protocol):
    def dataReceived(self, data):
        length = data[1] & 0x7F
        mask = data[2:6]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[6:6 + length]))
        self.transport.write(bytes([0x81, len(payload)]) + payload)


def _upgrade(request):
    key = request.requestHeaders.getRawHeaders(b"sec-websocket-key")[0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    transport = request.channel.transport
    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    echo = _Echo()
    request.channel.transport = None
    transport.protocol = echo
    echo.makeConnection(transport)
    return NOT_DONE_YET


def _frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


class ReloadUnderLoadTests(TestCase):
    """
    A reload keeps every connection and moves new requests at once.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_sighupUnderLoad(self):
        """
        Under steady load, SIGHUP with a changed pool moves new requests to
        the new backend with no failed request and no reset connection; an
        open WebSocket and a streaming download survive it; a listener added
        by the reload serves at once.
        """
        old, _ = listenBackend(self, name="old")
        new, _ = listenBackend(self, name="new")
        ws, _ = listenBackend(self, FunctionResource(_upgrade))
        streaming = Streaming(chunks=6, interval=0.5)
        self.addCleanup(streaming.cancel)
        slow, _ = listenBackend(self, streaming)
        listen, extra = freePort(), freePort()
        metrics = freePort()

        def config(web, extraListener=False):
            listeners = f'  - {{name: web, address: "127.0.0.1:{listen}"}}\n'
            if extraListener:
                listeners += f'  - {{name: extra, address: "127.0.0.1:{extra}"}}\n'
            return f"""\
listeners:
{listeners}backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{web.getHost().port}"}}]
  - name: ws
    backends: [{{url: "http://127.0.0.1:{ws.getHost().port}"}}]
  - name: slow
    backends: [{{url: "http://127.0.0.1:{slow.getHost().port}"}}]
routing_rules:
  - {{match: {{path: "/ws"}}, target_pool: ws}}
  - {{match: {{path: "/stream"}}, target_pool: slow}}
monitoring:
  prometheus: {{address: "127.0.0.1:{metrics}"}}
  logging: {{access_log: {{enabled: false}}}}
"""

        protocol, path = runTwistd(self, config(old))
        yield protocol.ready

        socket = yield rawConnect(self, listen)
        socket.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + base64.b64encode(b"0123456789abcdef")
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        yield socket.waitForBytes(b"\r\n\r\n")
        self.assertTrue(socket.received.startswith(b"HTTP/1.1 101 "))
        socket.transport.write(_frame(b"before"))
        yield socket.waitForBytes(b"before")

        download = yield rawConnect(self, listen)
        download.transport.write(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        yield download.waitForBytes(b"chunk 0")

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        self.addCleanup(pool.closeCachedConnections)
        client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        results = []
        failures = []
        state = {"running": True, "reloadedAt": None}

        @defer.inlineCallbacks
        def load():
            while state["running"]:
                sent = reactor.seconds()
                try:
                    response = yield client.get(f"http://127.0.0.1:{listen}/")
                    yield response.content()
                except Exception as e:
                    failures.append(repr(e))
                    continue
                name = response.headers.getRawHeaders(b"x-demo-backend", [b"?"])[0]
                results.append((sent, response.code, name))

        loops = [load() for _ in range(4)]
        while len(results) < 40:
            yield deferLater(reactor, 0.02, lambda: None)
        with open(path, "w") as f:
            f.write(config(new, extraListener=True))
        protocol.transport.signalProcess("HUP")
        while b"reloaded" not in protocol.output:
            yield deferLater(reactor, 0.02, lambda: None)
        state["reloadedAt"] = reactor.seconds()
        count = len(results)
        while len(results) < count + 80:
            yield deferLater(reactor, 0.02, lambda: None)
        state["running"] = False
        yield defer.gatherResults(loops)

        self.assertEqual(failures, [])
        self.assertEqual({code for _, code, _ in results}, {200})
        self.assertEqual({name for _, _, name in results[:40]}, {b"old"})
        after = [name for sent, _, name in results if sent > state["reloadedAt"]]
        self.assertTrue(after)
        self.assertEqual(set(after), {b"new"})

        socket.transport.write(_frame(b"after"))
        yield socket.waitForBytes(b"after")
        self.assertTrue(socket.connected)
        received = yield download.waitForBytes(b"0\r\n\r\n")
        self.assertIn(b"chunk 5", received)

        response = yield client.get(f"http://127.0.0.1:{extra}/")
        yield response.content()
        self.assertEqual(response.headers.getRawHeaders(b"x-demo-backend"), [b"new"])
        self.assertNotIn(b"Traceback", protocol.output)
        self.assertTrue(os.path.exists(path))


class ListenerReloadTests(TestCase):
    """
    SIGHUP with changed listeners, through twistd.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_changedAndRemoved(self):
        """
        A listener whose limits change keeps its socket (an open keep-alive
        connection goes on working and new connections are accepted); a
        listener moved to a new port serves there and no longer on the old
        one; a removed listener stops accepting.
        """
        from twisted.internet.error import ConnectionRefusedError

        from golb.test.support import rawRequest

        backend, _ = listenBackend(self, name="b1")
        web, moved, movedTo, gone = freePort(), freePort(), freePort(), freePort()

        def config(webIdle, movedPort, withGone):
            text = f"""\
listeners:
  - {{name: web, address: "127.0.0.1:{web}", timeouts: {{idle: {webIdle}}}}}
  - {{name: moved, address: "127.0.0.1:{movedPort}"}}
"""
            if withGone:
                text += f'  - {{name: gone, address: "127.0.0.1:{gone}"}}\n'
            return text + f"""\
backend_pools: [{{name: default, backends: [{{url: "http://127.0.0.1:{backend.getHost().port}"}}]}}]
"""

        protocol, path = runTwistd(self, config("60s", moved, True))
        yield protocol.ready
        kept = yield rawConnect(self, web)
        kept.transport.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        yield kept.waitForBytes(b"b1")
        with open(path) as f:
            monitoring = f.read().split("backend_pools:", 1)[1].split("\n", 1)[1]
        with open(path, "w") as f:
            f.write(config("30s", movedTo, False) + monitoring)
        protocol.transport.signalProcess("HUP")
        for _ in range(250):
            if b"reloaded" in protocol.output and b"listener gone: removed" in protocol.output:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        kept.transport.write(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        yield kept.waitForBytes(b"b1", 2)
        for port in (web, movedTo):
            for _ in range(250):
                try:
                    response = yield rawRequest(self, port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                                                b"Connection: close\r\n\r\n")
                except ConnectionRefusedError:
                    yield deferLater(reactor, 0.02, lambda: None)
                    continue
                break
            self.assertIn(b"200 OK", response)
        for port in (moved, gone):
            for _ in range(250):
                try:
                    yield rawConnect(self, port)
                except ConnectionRefusedError:
                    break
                yield deferLater(reactor, 0.02, lambda: None)
            else:
                self.fail(f"port {port} still accepts connections")
        self.assertIn(b"listener web: new limits and timeouts, same socket", protocol.output)
        self.assertNotIn(b"Traceback", protocol.output)
        self.assertNotIn(b"cannot listen", protocol.output)
