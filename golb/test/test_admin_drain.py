"""
Draining a backend through the admin API while requests flow through a real
golb: no new requests reach it (except sticky ones) and the requests it holds
finish normally.
"""

import json
from http.cookiejar import CookieJar, DefaultCookiePolicy

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import NOT_DONE_YET

from golb._units import Address
from golb.admin import AdminService
from golb.test.support import listenBackend, listenGolb, waitUntil
from golb.test.test_proxy import FunctionResource


class Backend:
    """
    A loopback backend that answers C{/fast/N} at once and holds C{/slow}
    open until the test finishes it.

    @ivar seen: the C{N} of every C{/fast/N} request it got.
    @ivar held: the C{/slow} requests it holds.
    """

    def __init__(self, testCase, name: str):
        self.name = name
        self.seen = []
        self.held = []
        self.port, self.resource = listenBackend(testCase, FunctionResource(self.answer))

    def answer(self, request):
        request.setHeader(b"x-backend", self.name.encode())
        if request.path == b"/slow":
            self.held.append(request)
            return NOT_DONE_YET
        self.seen.append(int(request.path.rsplit(b"/", 1)[1]))
        return self.name.encode()


class DrainTests(TestCase):
    """
    C{PATCH /api/v1/pools/web/backends/{id}} with C{{"state": "drain"}}
    under load.
    """

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        # no cookie jar: only the request that sends the sticky cookie is sticky
        noCookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool), cookiejar=noCookies)

    @defer.inlineCallbacks
    def test_drainUnderLoad(self):
        """
        While clients keep sending requests, draining a backend stops new
        requests reaching it as soon as the PATCH is answered; a request it
        was holding completes afterwards with its full response; a request
        carrying its sticky cookie still reaches it.
        """
        one, two = Backend(self, "one"), Backend(self, "two")
        golb, port, _ = listenGolb(self, f"""\
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: web
    sticky: {{cookie: golb_sticky}}
    backends:
      - {{url: "http://127.0.0.1:{one.port.getHost().port}", name: one}}
      - {{url: "http://127.0.0.1:{two.port.getHost().port}", name: two}}
""")
        admin = AdminService(golb, reactor, ready=lambda: True, address=Address("127.0.0.1", 0))
        admin.startService()
        self.addCleanup(admin.stopService)
        proxy = f"http://127.0.0.1:{port.getHost().port}"
        adminURL = f"http://127.0.0.1:{admin.port.getHost().port}/api/v1/pools/web"

        # a slow request held open by whichever backend gets it
        slow = self.client.get(proxy + "/slow")
        yield waitUntil(lambda: one.held or two.held)
        drained, other = (one, two) if one.held else (two, one)

        # steady traffic from four clients
        sequence = [0]
        running = [True]
        answers = {}

        @defer.inlineCallbacks
        def client():
            while running[0]:
                number = sequence[0]
                sequence[0] += 1
                response = yield self.client.get(f"{proxy}/fast/{number}")
                body = yield response.content()
                answers[number] = (response.code, body)

        clients = [client() for _ in range(4)]

        def stop():
            running[0] = False
            return defer.DeferredList(clients, consumeErrors=True)

        self.addCleanup(stop)
        yield waitUntil(lambda: len(drained.seen) >= 5 and len(other.seen) >= 5)

        response = yield self.client.request(
            "PATCH", f"{adminURL}/backends/{drained.name}",
            data=json.dumps({"state": "drain"}).encode(),
            headers={b"Content-Type": [b"application/json"]})
        body = yield response.json()
        self.assertEqual((response.code, body["state"]), (200, "drain"))
        self.assertGreaterEqual(body["in_flight"], 1)
        cutoff = sequence[0]
        yield waitUntil(lambda: len([n for n in answers if n >= cutoff]) >= 40)
        yield stop()

        self.assertEqual([n for n in drained.seen if n >= cutoff], [])
        after = [answers[n] for n in answers if n >= cutoff]
        self.assertEqual(set(after), {(200, other.name.encode())})
        self.assertTrue(all(code == 200 for code, _ in answers.values()))

        # the held request is still in flight on the drained backend ...
        response = yield self.client.get(adminURL)
        view = yield response.json()
        [shown] = [b for b in view["backends"] if b["id"] == drained.name]
        self.assertEqual((shown["state"], shown["in_flight"]), ("drain", 1))
        self.assertNoResult(slow)
        # ... and completes with its whole body
        [held] = drained.held
        held.write(b"first half, ")
        held.write(b"second half")
        held.finish()
        response = yield slow
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"x-backend"), [drained.name.encode()])
        body = yield response.content()
        self.assertEqual(body, b"first half, second half")
        backend = [b for b in golb.runtime.pools["web"].backends if b.id == drained.name][0]
        yield waitUntil(lambda: backend.inFlight == 0)

        # a sticky client of the drained backend keeps reaching it
        cookie = b"golb_sticky=" + backend.stickyValue
        response = yield self.client.get(f"{proxy}/fast/100000",
                                         headers={b"Cookie": [cookie]})
        self.assertEqual((yield response.content()), drained.name.encode())
        self.assertEqual(drained.seen[-1], 100000)
