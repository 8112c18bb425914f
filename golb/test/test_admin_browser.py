"""
The admin pages in a real browser: headless Chromium (Debian package
C{chromium}) driven through its DevTools protocol over
C{--remote-debugging-pipe} (NUL-separated JSON on file descriptors 3 and 4
of the child process), so no WebSocket client is needed.

This test fails, never skips, when Chromium is missing.
"""

import json
import os
import shutil

import treq
from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from golb._units import Address
from golb.admin import AdminService
from golb.app import Golb
from golb.config import parseConfig

# Every single wait of this test is bounded by this many seconds.
TIMEOUT = 20.0


class DevToolsError(Exception):
    """
    Chromium answered a command with an error, or went away.
    """


class DevTools(ProcessProtocol):
    """
    A Chromium child process and its DevTools pipe: commands are written to
    its fd 3, answers and events read from its fd 4.

    @ivar ended: a L{Deferred} firing when the process is gone.
    @ivar stderr: the last few KiB Chromium wrote to stderr (for failures).
    """

    def __init__(self):
        self._buffer = b""
        self._pending = {}
        self._nextId = 0
        self.ended = defer.Deferred()
        self.stderr = b""
        self.running = False

    def connectionMade(self):
        self.running = True

    def childDataReceived(self, childFD, data):
        if childFD != 4:
            self.stderr = (self.stderr + data)[-4096:]
            return
        self._buffer += data
        while b"\0" in self._buffer:
            message, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(message)
            waiting = self._pending.pop(answer.get("id"), None)
            if waiting is None:
                continue  # an event
            if "error" in answer:
                waiting.errback(DevToolsError(json.dumps(answer["error"])))
            else:
                waiting.callback(answer.get("result", {}))

    def processEnded(self, reason):
        self.running = False
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.errback(DevToolsError("chromium exited: "
                                          + self.stderr.decode("utf-8", "replace")))
        self.ended.callback(None)

    def send(self, method, params=None, sessionId=None):
        """
        Send one command.

        @return: a L{Deferred} firing with its result (failing after
            L{TIMEOUT} seconds).
        """
        if not self.running:
            return defer.fail(DevToolsError("chromium is not running: "
                                            + self.stderr.decode("utf-8", "replace")))
        self._nextId += 1
        message = {"id": self._nextId, "method": method, "params": params or {}}
        if sessionId is not None:
            message["sessionId"] = sessionId
        d = self._pending[self._nextId] = defer.Deferred()
        self.transport.writeToChild(3, json.dumps(message).encode("utf-8") + b"\0")
        return d.addTimeout(TIMEOUT, reactor)


class Page:
    """
    One browser tab, attached with a flat DevTools session.
    """

    def __init__(self, devtools: DevTools, sessionId: str):
        self.devtools = devtools
        self.sessionId = sessionId

    @defer.inlineCallbacks
    def evaluate(self, expression: str):
        """
        The value of a JavaScript expression in the page.
        """
        result = yield self.devtools.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        }, self.sessionId)
        if "exceptionDetails" in result:
            raise DevToolsError(json.dumps(result["exceptionDetails"]))
        return result["result"].get("value")

    @defer.inlineCallbacks
    def waitFor(self, expression: str, what: str):
        """
        Evaluate C{expression} until it is true (a page being replaced
        answers errors meanwhile), for at most L{TIMEOUT} seconds.
        """
        deadline = reactor.seconds() + TIMEOUT
        last = None
        while True:
            try:
                if (yield self.evaluate(expression)):
                    return
            except DevToolsError as e:
                last = e
            if reactor.seconds() > deadline:
                raise AssertionError(f"{what}: not within {TIMEOUT}s (last error: {last})")
            yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def navigate(self, url: str):
        yield self.devtools.send("Page.navigate", {"url": url}, self.sessionId)
        yield self.waitFor(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            f"loading {url}")


@defer.inlineCallbacks
def startChromium(testCase):
    """
    Start headless Chromium for the duration of C{testCase} and open a tab.

    @return: a L{Page}.
    """
    chromium = shutil.which("chromium")
    if chromium is None:
        testCase.fail("chromium is not installed: the admin browser test needs the Debian"
                      " package chromium (apt-get install -y chromium), which .ci/run installs")
    profile = os.path.abspath(testCase.mktemp())
    os.makedirs(profile)
    devtools = DevTools()
    process = reactor.spawnProcess(
        devtools, chromium,
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
         "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-sync",
         "--disable-dev-shm-usage", "about:blank"],
        env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})

    @defer.inlineCallbacks
    def stop():
        if devtools.running:
            try:
                yield devtools.send("Browser.close").addTimeout(3, reactor)
            except Exception:
                pass
        if devtools.running:
            process.signalProcess("KILL")
        yield devtools.ended

    testCase.addCleanup(stop)
    target = yield devtools.send("Target.createTarget", {"url": "about:blank"})
    session = yield devtools.send("Target.attachToTarget",
                                  {"targetId": target["targetId"], "flatten": True})
    page = Page(devtools, session["sessionId"])
    yield devtools.send("Page.enable", sessionId=page.sessionId)
    return page


class BrowserTests(TestCase):
    """
    The overview and pool pages in headless Chromium.
    """

    timeout = 60

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.golb = Golb(parseConfig("""\
listeners: [{name: web, address: "127.0.0.1:0"}]
backend_pools:
  - name: web
    backends:
      - {url: "http://127.0.0.1:1", name: b1}
      - {url: "http://127.0.0.1:2", name: b2}
  - name: api
    algorithm: least_connections
    backends: [{url: "http://127.0.0.1:3"}]
""", "browser.yaml"), reactor=reactor)
        self.addCleanup(self.golb.close)
        self.admin = AdminService(self.golb, reactor, ready=lambda: True,
                                  address=Address("127.0.0.1", 0))
        self.admin.startService()
        self.addCleanup(self.admin.stopService)
        self.base = f"http://127.0.0.1:{self.admin.port.getHost().port}"

    @defer.inlineCallbacks
    def state(self, backend):
        response = yield self.client.get(f"{self.base}/api/v1/pools/web/backends/{backend}")
        data = yield response.json()
        return data["state"]

    @defer.inlineCallbacks
    def test_drainFromThePage(self):
        """
        The overview lists the pools; the pool page shows each backend and
        its state; clicking "drain" drains the backend (as the API then
        says) and the page shows it; a change made elsewhere appears on the
        open page without reloading it.
        """
        page = yield startChromium(self)
        yield page.navigate(self.base + "/")
        pools = yield page.evaluate(
            "Array.from(document.querySelectorAll('a[href^=\"/pools/\"]'))"
            ".map(a => a.textContent)")
        self.assertEqual(pools, ["web", "api"])
        self.assertEqual((yield page.evaluate("document.title")), "Overview \u00b7 golb admin")

        yield page.navigate(self.base + "/pools/web")
        states = yield page.evaluate(
            "Array.from(document.querySelectorAll('tr[data-backend]'))"
            ".map(tr => [tr.dataset.backend, tr.querySelector('.state').textContent])")
        self.assertEqual(states, [["b1", "ready"], ["b2", "ready"]])

        yield page.evaluate("window.golbBefore = true; document.querySelector("
                            "'button[data-action=\"drain\"][data-backend=\"b1\"]').click()")
        yield page.waitFor("window.golbBefore === undefined && document.readyState ==="
                           " 'complete' && location.pathname === '/pools/web'",
                           "the page after clicking drain")
        self.assertEqual((yield self.state("b1")), "drain")
        self.assertEqual((yield self.state("b2")), "ready")
        shown = yield page.evaluate(
            "document.querySelector('tr[data-backend=\"b1\"] .state').textContent")
        self.assertEqual(shown, "drain")
        self.assertEqual(self.admin.audit.recent()[0]["via"], "page")

        # the open page follows a change made through the API, without a reload
        yield page.evaluate("window.golbMarker = 1")
        response = yield self.client.request(
            "PATCH", f"{self.base}/api/v1/pools/web/backends/b2",
            data=b'{"state": "maint"}', headers={b"Content-Type": [b"application/json"]})
        self.assertEqual(response.code, 200)
        yield response.content()
        yield page.waitFor(
            "document.querySelector('tr[data-backend=\"b2\"] .state').textContent === 'maint'",
            "the pool page showing b2 in maint")
        self.assertEqual((yield page.evaluate("window.golbMarker")), 1)
        self.assertEqual(
            (yield page.evaluate("document.querySelector('tr[data-backend=\"b2\"] .state')"
                                 ".className")), "state state-maint")
