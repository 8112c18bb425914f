"""
Tests for L{golb.observe.logs}: golb's own log (JSON or text, by level,
installed into twistd) and the access log.
"""

import io
import json
import os
import re
import sys

from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.internet import defer, reactor, task
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import NOT_DONE_YET

from golb.config import AccessLogConfig, LoggingConfig
from golb.observe import Observatory, Observer, Record
from golb.observe.logs import (
    AccessLogObserver,
    AccessLogService,
    AccessLogWriter,
    LevelFilter,
    escape,
    formatJSONEvent,
    installLogObserver,
    jsonFields,
    logFileFor,
    logObserver,
)
from golb.test.support import (
    freePort,
    listenBackend,
    listenGolb,
    rawConnect,
    rawRequest,
    waitUntil,
)
from golb.test.test_e2e import Twistd
from golb.test.test_proxy import FunctionResource, ProxyTestCase, poolYAML

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

COMBINED = re.compile(
    r'^(?P<client>\S+) - (?P<user>"(?:[^"\\]|\\.)*"|\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>\S+) (?P<target>\S+) (?P<version>\S+)" (?P<status>\d+) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"(?P<extras>(?: \w+=(?:"[^"]*"|\S+))*)$'
)
CLF_TIME = re.compile(r"^\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000$")


def parseCombined(line: str) -> dict:
    """
    The fields of a combined access log line (extras included), or an
    assertion error if it does not parse.
    """
    match = COMBINED.match(line)
    assert match is not None, f"not a combined line: {line!r}"
    fields = match.groupdict()
    extras = fields.pop("extras")
    for key, value in re.findall(r' (\w+)=("[^"]*"|\S+)', extras):
        fields[key] = value
    return fields


def unescape(text: str) -> str:
    """
    Undo L{escape} (C{\\xHH} back to the byte, read as latin-1).
    """
    return re.sub(r"\\x([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def jsonLines(text: str) -> list:
    """
    Every line of C{text} parsed as JSON (failing on any that is not).
    """
    lines = text.split("\n")
    assert lines[-1] == "", f"output does not end with a newline: {text[-80:]!r}"
    return [json.loads(line) for line in lines[:-1]]


class JSONEventTests(SynchronousTestCase):
    """
    With C{format: json}, each log event is one line of JSON.
    """

    def emit(self, emit):
        lines = []
        log = Logger(namespace="golb.test", observer=lambda e: lines.append(formatJSONEvent(e)))
        emit(log)
        return [json.loads(line) for line in "".join(lines).splitlines()]

    def test_fields(self):
        """
        A line has the time (RFC 3339 UTC, milliseconds), the level, the
        namespace and the formatted message.
        """
        [line] = self.emit(lambda log: log.warn("{pool} down: {n} backends", pool="web", n=2))
        self.assertRegex(line["time"], RFC3339_MS)
        self.assertEqual((line["level"], line["namespace"], line["message"]),
                         ("warn", "golb.test", "web down: 2 backends"))
        self.assertNotIn("trace_id", line)
        self.assertNotIn("traceback", line)

    def test_time(self):
        """
        The time is the event's, in UTC, to the millisecond.
        """
        line = json.loads(formatJSONEvent({
            "log_time": 1714564800.123, "log_level": LogLevel.info,
            "log_namespace": "x", "log_format": "hi",
        }))
        self.assertEqual(line["time"], "2024-05-01T12:00:00.123Z")

    def test_failure(self):
        """
        A logged failure brings its traceback.
        """
        failure = Failure(ZeroDivisionError("division by zero"))
        [line] = self.emit(lambda log: log.failure("probe {name} failed", failure, name="p"))
        self.assertEqual((line["level"], line["message"]), ("critical", "probe p failed"))
        self.assertIn("ZeroDivisionError", line["traceback"])

    def test_traceIds(self):
        """
        An event logged during a traced request carries its trace and span
        ids: given as fields, or read from the request's record.
        """
        record = Record(started=0.0, traceId="4bf92f3577b34da6a3ce929d0e0e4736",
                        spanId="00f067aa0ba902b7")
        lines = self.emit(lambda log: (
            log.info("explicit", trace_id="t1", span_id="s1"),
            log.info("from {record.method!r}", record=record),
        ))
        self.assertEqual([(line["trace_id"], line["span_id"]) for line in lines],
                         [("t1", "s1"), (record.traceId, record.spanId)])

    def test_untraced(self):
        """
        A record without a trace adds no trace id.
        """
        [line] = self.emit(lambda log: log.info("x", record=Record(started=0.0)))
        self.assertNotIn("trace_id", line)

    def test_linePerEvent(self):
        """
        Messages with newlines, quotes, control and non-ASCII characters
        (line and paragraph separators too) still make one line per event.
        """
        messages = ['a\nb', 'say "hi"\r\n{"forged": 1}', "\x00\x1b[31m", "caf\u00e9 \u2028 \u2029",
                    "\\", "tab\there", ""]
        lines = self.emit(lambda log: [log.info("{m}", m=m) for m in messages])
        self.assertEqual([line["message"] for line in lines], messages)

    def test_legacy(self):
        """
        Events from the legacy C{twisted.python.log} API are formatted too.
        """
        from twisted.python import log as legacy

        lines = []

        def observer(event):
            lines.append(json.loads(formatJSONEvent(event)))

        legacy.addObserver(observer)
        self.addCleanup(legacy.removeObserver, observer)
        legacy.msg("old style")
        self.assertEqual([line["message"] for line in lines], ["old style"])


class LevelFilterTests(SynchronousTestCase):
    """
    Events below the configured level are dropped.
    """

    def logAll(self, level):
        events = []
        log = Logger(namespace="golb.x", observer=LevelFilter(events.append, level))
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        log.critical("c")
        return [event["log_format"] for event in events]

    def test_info(self):
        """
        At C{info}, debug events are dropped.
        """
        self.assertEqual(self.logAll("info"), ["i", "w", "e", "c"])

    def test_levels(self):
        """
        C{debug} keeps everything, C{warn} (or C{warning}) drops info,
        C{error} keeps errors and critical ones.
        """
        self.assertEqual(self.logAll("debug"), ["d", "i", "w", "e", "c"])
        self.assertEqual(self.logAll("warn"), ["w", "e", "c"])
        self.assertEqual(self.logAll("warning"), ["w", "e", "c"])
        self.assertEqual(self.logAll("error"), ["e", "c"])

    def test_setLevel(self):
        """
        The level can be changed while running (for a reload).
        """
        events = []
        filtering = LevelFilter(events.append, "info")
        log = Logger(namespace="golb.x", observer=filtering)
        filtering.setLevel("error")
        log.warn("w")
        filtering.setLevel("debug")
        log.debug("d")
        self.assertEqual([event["log_format"] for event in events], ["d"])

    def test_noNamespace(self):
        """
        Events without a namespace or a level are kept (not silently lost).
        """
        events = []
        filtering = LevelFilter(events.append, "info")
        filtering({"log_format": "no level", "log_namespace": "x"})
        filtering({"log_format": "no namespace", "log_level": LogLevel.info})
        filtering({"log_format": "dropped", "log_level": LogLevel.debug})
        self.assertEqual([e["log_format"] for e in events], ["no level", "no namespace"])

    def test_logObserver(self):
        """
        L{logObserver} writes JSON or twistd's text, filtered by level.
        """
        for format, check in [
            ("json", lambda text: self.assertEqual(
                [line["message"] for line in jsonLines(text)], ["shown"])),
            ("text", lambda text: self.assertRegex(text, r"^\S+ \[golb\.x#info\] shown\n$")),
        ]:
            out = io.StringIO()
            log = Logger(namespace="golb.x",
                         observer=logObserver(LoggingConfig(format=format), out))
            log.debug("hidden")
            log.info("shown")
            check(out.getvalue())


class InstallLogObserverTests(SynchronousTestCase):
    """
    L{installLogObserver} gives twistd golb's log observer through the
    application's L{ILogObserver} component, which twistd uses when it starts
    logging.
    """

    def test_installs(self):
        """
        With twistd's options (C{-n -l -}), the application gets an observer
        writing JSON at the configured level to standard output.
        """
        application = Application("golb")
        out = io.StringIO()
        observer = installLogObserver(
            application, {"logfile": "-", "nodaemon": True, "logger": None},
            LoggingConfig(format="json", level="info"), stdout=out)
        self.assertIs(application.getComponent(ILogObserver), observer)
        log = Logger(namespace="golb.x", observer=observer)
        log.debug("no")
        log.info("yes")
        self.assertEqual([line["message"] for line in jsonLines(out.getvalue())], ["yes"])

    def test_customLogger(self):
        """
        A C{--logger} given to twistd wins: nothing is installed.
        """
        application = Application("golb")
        self.assertIsNone(installLogObserver(
            application, {"logger": lambda: None, "nodaemon": True}, LoggingConfig()))
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_existing(self):
        """
        An application that already has an observer keeps it.
        """
        application = Application("golb")
        mine = []
        application.setComponent(ILogObserver, mine.append)
        self.assertIsNone(installLogObserver(application, {"nodaemon": True}, LoggingConfig()))
        self.assertEqual(application.getComponent(ILogObserver), mine.append)

    def test_notTwistd(self):
        """
        Without twistd's options (tests, embedding), nothing is installed.
        """
        self.assertIsNone(installLogObserver(Application("golb"), None, LoggingConfig()))

    def test_destinations(self):
        """
        Like twistd: standard output with C{-l -} or with C{-n} and no log
        file; a rotating log file when one is named; a daemon may not log to
        standard output.
        """
        out = io.StringIO()
        self.assertIs(logFileFor({"logfile": "-", "nodaemon": True}, out), out)
        self.assertIs(logFileFor({"logfile": None, "nodaemon": True}, out), out)
        path = os.path.abspath(self.mktemp())
        logFile = logFileFor({"logfile": path, "nodaemon": False}, out)
        self.addCleanup(logFile.close)
        self.assertIsInstance(logFile, LogFile)
        self.assertEqual(logFile.path, path)
        self.assertRaises(SystemExit, logFileFor, {"logfile": "-", "nodaemon": False}, out)


def record(**kw):
    """
    A finished L{Record} of a proxied request, with C{kw} changed.
    """
    values = dict(
        started=1714564800.25, finished=1714564800.5, listener="web", method="GET",
        client="10.0.0.7", host="example.com", target="/api/x?y=1", version="HTTP/1.1",
        userAgent="curl/8.0", referer="https://example.com/", route="api", pool="web",
        backend="10.0.0.1:3001", status=200, bytesIn=3, bytesOut=1234, upstreamSeconds=0.125,
        attempts=1, retries=0,
    )
    values.update(kw)
    return Record(**values)


class AccessLogFormatTests(SynchronousTestCase):
    """
    The access log's lines, from records.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.lines = []

    def observer(self, format):
        return AccessLogObserver(self.lines.append, format, clock=self.clock)

    def test_combined(self):
        """
        A combined line is Apache/nginx's combined format followed by golb's
        fields.
        """
        self.observer("combined").requestFinished(record())
        self.assertEqual(self.lines, [
            '10.0.0.7 - - [01/May/2024:12:00:00 +0000] "GET /api/x?y=1 HTTP/1.1" 200 1234 '
            '"https://example.com/" "curl/8.0" route=api pool=web backend=10.0.0.1:3001 '
            "duration=0.250 upstream_time=0.125 retries=0 error=- trace_id=-\n"
        ])

    def test_json(self):
        """
        A JSON line names every field.
        """
        self.observer("json").requestFinished(record(traceId="ab12", spanId="cd34"))
        [line] = jsonLines("".join(self.lines))
        self.assertEqual(line, {
            "time": "2024-05-01T12:00:00.250Z", "listener": "web", "client": "10.0.0.7",
            "user": None, "method": "GET", "target": "/api/x?y=1", "version": "HTTP/1.1",
            "host": "example.com", "status": 200, "bytes_in": 3, "bytes_out": 1234,
            "duration": 0.25, "upstream_time": 0.125, "route": "api", "pool": "web",
            "backend": "10.0.0.1:3001", "attempts": 1, "retries": 0, "error": None,
            "aborted": False, "trace_id": "ab12", "span_id": "cd34",
            "user_agent": "curl/8.0", "referer": "https://example.com/", "tls_client": None,
        })
        self.assertEqual(tuple(line), jsonFields)

    def test_abortedBeforeResponse(self):
        """
        A client that left before any response was sent is logged with 499.
        """
        observer = self.observer("combined")
        observer.requestFinished(record(status=0, aborted=True, bytesOut=0))
        observer.format = "json"
        observer.requestFinished(record(status=0, aborted=True, bytesOut=0))
        self.assertEqual(parseCombined(self.lines[0].rstrip("\n"))["status"], "499")
        line = json.loads(self.lines[1])
        self.assertEqual((line["status"], line["aborted"]), (499, True))

    def test_abortedMidBody(self):
        """
        A client that left during the body is logged with the status it got
        and the bytes sent; JSON says it was aborted.
        """
        self.observer("json").requestFinished(record(status=200, aborted=True, bytesOut=10))
        line = json.loads(self.lines[0])
        self.assertEqual((line["status"], line["bytes_out"], line["aborted"]), (200, 10, True))

    def test_rejected(self):
        """
        A rejected request's line has the time, the status and the error.
        """
        self.clock.advance(1714564800.5)
        observer = self.observer("combined")
        observer.requestRejected("web", 431, "headers-too-large")
        observer.format = "json"
        observer.requestRejected("web", 431, "headers-too-large")
        self.assertEqual(self.lines[0], (
            '- - - [01/May/2024:12:00:00 +0000] "-" 431 0 "-" "-" route=- pool=- backend=- '
            "duration=0.000 upstream_time=- retries=0 error=headers-too-large trace_id=-\n"))
        line = json.loads(self.lines[1])
        self.assertEqual(
            (line["time"], line["listener"], line["status"], line["error"], line["rejected"]),
            ("2024-05-01T12:00:00.500Z", "web", 431, "headers-too-large", True))

    def test_controlCharacters(self):
        """
        Newlines, quotes and control characters in request fields cannot
        break or forge a line: combined escapes them as C{\\xHH}, JSON as
        JSON does; non-ASCII bytes read as UTF-8 in JSON.
        """
        tricky = record(
            target='/a"b\r\n127.0.0.1 - - [x] "GET / HTTP/1.1" 200',
            userAgent='evil" 200 0 "-" "-"\n\x00\x1b\\',
            referer="caf\u00c3\u00a9 \u00ff",
        )
        combined = self.observer("combined")
        combined.requestFinished(tricky)
        json_ = self.observer("json")
        json_.requestFinished(tricky)
        text, js = self.lines
        self.assertEqual(text.count("\n"), 1)
        fields = parseCombined(text.rstrip("\n"))
        self.assertEqual(unescape(fields["target"]), tricky.target)
        self.assertEqual(unescape(fields["agent"]), tricky.userAgent)
        self.assertEqual(unescape(fields["referer"]), tricky.referer)
        self.assertTrue(text.isascii())
        line = json.loads(js)
        self.assertEqual((line["target"], line["user_agent"]), (tricky.target, tricky.userAgent))
        self.assertEqual(line["referer"], "caf\u00e9 \\xff")
        self.assertTrue(js.isascii())

    def test_user(self):
        """
        The user is the one named by the request's Basic credentials.
        """
        from twisted.web.http_headers import Headers

        class FakeRequest:
            requestHeaders = Headers({b"Authorization": [b"Basic YWxpY2U6c2VjcmV0"]})

        observer = self.observer("combined")
        started = record()
        observer.requestStarted(started, FakeRequest())
        observer.requestFinished(started)
        FakeRequest.requestHeaders = Headers({b"Authorization": [b"Bearer abc"]})
        other = record()
        observer.requestStarted(other, FakeRequest())
        observer.requestFinished(other)
        self.assertEqual([parseCombined(line.rstrip("\n"))["user"] for line in self.lines],
                         ["alice", "-"])

    def test_spacesInNames(self):
        """
        Configured names with spaces are quoted in golb's fields.
        """
        self.observer("combined").requestFinished(record(route="my api"))
        self.assertEqual(parseCombined(self.lines[0].rstrip("\n"))["route"], '"my api"')

    @given(st.text())
    def test_escapeProperty(self, text):
        """
        Escaped text is printable ASCII without quotes, and unescapes back
        (for the latin-1 text request fields are).
        """
        escaped = escape(text)
        self.assertTrue(all(" " <= c <= "~" for c in escaped))
        self.assertNotIn('"', escaped)
        if all(ord(c) < 256 for c in text):
            self.assertEqual(re.sub(r"\\x([0-9A-F]{2})",
                                    lambda m: chr(int(m.group(1), 16)), escaped), text)


class AccessLogWriterTests(SynchronousTestCase):
    """
    The writer buffers lines and writes them together.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.path = os.path.abspath(self.mktemp())
        self.observatory = Observatory(self.clock)
        self.service = AccessLogService(
            self.observatory, AccessLogConfig(format="combined", path=self.path),
            reactor=self.clock)

    def read(self):
        with open(self.path) as f:
            return f.read()

    def test_flushedPeriodically(self):
        """
        Lines reach the file on the next flush (every half second), not one
        write per request; stopping flushes and closes.
        """
        self.service.privilegedStartService()
        self.service.startService()
        self.service.observer.requestFinished(record())
        self.assertEqual(self.read(), "")
        self.clock.advance(0.5)
        self.assertEqual(len(self.read().splitlines()), 1)
        self.service.observer.requestFinished(record())
        self.service.stopService()
        self.assertEqual(len(self.read().splitlines()), 2)
        self.assertFalse(self.service.writer.isOpen)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_appends(self):
        """
        An existing file is appended to.
        """
        with open(self.path, "w") as f:
            f.write("old\n")
        self.service.startService()
        self.service.observer.requestFinished(record())
        self.service.stopService()
        self.assertEqual(self.read().splitlines()[0], "old")
        self.assertEqual(len(self.read().splitlines()), 2)

    def test_plugsIn(self):
        """
        The service is named C{access-log}; while running its observer is
        plugged into the observatory.
        """
        self.assertEqual(self.service.name, "access-log")
        self.service.startService()
        self.assertEqual(self.observatory.observers, [self.service.observer])
        self.service.stopService()
        self.assertEqual(self.observatory.observers, [])

    def test_manyLines(self):
        """
        When many lines wait they are written at once, without waiting for
        the timer.
        """
        writer = AccessLogWriter(self.path, maxPending=10)
        writer.open()
        for i in range(25):
            writer.write(f"{i}\n")
        self.assertEqual(len(self.read().splitlines()), 20)
        writer.close()
        self.assertEqual(len(self.read().splitlines()), 25)

    def test_reopen(self):
        """
        After the file is moved away (log rotation), C{reopen} writes to a
        new file at the path.
        """
        self.service.startService()
        self.service.observer.requestFinished(record())
        os.rename(self.path, self.path + ".1")
        self.service.reopen()
        self.service.observer.requestFinished(record())
        self.service.stopService()
        with open(self.path + ".1") as f:
            self.assertEqual(len(f.read().splitlines()), 1)
        self.assertEqual(len(self.read().splitlines()), 1)

    def test_cannotOpen(self):
        """
        A file that cannot be opened stops golb from starting, saying which.
        """
        path = os.path.join(self.path, "missing", "access.log")
        service = AccessLogService(self.observatory, AccessLogConfig(path=path),
                                   reactor=self.clock)
        error = self.assertRaises(RuntimeError, service.privilegedStartService)
        self.assertIn(f"cannot open the access log {path}", str(error))

    def test_writeError(self):
        """
        A failed write is logged and its lines dropped; later lines are
        written once writing works again.
        """

        class Broken(io.BytesIO):
            fail = True

            def write(self, data):
                if self.fail:
                    raise OSError(28, "No space left on device")
                return io.BytesIO.write(self, data)

        out = Broken()
        writer = AccessLogWriter("-", stdout=type("Out", (), {"buffer": out})())
        writer.open()
        writer.write("lost\n")
        writer.flush()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        out.fail = False
        writer.write("kept\n")
        writer.close()
        self.assertEqual(out.getvalue(), b"kept\n")

    def test_stdout(self):
        """
        C{-} writes to standard output (its binary buffer when it has one)
        and leaves it open.
        """
        text = io.StringIO()
        writer = AccessLogWriter("-", stdout=text)
        writer.open()
        writer.write("a\n")
        writer.close()
        self.assertEqual(text.getvalue(), "a\n")
        self.assertFalse(text.closed)


class SetTrace(Observer):
    """
    Stands for the tracer: sets the record's trace ids when a request starts.
    """

    def requestStarted(self, record, request):
        record.traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
        record.spanId = "00f067aa0ba902b7"


class AccessLogTests(ProxyTestCase):
    """
    The access log of real requests through golb.
    """

    def start(self, *ports, format="combined", extra="", tracer=False):
        golb, listening, site = listenGolb(self, poolYAML(*ports, extra=extra))
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        self.port = listening.getHost().port
        self.lines = []
        if tracer:
            golb.observatory.add(SetTrace())
        self.observer = AccessLogObserver(self.lines.append, format)
        golb.observatory.add(self.observer)
        return golb

    @defer.inlineCallbacks
    def oneLine(self):
        yield waitUntil(lambda: self.lines)
        [line] = self.lines
        self.assertTrue(line.endswith("\n"))
        return line[:-1]

    @defer.inlineCallbacks
    def test_proxied(self):
        """
        A proxied request's combined line has the client, the user, the
        request line, status, bytes sent, referer and user agent, then the
        route, pool, backend, timings, retries, no error and no trace.
        """
        port, backend = listenBackend(self)
        self.start(port.getHost().port)
        response, body = yield self.get("/x?y=1", headers={
            b"User-Agent": [b"probe/1"], b"Referer": [b"http://r/"],
            b"Authorization": [b"Basic Ym9iOnB3"],
        })
        fields = parseCombined((yield self.oneLine()))
        self.assertRegex(fields.pop("time"), CLF_TIME)
        duration = float(fields.pop("duration"))
        upstream = float(fields.pop("upstream_time"))
        self.assertGreaterEqual(duration, upstream)
        self.assertEqual(fields, {
            "client": "127.0.0.1", "user": "bob", "method": "GET", "target": "/x?y=1",
            "version": "HTTP/1.1", "status": "200", "bytes": str(len(body)),
            "referer": "http://r/", "agent": "probe/1", "route": "default", "pool": "default",
            "backend": f"127.0.0.1:{port.getHost().port}", "retries": "0", "error": "-",
            "trace_id": "-",
        })

    @defer.inlineCallbacks
    def test_proxiedJSON(self):
        """
        The JSON line of a proxied request names the same things.
        """
        port, backend = listenBackend(self)
        self.start(port.getHost().port, format="json")
        response = yield self.client.post(self.base + "/p", data=b"hello")
        body = yield response.content()
        line = json.loads((yield self.oneLine()))
        self.assertRegex(line["time"], RFC3339_MS)
        self.assertEqual(
            {k: line[k] for k in ("listener", "client", "method", "target", "status",
                                  "bytes_in", "bytes_out", "route", "pool", "backend",
                                  "attempts", "retries", "error", "aborted", "trace_id")},
            {"listener": "web", "client": "127.0.0.1", "method": "POST", "target": "/p",
             "status": 200, "bytes_in": 5, "bytes_out": len(body), "route": "default",
             "pool": "default", "backend": f"127.0.0.1:{port.getHost().port}",
             "attempts": 1, "retries": 0, "error": None, "aborted": False, "trace_id": None})
        self.assertGreaterEqual(line["duration"], line["upstream_time"])

    @defer.inlineCallbacks
    def test_golbError(self):
        """
        When golb answers itself (no backend: 503) the line has golb's error
        code, no backend and no upstream time.
        """
        port, _ = listenBackend(self)
        golb = self.start(port.getHost().port)
        for backend in golb.backends:
            backend.state = "maint"
        response, body = yield self.get("/")
        self.assertEqual(response.code, 503)
        fields = parseCombined((yield self.oneLine()))
        self.assertEqual(
            (fields["status"], fields["error"], fields["backend"], fields["upstream_time"],
             fields["bytes"]),
            ("503", "no-backend", "-", "-", str(len(body))))

    @defer.inlineCallbacks
    def test_retried(self):
        """
        A request retried after a dead backend shows one retry and the
        backend that answered.
        """
        port, backend = listenBackend(self)
        for format in ("combined", "json"):
            self.start(freePort(), port.getHost().port, format=format)
            response, body = yield self.get("/")
            self.assertEqual(response.code, 200)
            line = yield self.oneLine()
            if format == "combined":
                fields = parseCombined(line)
                self.assertEqual((fields["status"], fields["retries"], fields["backend"]),
                                 ("200", "1", f"127.0.0.1:{port.getHost().port}"))
            else:
                line = json.loads(line)
                self.assertEqual((line["attempts"], line["retries"], line["error"]),
                                 (2, 1, None))

    @defer.inlineCallbacks
    def test_aborted(self):
        """
        A client that leaves before the answer is logged with status 499.
        """
        held = []
        port, _ = listenBackend(self, FunctionResource(
            lambda request: held.append(request) or NOT_DONE_YET))
        self.start(port.getHost().port, format="json")
        client = yield rawConnect(self, self.port)
        client.transport.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        yield waitUntil(lambda: held)
        client.transport.loseConnection()
        line = json.loads((yield self.oneLine()))
        self.assertEqual((line["status"], line["aborted"], line["target"], line["bytes_out"]),
                         (499, True, "/slow", 0))

    @defer.inlineCallbacks
    def test_rejected(self):
        """
        A malformed request refused by the listener gets a line with its
        client, 400 and golb's error code.
        """
        self.start(freePort())
        yield rawRequest(self, self.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        line = yield self.oneLine()
        self.assertRegex(line, r'^127\.0\.0\.1 - - \[[^\]]+\] "-" 400 0 "-" "-" ')
        self.assertIn(" error=bad-request ", line)

    @defer.inlineCallbacks
    def test_traceId(self):
        """
        When the request is traced, the line carries its trace id (JSON:
        and span id).
        """
        port, _ = listenBackend(self)
        self.start(port.getHost().port, tracer=True)
        yield self.get("/")
        fields = parseCombined((yield self.oneLine()))
        self.assertEqual(fields["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736")
        self.lines[:] = []
        self.observer.format = "json"
        yield self.get("/")
        line = json.loads((yield self.oneLine()))
        self.assertEqual((line["trace_id"], line["span_id"]),
                         ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))

    @defer.inlineCallbacks
    def test_trickyUserAgents(self):
        """
        Many requests with quotes, backslashes, tabs, non-ASCII and attempts
        to forge a line in their target, user agent and referer give exactly
        one parsable line each, in both formats, with the values intact.
        """
        port, _ = listenBackend(self)
        self.start(port.getHost().port)
        agents = [
            b'evil" 200 0 "-" "-" route=x',
            b'back\\slash\\" "',
            b"tab\there",
            "caf\u00e9 \u2028".encode("utf-8"),
            b"\xff\xfe raw",
            b'"',
            b"",
        ]
        sent = []
        for format in ("combined", "json"):
            self.observer.format = format
            for i in range(40):
                agent = agents[i % len(agents)] + b" %d" % (i,)
                target = b'/q?x="%d"&y=\\' % (i,)
                sent.append((target, agent))
                yield rawRequest(self, self.port,
                                 b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: "
                                 + agent + b"\r\nReferer: " + agent + b"\r\n"
                                 b"Connection: close\r\n\r\n")
        yield waitUntil(lambda: len(self.lines) == len(sent))
        text = "".join(self.lines)
        self.assertTrue(text.isascii())
        lines = text.split("\n")
        self.assertEqual(lines[-1], "")
        self.assertEqual(len(lines) - 1, 80)
        for line, (target, agent) in zip(lines[:40], sent[:40]):
            fields = parseCombined(line)
            self.assertEqual(fields["status"], "200")
            self.assertEqual(unescape(fields["target"]), target.decode("latin-1"))
            self.assertEqual(unescape(fields["agent"]), agent.decode("latin-1").strip())
            self.assertEqual(unescape(fields["referer"]), agent.decode("latin-1").strip())
        for line, (target, agent) in zip(lines[40:80], sent[40:]):
            parsed = json.loads(line)
            self.assertEqual(parsed["status"], 200)
            self.assertEqual(parsed["target"], target.decode("utf-8"))
            self.assertEqual(parsed["user_agent"],
                             agent.strip().decode("utf-8", "backslashreplace"))


class AccessLogServiceTests(ProxyTestCase):
    """
    The access log service writes real requests to its file.
    """

    @defer.inlineCallbacks
    def test_file(self):
        """
        With C{path} a file, each request is one JSON line in it once the
        service stops (or the next flush).
        """
        port, _ = listenBackend(self)
        golb, listening, site = listenGolb(self, poolYAML(port.getHost().port))
        self.base = f"http://127.0.0.1:{listening.getHost().port}"
        path = os.path.abspath(self.mktemp())
        service = AccessLogService(golb.observatory, AccessLogConfig(format="json", path=path))
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        for i in range(3):
            yield self.get(f"/{i}")
        yield waitUntil(lambda: os.path.getsize(path) > 0)
        service.stopService()
        with open(path) as f:
            lines = jsonLines(f.read())
        self.assertEqual([line["target"] for line in lines], ["/0", "/1", "/2"])
        self.assertEqual(golb.observatory.observers, [])


class SplitTwistd(Twistd):
    """
    A twistd process whose standard output is also kept on its own.
    """

    def __init__(self):
        Twistd.__init__(self)
        self.stdout = b""

    def outReceived(self, data):
        self.stdout += data
        Twistd.outReceived(self, data)

    def errReceived(self, data):
        Twistd.outReceived(self, data)


class TwistdLogTests(TestCase):
    """
    C{twistd -n golb} logs golb's way.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_jsonStdout(self):
        """
        With C{format: json} and a JSON access log on standard output, every
        line twistd writes there is JSON: golb's log lines (twistd's own
        included) with time, level, namespace and message, and one access
        line per request.
        """
        import treq

        port, _ = listenBackend(self)
        listen = freePort()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"""\
listeners: [{{name: web, address: "127.0.0.1:{listen}"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
admin: {{enabled: false}}
monitoring:
  prometheus: {{enabled: false}}
  logging: {{format: json, level: info, access_log: {{format: json, path: "-"}}}}
""")
        protocol = SplitTwistd()
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "-l", "-", "golb", "--config", path]
        process = reactor.spawnProcess(protocol, sys.executable, argv, env=dict(os.environ))

        def stop():
            if not protocol.ended.called:
                try:
                    process.signalProcess("TERM")
                except ProcessExitedAlready:
                    pass
                return protocol.ended

        self.addCleanup(stop)
        yield protocol.ready
        for agent in (b"curl/8", b'say "hi"', "caf\u00e9".encode("utf-8")):
            response = yield treq.get(f"http://127.0.0.1:{listen}/x",
                                      headers={b"User-Agent": [agent]}, persistent=False)
            yield response.content()
            self.assertEqual(response.code, 200)
        yield stop()
        lines = jsonLines(protocol.stdout.decode("ascii"))
        access = [line for line in lines if "status" in line]
        logs = [line for line in lines if "status" not in line]
        self.assertEqual([line["user_agent"] for line in access],
                         ["curl/8", 'say "hi"', "caf\u00e9"])
        self.assertTrue(all(line["target"] == "/x" for line in access))
        for line in logs:
            self.assertRegex(line["time"], RFC3339_MS)
            self.assertIn(line["level"], ("debug", "info", "warn", "error", "critical"))
        self.assertIn("info", [line["level"] for line in logs])
        self.assertNotIn("debug", [line["level"] for line in logs])
        started = [line for line in logs if line["message"].startswith("golb ")]
        self.assertTrue(started and "started" in started[0]["message"], logs)
