"""
golb's logs: its own log (twistd's text or one JSON object per line,
filtered by level) and the access log (one line per request, Apache/nginx
C{combined} or JSON).

golb's own log goes wherever twistd sends its log (C{-l/--logfile},
standard output with C{-n}, C{--syslog}).  twistd builds the application
(C{makeService}) before it starts logging and uses an
L{twisted.logger.ILogObserver} component set on the application as its log
observer: L{installLogObserver}, called when twistd makes golb's root
service a child of its application, sets one built from twistd's own
options and C{monitoring.logging}.  A C{--logger} given to twistd wins.

The access log is an L{golb.observe.Observer} (L{AccessLogObserver}) writing
through a buffered L{AccessLogWriter}; the L{AccessLogService} owns both.
"""

import base64
import binascii
import json
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet import task
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    Logger,
    LoggingFile,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

from golb.observe import Observer

__all__ = [
    "ABORTED_STATUS",
    "AccessLogObserver",
    "AccessLogService",
    "AccessLogWriter",
    "LevelFilter",
    "escape",
    "formatJSONEvent",
    "installLogObserver",
    "jsonFields",
    "logFileFor",
    "logObserver",
]

log = Logger()

# The status logged for a request whose client left before any response
# was sent (nginx's "client closed request").
ABORTED_STATUS = 499

# How often buffered access log lines are written out, in seconds.
FLUSH_INTERVAL = 0.5

# Buffered lines written out at once, whatever the time.
MAX_PENDING_LINES = 1000


# golb's own log

def _rfc3339(seconds: float) -> str:
    """
    C{seconds} since the epoch as RFC 3339 UTC with milliseconds
    (C{2024-05-01T12:00:00.123Z}).
    """
    whole, millis = divmod(int(round(seconds * 1000)), 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{millis:03d}Z"


_jsonEncoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def _traceIds(event: Dict[str, Any]):
    traceId = event.get("trace_id")
    spanId = event.get("span_id")
    if traceId is None:
        record = event.get("record")
        if record is not None:
            traceId = getattr(record, "traceId", None)
            spanId = spanId or getattr(record, "spanId", None)
    return traceId, spanId


def formatJSONEvent(event: Dict[str, Any]) -> str:
    """
    One log event as one line of JSON: C{time} (RFC 3339 UTC, milliseconds),
    C{level}, C{namespace}, C{message} (the event's format filled in),
    C{system} when the event names one, C{traceback} when it carries a
    failure, and C{trace_id} / C{span_id} when it happened during a traced
    request: given as the event's C{trace_id} / C{span_id} fields, or read
    from a L{golb.observe.Record} passed as its C{record} field
    (C{log.info("...", record=record)}).

    @return: the line, ending with a newline; only ASCII (anything else is
        escaped), so no field can break it.
    """
    when = event.get("log_time")
    level = event.get("log_level")
    line: Dict[str, Any] = {
        "time": _rfc3339(when) if when is not None else None,
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace") or "-",
        "message": formatEvent(event),
    }
    system = event.get("log_system")
    if system is not None and system != "-":
        line["system"] = str(system)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            line["traceback"] = failure.getTraceback()
        except Exception:
            line["traceback"] = "(unable to format the traceback)"
    traceId, spanId = _traceIds(event)
    if traceId is not None:
        line["trace_id"] = str(traceId)
        if spanId is not None:
            line["span_id"] = str(spanId)
    return _jsonEncoder.encode(line) + "\n"


def _logLevel(name: str):
    return LogLevel.levelWithName("warn" if name == "warning" else name)


class _LevelPredicate(LogLevelFilterPredicate):
    """
    L{LogLevelFilterPredicate} that passes events without a level or a
    namespace (it would drop them) through the default level instead.
    """

    def __call__(self, event):
        level = event.get("log_level")
        if level is None:
            return PredicateResult.maybe
        if not event.get("log_namespace"):
            if level < self.logLevelForNamespace(""):
                return PredicateResult.no
            return PredicateResult.maybe
        return LogLevelFilterPredicate.__call__(self, event)


@implementer(ILogObserver)
class LevelFilter:
    """
    A log observer passing on the events at or above a level.

    @ivar predicate: the L{LogLevelFilterPredicate} (per-namespace levels
        may be set on it).
    """

    def __init__(self, observer, level: str = "info"):
        """
        @param observer: the L{ILogObserver} the kept events go to.
        @param level: C{debug}, C{info}, C{warn} or C{error}.
        """
        self.observer = observer
        self.predicate = _LevelPredicate(defaultLogLevel=_logLevel(level))
        self._filtering = FilteringLogObserver(observer, [self.predicate])

    def __call__(self, event) -> None:
        self._filtering(event)

    def setLevel(self, level: str) -> None:
        """
        Keep the events at or above C{level} from now on (for a reload).
        """
        self.predicate.defaultLogLevel = _logLevel(level)
        self.predicate.setLogLevelForNamespace("", self.predicate.defaultLogLevel)


def logObserver(logging, outFile) -> LevelFilter:
    """
    The observer writing golb's log to C{outFile} as C{logging} says.

    @param logging: a L{golb.config.LoggingConfig} (C{level}, C{format}).
    @param outFile: a file-like object taking text (or bytes).
    @return: a L{LevelFilter} over twistd's text format or L{formatJSONEvent}.
    """
    if logging.format == "json":
        inner = FileLogObserver(outFile, formatJSONEvent)
    else:
        inner = textFileLogObserver(outFile)
    return LevelFilter(inner, logging.level)


def logFileFor(serverOptions, stdout=None):
    """
    Where twistd would write its log given its options: standard output
    for C{-l -}, or with C{-n} and no C{--logfile}; else a
    L{twisted.python.logfile.LogFile} (C{twistd.log} for a daemon without
    C{--logfile}).

    @param serverOptions: twistd's parsed options (C{logfile},
        C{nodaemon}).
    @param stdout: the standard output to use (default C{sys.stdout}).
    @raise SystemExit: for a daemon told to log to standard output, as
        twistd does.
    """
    if stdout is None:
        stdout = sys.stdout
    path = serverOptions.get("logfile") or ""
    nodaemon = serverOptions.get("nodaemon", True)
    if path == "-":
        if not nodaemon:
            raise SystemExit("Daemons cannot log to stdout, exiting!")
        return stdout
    if nodaemon and not path:
        return stdout
    from twisted.python.logfile import LogFile

    return LogFile.fromFullPath(path or "twistd.log")


def _syslogObserver(serverOptions, logging) -> LevelFilter:
    from twisted.python import syslog

    if logging.format == "json":
        log.warn("monitoring.logging.format json does not apply to --syslog: text is used")
    emit = syslog.SyslogObserver(serverOptions.get("prefix") or "").emit
    return LevelFilter(LegacyLogObserverWrapper(emit), logging.level)


def _rotateOnSIGUSR1(logFile) -> None:
    # What twistd does for its own log file.
    import signal

    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame):
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)

        signal.signal(signal.SIGUSR1, rotate)


def installLogObserver(application, serverOptions, logging, stdout=None):
    """
    Make twistd log golb's way: set the L{ILogObserver} component of
    C{application}, which twistd uses instead of its own observer when it
    starts logging (after building the application).  The observer writes
    where twistd would have (see L{logFileFor}; C{--syslog} goes to syslog
    in the text format), in C{logging}'s format and level.  Nothing is done
    without twistd's options, with a C{--logger} given to twistd, or when
    the application already has an observer.

    @param application: what twistd makes golb's root service a child of
        (a L{twisted.python.components.Componentized}).
    @param serverOptions: twistd's parsed options (golb's L{Options}'
        C{parent}), or L{None}.
    @param logging: a L{golb.config.LoggingConfig}.
    @param stdout: the standard output to use (default C{sys.stdout}).
    @return: the L{LevelFilter} set, or L{None}.
    """
    if serverOptions is None or not hasattr(application, "setComponent"):
        return None
    if serverOptions.get("logger") or application.getComponent(ILogObserver, None) is not None:
        return None
    if serverOptions.get("syslog"):
        observer = _syslogObserver(serverOptions, logging)
    else:
        outFile = logFileFor(serverOptions, stdout)
        if hasattr(outFile, "rotate"):
            _rotateOnSIGUSR1(outFile)
        observer = logObserver(logging, outFile)
    application.setComponent(ILogObserver, observer)
    return observer


# The access log

_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def _escapeMatch(match) -> str:
    code = ord(match.group())
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}"


def escape(text: str) -> str:
    """
    C{text} safe inside a quoted access log field: quotes, backslashes and
    every character outside printable ASCII become C{\\xHH} (as nginx does),
    so a line cannot be forged or broken.
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escapeMatch, text)


_UNSAFE_TOKEN = re.compile(r'[^\x21\x23-\x5b\x5d-\x7e]')


def _token(text: str) -> str:
    # A part of the request line: escaped like escape(), spaces too.
    if _UNSAFE_TOKEN.search(text) is None:
        return text or "-"
    return _UNSAFE_TOKEN.sub(_escapeMatch, text)


def _bare(text: Optional[str]) -> str:
    # An unquoted field: "-" when empty, escaped and quoted when it has a
    # space or anything unsafe.
    if not text:
        return "-"
    if _UNSAFE.search(text) is None and " " not in text:
        return text
    return '"' + escape(text) + '"'


def _jsonText(text: Optional[str]) -> Optional[str]:
    # Request fields are bytes read as latin-1: show them as the UTF-8 they
    # most likely are, undecodable bytes as \xHH.
    if not text or text.isascii():
        return text
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        return text
    return raw.decode("utf-8", "backslashreplace")


_quote = json.encoder.encode_basestring_ascii


def _jsonString(text: Optional[str]) -> str:
    # A request field as a JSON string (null when empty), only ASCII.
    if not text:
        return "null"
    return _quote(text if text.isascii() else _jsonText(text))


def _basicUser(value: bytes) -> Optional[str]:
    scheme, _, credentials = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[0].decode("latin-1") or None


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessLogObserver(Observer):
    """
    Writes one line per finished request, and one per request the listener
    rejected as malformed.

    C{combined} is Apache/nginx's combined format (the time is when the
    request head arrived, in UTC) followed by golb's own fields::

        CLIENT - USER [TIME] "METHOD TARGET VERSION" STATUS BYTES "REFERER"
        "USER-AGENT" route=R pool=P backend=B duration=S upstream_time=S
        retries=N error=E trace_id=T

    C{json} is one object per line with the same and a few more fields (see
    L{jsonFields}).  A client that left before any response was sent is
    logged with status 499 (L{ABORTED_STATUS}); one that left mid-body with
    the status it got (JSON: C{aborted} true).  Request fields (target,
    user agent, referer, user) are escaped: a line cannot be forged.

    @ivar write: called with each line (text ending in a newline).
    """

    def __init__(self, write: Callable[[str], None], format: str = "combined",
                 clock=None):
        """
        @param write: called with each line.
        @param format: C{combined} or C{json}.
        @param clock: an C{IReactorTime}, for the time of rejected requests.
        """
        if format not in ("combined", "json"):
            raise ValueError(f"unknown access log format {format!r}")
        if clock is None:
            from twisted.internet import reactor as clock
        self.write = write
        self.format = format
        self.clock = clock
        self._names: Dict[Optional[str], str] = {}
        self._jsonNames: Dict[Optional[str], str] = {}
        self._clfSecond = -1
        self._clfTime = ""
        self._isoSecond = -1
        self._isoTime = ""

    def requestStarted(self, record, request) -> None:
        """
        Remember the user named by Basic credentials, and the verified TLS
        client certificate's subject, if any.
        """
        auth = request.requestHeaders.getRawHeaders(b"authorization")
        if auth:
            user = _basicUser(auth[0])
            if user is not None:
                record.extra["user"] = user
        subject = getattr(request, "tlsClientSubject", None)
        subject = subject() if subject is not None else None
        if subject:
            record.extra["tls_client"] = subject

    def requestFinished(self, record) -> None:
        """
        Write C{record}'s line.
        """
        if self.format == "combined":
            self.write(self.combinedLine(record))
        else:
            self.write(self.jsonLine(record))

    def requestRejected(self, listener: str, status: int, error: str, client: str = "") -> None:
        """
        Write a line for a request the listener refused: its client is known,
        its method and target are not.
        """
        now = self.clock.seconds()
        if self.format == "combined":
            self.write(f'{_bare(client)} - - [{self._clf(now)}] "-" {status:d} 0 "-" "-" '
                       f"route=- pool=- backend=- duration=0.000 upstream_time=- retries=0 "
                       f"error={_bare(error)} trace_id=-\n")
        else:
            fields = dict.fromkeys(_JSON_KEYS)
            fields.update(time=self._iso(now), listener=listener, status=status,
                          client=client or None,
                          bytes_in=0, bytes_out=0, duration=0.0, attempts=0, retries=0,
                          error=error, aborted=False, rejected=True)
            self.write(_jsonEncoder.encode(fields) + "\n")

    def _clf(self, seconds: float) -> str:
        second = int(seconds)
        if second != self._clfSecond:
            t = time.gmtime(second)
            self._clfTime = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
                             f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")
            self._clfSecond = second
        return self._clfTime

    def _iso(self, seconds: float) -> str:
        second, millis = divmod(int(round(seconds * 1000)), 1000)
        if second != self._isoSecond:
            self._isoTime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._isoSecond = second
        return f"{self._isoTime}.{millis:03d}Z"

    def _name(self, name: Optional[str]) -> str:
        # Route, pool and backend names come from the configuration: few,
        # so their escaped forms are kept.
        bare = self._names.get(name)
        if bare is None:
            if len(self._names) > 10000:
                self._names.clear()
            bare = self._names[name] = _bare(name)
        return bare

    def combinedLine(self, record) -> str:
        """
        C{record} in the combined format (see the class docstring).
        """
        status = record.status or (ABORTED_STATUS if record.aborted else 0)
        upstream = record.upstreamSeconds
        upstream = "-" if upstream is None else f"{upstream:.3f}"
        return (
            f"{record.client or '-'} - {_bare(record.extra.get('user'))} "
            f"[{self._clf(record.started)}] "
            f'"{_token(record.method)} {_token(record.target)} {_token(record.version)}" '
            f"{status:d} {record.bytesOut:d} "
            f'"{escape(record.referer) or "-"}" "{escape(record.userAgent) or "-"}" '
            f"route={self._name(record.route)} pool={self._name(record.pool)} "
            f"backend={self._name(record.backend)} duration={record.duration:.3f} "
            f"upstream_time={upstream} retries={record.retries:d} "
            f"error={record.error or '-'} trace_id={_bare(record.traceId)}\n"
        )

    def _jsonName(self, name: Optional[str]) -> str:
        # Configured names as JSON, kept like _name's.
        quoted = self._jsonNames.get(name)
        if quoted is None:
            if len(self._jsonNames) > 10000:
                self._jsonNames.clear()
            quoted = self._jsonNames[name] = _jsonString(name)
        return quoted

    def jsonLine(self, record) -> str:
        """
        C{record} as one JSON object (keys: L{jsonFields}).  Built as text,
        not with L{json.dumps}: twice as fast, the same JSON.
        """
        upstream = record.upstreamSeconds
        status = record.status or (ABORTED_STATUS if record.aborted else 0)
        return (
            f'{{"time":"{self._iso(record.started)}",'
            f'"listener":{self._jsonName(record.listener)},'
            f'"client":{_jsonString(record.client)},'
            f'"user":{_jsonString(record.extra.get("user"))},'
            f'"method":{_jsonString(record.method)},'
            f'"target":{_jsonString(record.target)},'
            f'"version":{_jsonString(record.version)},'
            f'"host":{_jsonString(record.host)},'
            f'"status":{status:d},'
            f'"bytes_in":{record.bytesIn:d},'
            f'"bytes_out":{record.bytesOut:d},'
            f'"duration":{round(record.duration, 6)!r},'
            f'"upstream_time":{"null" if upstream is None else repr(round(upstream, 6))},'
            f'"route":{self._jsonName(record.route)},'
            f'"pool":{self._jsonName(record.pool)},'
            f'"backend":{self._jsonName(record.backend)},'
            f'"attempts":{record.attempts:d},'
            f'"retries":{record.retries:d},'
            f'"error":{_jsonString(record.error)},'
            f'"aborted":{"true" if record.aborted else "false"},'
            f'"trace_id":{_jsonString(record.traceId)},'
            f'"span_id":{_jsonString(record.spanId)},'
            f'"user_agent":{_jsonString(record.userAgent)},'
            f'"referer":{_jsonString(record.referer)},'
            f'"tls_client":{_jsonString(record.extra.get("tls_client"))}}}\n'
        )


_JSON_KEYS = (
    "time", "listener", "client", "user", "method", "target", "version", "host",
    "status", "bytes_in", "bytes_out", "duration", "upstream_time", "route", "pool",
    "backend", "attempts", "retries", "error", "aborted", "trace_id", "span_id",
    "user_agent", "referer", "tls_client",
)

# The keys of a JSON access log line (rejected requests add "rejected": true).
jsonFields = _JSON_KEYS


def _standardOutput():
    out = sys.stdout
    if isinstance(out, LoggingFile):
        # twistd has redirected it into the log: write where it went before.
        out = sys.__stdout__
    return out


class AccessLogWriter:
    """
    Appends lines to a file or to standard output.  Lines are kept in memory
    and written out together when L{flush} is called (the L{AccessLogService}
    calls it every L{FLUSH_INTERVAL} seconds) or when L{MAX_PENDING_LINES}
    are waiting, so the reactor makes one C{write} for many requests.

    @ivar path: C{-} for standard output, else a file path.
    @ivar pending: the lines not yet written.
    """

    def __init__(self, path: str, stdout=None, maxPending: int = MAX_PENDING_LINES):
        """
        @param path: C{-} for standard output, else a file path (opened for
            appending by L{open}).
        @param stdout: the standard output (default: C{sys.stdout}, or the
            original one when twistd has redirected it into its log).
        @param maxPending: write out as soon as this many lines wait.
        """
        self.path = path
        self.stdout = stdout
        self.maxPending = maxPending
        self.pending: List[str] = []
        self._file: Any = None
        self._binary = True

    def open(self) -> None:
        """
        Open the file for appending (creating it), or take standard output.

        @raise OSError: when the file cannot be opened.
        """
        if self.path == "-":
            out = self.stdout if self.stdout is not None else _standardOutput()
            self._file = getattr(out, "buffer", None)
            self._binary = self._file is not None
            if self._file is None:
                self._file = out
        else:
            self._file = open(self.path, "ab")
            self._binary = True

    @property
    def isOpen(self) -> bool:
        """
        Whether L{open} was called (and not L{close}).
        """
        return self._file is not None

    def write(self, line: str) -> None:
        """
        Queue C{line} (text ending in a newline).
        """
        pending = self.pending
        pending.append(line)
        if len(pending) >= self.maxPending:
            self.flush()

    def flush(self) -> None:
        """
        Write out the queued lines.  Errors are logged and the lines dropped.
        """
        if not self.pending or self._file is None:
            return
        data = "".join(self.pending)
        self.pending = []
        try:
            self._file.write(data.encode("utf-8") if self._binary else data)
            self._file.flush()
        except Exception:
            log.failure("Writing the access log to {path} failed", path=self.path)

    def reopen(self) -> None:
        """
        Flush, then close and reopen the file (after it was rotated away);
        standard output is only flushed.
        """
        self.flush()
        if self.path == "-":
            return
        self._closeFile()
        self.open()

    def close(self) -> None:
        """
        Flush and close the file (standard output stays open).
        """
        self.flush()
        if self.path != "-":
            self._closeFile()
        self._file = None

    def _closeFile(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                log.failure("Closing the access log {path} failed", path=self.path)
            self._file = None


class AccessLogService(Service):
    """
    Owns the access log: opens its file, plugs an L{AccessLogObserver} into
    the observatory and flushes the writer every C{flushInterval} seconds
    while running; on stop it unplugs, flushes and closes.

    @ivar writer: the L{AccessLogWriter}.
    @ivar observer: the L{AccessLogObserver}.
    """

    name = "access-log"

    def __init__(self, observatory, config, reactor=None, stdout=None,
                 flushInterval: float = FLUSH_INTERVAL):
        """
        @param observatory: the L{golb.observe.Observatory} to plug into.
        @param config: a L{golb.config.AccessLogConfig} (C{format},
            C{path}; C{enabled} is for the caller to check).
        @param reactor: an C{IReactorTime} (the global reactor when
            L{None}).
        @param stdout: the standard output for C{path: "-"} (see
            L{AccessLogWriter}).
        @param flushInterval: seconds between writes.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.observatory = observatory
        self.config = config
        self.reactor = reactor
        self.flushInterval = flushInterval
        self.writer = AccessLogWriter(config.path, stdout=stdout)
        self.observer = AccessLogObserver(self.writer.write, config.format, clock=reactor)
        self._loop = task.LoopingCall(self._flush)
        self._loop.clock = reactor

    def privilegedStartService(self) -> None:
        """
        Open the file before twistd gives up root, as it binds ports.
        """
        Service.privilegedStartService(self)
        self._open()

    def _open(self) -> None:
        if not self.writer.isOpen:
            try:
                self.writer.open()
            except OSError as e:
                raise RuntimeError(
                    f"cannot open the access log {self.config.path}: {e.strerror or e}"
                ) from None

    def startService(self) -> None:
        """
        Open the file (if not yet open), start flushing and plug in.
        """
        self._open()
        Service.startService(self)
        self._loop.start(self.flushInterval, now=False)
        self.observatory.add(self.observer)

    def stopService(self) -> None:
        """
        Unplug, flush and close.
        """
        Service.stopService(self)
        self.observatory.remove(self.observer)
        if self._loop.running:
            self._loop.stop()
        self.writer.close()

    def reopen(self) -> None:
        """
        Reopen the file (after log rotation moved it).
        """
        self.writer.reopen()

    def _flush(self) -> None:
        try:
            self.writer.flush()
        except Exception:
            log.failure("Flushing the access log failed")
