"""
What the admin site remembers on its own: the audit trail of changes made
through it, the recent errors golb answered itself, and samples of the
request counters from which it computes rates.

All three are bounded: the oldest entries fall off.
"""

import collections
from typing import Deque, Dict, List, Optional, Tuple

import attr
from twisted.logger import Logger

from golb.observe import Observer

__all__ = ["AUDIT_SIZE", "ERRORS_SIZE", "AuditEntry", "AuditLog", "ErrorLog", "RateMeter"]

# (a module-level logger: a Logger class attribute would be renamed after its class)
auditLog = Logger(namespace="golb.admin.audit")

# How many audit entries and recent errors are kept in memory.
AUDIT_SIZE = 200
ERRORS_SIZE = 100


@attr.s(frozen=True, slots=True)
class AuditEntry:
    """
    One change made through the admin site.

    @ivar at: when (reactor time: seconds since the epoch with a real reactor).
    @ivar who: the user name, C{token:<fingerprint>} or C{anonymous@<ip>}.
    @ivar action: C{set-state}, C{set-weight} or C{reload}.
    @ivar target: what was changed (C{pool/backend}, or the config file).
    @ivar detail: the change, for people (C{"ready -> drain"}).
    @ivar ok: whether it took effect (a reload may fail).
    @ivar via: C{api} or C{page}.
    """

    at: float = attr.ib()
    who: str = attr.ib()
    action: str = attr.ib()
    target: str = attr.ib()
    detail: str = attr.ib()
    ok: bool = attr.ib(default=True)
    via: str = attr.ib(default="api")

    def asDict(self) -> Dict[str, object]:
        return {
            "at": self.at,
            "who": self.who,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "ok": self.ok,
            "via": self.via,
        }


class AuditLog:
    """
    The audit trail: every change is logged (namespace C{golb.admin.audit})
    and the last L{AUDIT_SIZE} are kept for the overview page and
    C{GET /api/v1/audit}.

    @ivar entries: the kept L{AuditEntry}s, oldest first.
    """

    def __init__(self, clock, size: int = AUDIT_SIZE):
        self.clock = clock
        self.entries: Deque[AuditEntry] = collections.deque(maxlen=size)

    def record(self, who: str, action: str, target: str, detail: str, ok: bool = True,
               via: str = "api") -> AuditEntry:
        """
        Log and keep one change.
        """
        entry = AuditEntry(self.clock.seconds(), who, action, target, detail, ok, via)
        self.entries.append(entry)
        auditLog.info(
            "admin: {who} {action} {target}: {detail}{failed} (via {via})",
            who=who, action=action, target=target, detail=detail,
            failed="" if ok else " [failed]", via=via,
            audit=entry.asDict(),
        )
        return entry

    def recent(self, count: Optional[int] = None) -> List[Dict[str, object]]:
        """
        The last C{count} entries (all by default), newest first.
        """
        entries = list(self.entries)[::-1]
        if count is not None:
            entries = entries[:count]
        return [entry.asDict() for entry in entries]


class ErrorLog(Observer):
    """
    An observer keeping the last L{ERRORS_SIZE} requests golb answered with
    an error of its own (C{record.error}: no route, no backend, bad gateway,
    rate limited...), and connections refused before they became requests.

    @ivar entries: JSON-ready dictionaries, oldest first.
    @ivar counts: errors seen since it was plugged in, by code.
    """

    def __init__(self, clock, size: int = ERRORS_SIZE):
        self.clock = clock
        self.entries: Deque[Dict[str, object]] = collections.deque(maxlen=size)
        self.counts: Dict[str, int] = collections.Counter()

    def requestFinished(self, record) -> None:
        if not record.error:
            return
        self.counts[record.error] += 1
        self.entries.append({
            "at": record.finished or record.started,
            "error": record.error,
            "status": record.status,
            "listener": record.listener,
            "method": record.method,
            "host": record.host,
            "target": record.target,
            "client": record.client,
            "route": record.route,
            "pool": record.pool,
            "backend": record.backend,
        })

    def requestRejected(self, listener, status, error, client="") -> None:
        self.counts[error] += 1
        self.entries.append({
            "at": self.clock.seconds(),
            "error": error,
            "status": status,
            "listener": listener,
            "method": None,
            "host": None,
            "target": None,
            "client": client or None,
            "route": None,
            "pool": None,
            "backend": None,
        })

    def recent(self, count: Optional[int] = None) -> List[Dict[str, object]]:
        """
        The last C{count} errors (all by default), newest first.
        """
        entries = list(self.entries)[::-1]
        if count is not None:
            entries = entries[:count]
        return [dict(entry) for entry in entries]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class RateMeter:
    """
    Request rates from samples of the backends' counters, taken by
    L{sample} (once a second while the admin service runs).  A rate is
    the increase over the window the samples cover (up to C{window}
    seconds), so it reads L{None} until two samples exist.

    @ivar samples: C{(time, {(pool, backend id): (requests, failures)})}
        oldest first.
    """

    def __init__(self, golb, clock, window: float = 10.0):
        self.golb = golb
        self.clock = clock
        self.window = window
        self.samples: Deque[Tuple[float, Dict[Tuple[str, str], Tuple[int, int]]]] = (
            collections.deque()
        )

    def sample(self) -> None:
        """
        Take one sample of every backend's request and failure counters.
        """
        now = self.clock.seconds()
        counters = {}
        for pool in self.golb.runtime.pools.values():
            for backend in pool.backends:
                counters[(pool.name, backend.id)] = (backend.requests, backend.failures)
        samples = self.samples
        samples.append((now, counters))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()

    def _span(self):
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        elapsed = last[0] - first[0]
        if elapsed <= 0:
            return None
        return first[1], last[1], elapsed

    def backendRate(self, pool: str, backendId: str) -> Optional[float]:
        """
        Requests per second sent to one backend, or L{None} when unknown.
        """
        span = self._span()
        if span is None:
            return None
        first, last, elapsed = span
        key = (pool, backendId)
        if key not in last:
            return None
        before = first.get(key, (0, 0))[0]
        return max(0, last[key][0] - before) / elapsed

    def rates(self, pool: Optional[str] = None) -> Tuple[Optional[float], Optional[float]]:
        """
        C{(requests, failures)} per second, over every backend (or those of
        C{pool}); C{(None, None)} when unknown.
        """
        span = self._span()
        if span is None:
            return None, None
        first, last, elapsed = span
        requests = failures = 0
        for key, (newRequests, newFailures) in last.items():
            if pool is not None and key[0] != pool:
                continue
            oldRequests, oldFailures = first.get(key, (0, 0))
            requests += max(0, newRequests - oldRequests)
            failures += max(0, newFailures - oldFailures)
        return requests / elapsed, failures / elapsed
