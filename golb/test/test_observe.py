"""
Tests for L{golb.observe}: what the request path tells observers.
"""

from twisted.internet import defer
from zope.interface.verify import verifyObject

from golb.observe import IObserver, Observer
from golb.test.support import freePort, listenBackend, listenGolb, rawRequest, waitUntil
from golb.test.test_proxy import FunctionResource, ProxyTestCase


class Recording(Observer):
    def __init__(self):
        self.events = []
        self.finished = []

    def requestStarted(self, record, request):
        self.events.append(("started", record.method, record.target))

    def attemptStarted(self, record, attempt, headers):
        self.events.append(("attempt", attempt.number, attempt.backend.port))
        headers.append((b"X-Observed", b"yes"))

    def attemptFinished(self, record, attempt):
        self.events.append(("attempted", attempt.number, attempt.status, attempt.error))

    def requestFinished(self, record):
        self.events.append(("finished", record.status))
        self.finished.append(record)

    def requestRejected(self, listener, status, error, client=""):
        self.events.append(("rejected", listener, status, error, client))


class ObservatoryTests(ProxyTestCase):
    """
    Observers see each request start, each attempt, and its end, once.
    """

    def start(self, *ports, extra=""):
        backends = ", ".join(f'{{url: "http://127.0.0.1:{p}"}}' for p in ports)
        golb, listening, site = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{backends}]
{extra}""")
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        self.port = listening.getHost().port
        self.observer = Recording()
        golb.observatory.add(self.observer)
        return golb

    def test_interface(self):
        """
        The base observer provides L{IObserver}.
        """
        self.assertTrue(verifyObject(IObserver, Observer()))

    @defer.inlineCallbacks
    def test_success(self):
        """
        A proxied request: started, one attempt with the backend's status,
        finished with status, bytes, pool, backend and timings; observers
        may add headers to the attempt.
        """
        port, backend = listenBackend(self)
        self.start(port.getHost().port)
        response, body = yield self.get("/x?y=1", headers={b"User-Agent": [b"probe/1"]})
        yield waitUntil(lambda: self.observer.finished)
        self.assertIn(b"X-Observed: yes", body)
        self.assertEqual(self.observer.events, [
            ("started", "GET", "/x?y=1"),
            ("attempt", 1, port.getHost().port),
            ("attempted", 1, 200, None),
            ("finished", 200),
        ])
        [record] = self.observer.finished
        self.assertEqual((record.listener, record.route, record.pool, record.backend),
                         ("web", "default", "default", f"127.0.0.1:{port.getHost().port}"))
        self.assertEqual((record.client, record.userAgent), ("127.0.0.1", "probe/1"))
        self.assertEqual(record.bytesOut, len(body))
        self.assertIsNone(record.error)
        self.assertFalse(record.aborted)
        self.assertGreater(record.duration, 0)
        self.assertGreaterEqual(record.duration, record.upstreamSeconds)

    @defer.inlineCallbacks
    def test_retry(self):
        """
        A retried request shows two attempts: the failed one with its error.
        """
        port, backend = listenBackend(self)
        dead = freePort()
        self.start(dead, port.getHost().port)
        response, body = yield self.get("/")
        yield waitUntil(lambda: self.observer.finished)
        self.assertEqual(self.observer.events[1:4], [
            ("attempt", 1, dead),
            ("attempted", 1, 0, "connect-failure"),
            ("attempt", 2, port.getHost().port),
        ])
        self.assertEqual(self.observer.finished[0].retries, 1)

    @defer.inlineCallbacks
    def test_golbError(self):
        """
        When golb answers itself the record carries its error code.
        """
        self.start(freePort(), extra="    retries: {attempts: 0}\n")
        response, body = yield self.get("/")
        yield waitUntil(lambda: self.observer.finished)
        [record] = self.observer.finished
        self.assertEqual((record.status, record.error), (502, "connect-failure"))

    @defer.inlineCallbacks
    def test_aborted(self):
        """
        A client that leaves before the answer ends its record as aborted,
        once.
        """
        from twisted.web.server import NOT_DONE_YET

        held = []
        port, _ = listenBackend(self, FunctionResource(
            lambda request: held.append(request) or NOT_DONE_YET))
        self.start(port.getHost().port)
        from golb.test.support import rawConnect

        client = yield rawConnect(self, self.port)
        client.transport.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        yield waitUntil(lambda: held)
        client.transport.loseConnection()
        yield waitUntil(lambda: self.observer.finished)
        [record] = self.observer.finished
        self.assertTrue(record.aborted)
        self.assertEqual(record.status, 0)
        self.assertEqual([e[0] for e in self.observer.events].count("finished"), 1)

    @defer.inlineCallbacks
    def test_rejected(self):
        """
        A malformed request refused by the listener is reported as rejected.
        """
        self.start(freePort())
        yield rawRequest(self, self.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertEqual(self.observer.events,
                         [("rejected", "web", 400, "bad-request", "127.0.0.1")])

    @defer.inlineCallbacks
    def test_inactive(self):
        """
        With no observer, requests carry no record.
        """
        port, backend = listenBackend(self)
        golb = self.start(port.getHost().port)
        golb.observatory.remove(self.observer)
        self.assertFalse(golb.observatory.active)
        response, body = yield self.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.observer.events, [])
