"""
Observability: what golb tells about the requests it handles.

The request path fills one L{Record} per client request and calls the
L{Observatory} at a few points: when the request starts, around each
attempt to a backend, and once when it ends (finished or abandoned).
Metrics (L{golb.observe.metrics}), traces (L{golb.observe.tracing}) and
the access log (L{golb.observe.logs}) are L{IObserver}s plugged into the
observatory; with none plugged in, the request path does no work for them.
"""

from typing import Any, Dict, List, Optional

import attr
from twisted.logger import Logger
from zope.interface import Interface, implementer

__all__ = ["Attempt", "IObserver", "Observatory", "Observer", "Record"]

log = Logger()


@attr.s(slots=True)
class Record:
    """
    One client request, as observers see it.  Mutable: filled in as the
    request goes.

    @ivar started: when golb received the request head (reactor time).
    @ivar finished: when its response ended or it was abandoned.
    @ivar listener: the listener's name.
    @ivar method: the request method (text).
    @ivar client: the real client address (text).
    @ivar route: the matched route's name (L{None}: no route matched).
    @ivar pool: the pool chosen (L{None} before or without one).
    @ivar backend: the id of the backend that answered (or was last tried).
    @ivar status: the status sent to the client (0 = none sent).
    @ivar error: golb's own error code (C{X-Golb-Error}) when golb answered
        (set by L{golb.errors.renderError}).
    @ivar bytesIn: request body bytes received.
    @ivar bytesOut: response body bytes sent.
    @ivar upstreamSeconds: time from sending the last attempt to its
        response head (L{None}: no backend answered).
    @ivar attempts: attempts made to backends.
    @ivar retries: attempts after the first.
    @ivar aborted: the client went away before the response ended.
    @ivar traceId: the trace id (hex) when the request is traced.
    @ivar spanId: the server span's id (hex) when traced.
    @ivar span: the tracer's server span (opaque to everyone else).
    @ivar extra: anything else observers want to keep per request.
    """

    started: float = attr.ib()
    listener: str = attr.ib(default="default")
    method: str = attr.ib(default="")
    client: str = attr.ib(default="")
    host: str = attr.ib(default="")
    target: str = attr.ib(default="")
    version: str = attr.ib(default="HTTP/1.1")
    userAgent: str = attr.ib(default="")
    referer: str = attr.ib(default="")
    finished: float = attr.ib(default=0.0)
    route: Optional[str] = attr.ib(default=None)
    pool: Optional[str] = attr.ib(default=None)
    backend: Optional[str] = attr.ib(default=None)
    status: int = attr.ib(default=0)
    error: Optional[str] = attr.ib(default=None)
    bytesIn: int = attr.ib(default=0)
    bytesOut: int = attr.ib(default=0)
    upstreamSeconds: Optional[float] = attr.ib(default=None)
    attempts: int = attr.ib(default=0)
    retries: int = attr.ib(default=0)
    aborted: bool = attr.ib(default=False)
    traceId: Optional[str] = attr.ib(default=None)
    spanId: Optional[str] = attr.ib(default=None)
    span: Any = attr.ib(default=None, repr=False)
    extra: Dict[str, Any] = attr.ib(factory=dict, repr=False)

    @property
    def duration(self) -> float:
        """
        Seconds from the request head to the end of the response.
        """
        return max(0.0, self.finished - self.started)


@attr.s(slots=True)
class Attempt:
    """
    One attempt to forward a request to a backend.

    @ivar pool: the pool's name.
    @ivar backend: the backend (a L{golb.pool.Backend}).
    @ivar number: 1 for the first attempt.
    @ivar started: when it was sent (reactor time).
    @ivar status: the backend's status (0: none).
    @ivar error: why it failed (a L{golb.errors.GolbError} code), if it did.
    @ivar span: the tracer's client span (opaque to everyone else).
    """

    pool: str = attr.ib()
    backend: Any = attr.ib()
    number: int = attr.ib()
    started: float = attr.ib()
    finished: float = attr.ib(default=0.0)
    status: int = attr.ib(default=0)
    error: Optional[str] = attr.ib(default=None)
    span: Any = attr.ib(default=None, repr=False)


class IObserver(Interface):
    """
    Something that watches requests (metrics, tracing, access log).
    """

    def requestStarted(record, request):
        """
        A request arrived and golb is about to route it.
        """

    def attemptStarted(record, attempt, headers):
        """
        An attempt is about to be sent to a backend.

        @param headers: the request headers to be sent, a list of
            C{(name, value)} bytes pairs that may be edited in place (to
            inject trace context).
        """

    def attemptFinished(record, attempt):
        """
        An attempt got its response head, or failed.
        """

    def requestFinished(record):
        """
        The response ended (or the client went away: C{record.aborted}).
        Called exactly once per started request.
        """

    def requestRejected(listener, status, error, client):
        """
        The listener refused a malformed or oversized request before it
        became a request (400, 408, 413, 414, 431).

        @param client: the peer's address (text; C{""} when unknown).
        """


@implementer(IObserver)
class Observer:
    """
    A base for observers: every method does nothing.
    """

    def requestStarted(self, record, request):
        pass

    def attemptStarted(self, record, attempt, headers):
        pass

    def attemptFinished(self, record, attempt):
        pass

    def requestFinished(self, record):
        pass

    def requestRejected(self, listener, status, error, client=""):
        pass


_EMPTY = (b"",)


class Observatory:
    """
    The observers of one golb, called by the request path.

    @ivar active: whether any observer is plugged in; when not, the request
        path skips every call.
    """

    _HOOKS = ("requestStarted", "attemptStarted", "attemptFinished", "requestFinished",
              "requestRejected")

    def __init__(self, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.observers: List[IObserver] = []
        self.active = False
        self._hooks: Dict[str, List[object]] = {name: [] for name in self._HOOKS}

    def add(self, observer: IObserver) -> None:
        """
        Plug in C{observer}.
        """
        self.observers.append(observer)
        self._rebuild()

    def remove(self, observer: IObserver) -> None:
        """
        Unplug C{observer}.
        """
        if observer in self.observers:
            self.observers.remove(observer)
        self._rebuild()

    def _rebuild(self) -> None:
        """
        Bind, per hook, the observers that do something in it (an
        L{Observer} subclass that does not override a method is skipped).
        """
        self.active = bool(self.observers)
        for name in self._HOOKS:
            base = getattr(Observer, name)
            self._hooks[name] = [
                (observer, getattr(observer, name)) for observer in self.observers
                if getattr(type(observer), name, None) is not base
            ]

    def _each(self, method: str, *args) -> None:
        for observer, hook in self._hooks[method]:
            try:
                hook(*args)
            except Exception:
                log.failure("observer {observer!r} failed in {method}",
                            observer=observer, method=method)

    def requestStarted(self, request) -> Record:
        """
        Start the record of C{request} and tell the observers.
        """
        # canonical names, straight from Headers' dict: this runs per request
        raw = request.requestHeaders._rawHeaders
        record = Record(
            started=getattr(request, "receivedAt", None) or self.reactor.seconds(),
            listener=getattr(request, "listenerName", "default"),
            method=request.method.decode("ascii", "replace"),
            client=request.clientAddress() if hasattr(request, "clientAddress") else "",
            host=(raw.get(b"Host") or _EMPTY)[0].decode("latin-1"),
            target=request.uri.decode("latin-1"),
            version=request.clientproto.decode("ascii", "replace"),
            userAgent=(raw.get(b"User-Agent") or _EMPTY)[0].decode("latin-1"),
            referer=(raw.get(b"Referer") or _EMPTY)[0].decode("latin-1"),
            bytesIn=getattr(request, "bodyLength", 0),
        )
        request.record = record
        if self._hooks["requestStarted"]:
            self._each("requestStarted", record, request)
        return record

    def attemptStarted(self, record: Record, pool: str, backend, headers) -> Attempt:
        """
        An attempt to C{backend} is about to be sent with C{headers}.
        """
        record.attempts += 1
        record.retries = record.attempts - 1
        record.pool = pool
        record.backend = backend.id
        attempt = Attempt(pool, backend, record.attempts, self.reactor.seconds())
        if self._hooks["attemptStarted"]:
            self._each("attemptStarted", record, attempt, headers)
        return attempt

    def attemptFinished(self, record: Record, attempt: Attempt, status: int = 0,
                        error: Optional[str] = None) -> None:
        """
        An attempt got a response head with C{status}, or failed with
        C{error}.
        """
        attempt.finished = self.reactor.seconds()
        attempt.status = status
        attempt.error = error
        if status:
            record.upstreamSeconds = attempt.finished - attempt.started
        self._each("attemptFinished", record, attempt)

    def requestFinished(self, request, aborted: bool = False) -> None:
        """
        C{request}'s response ended (or its client left): complete its record
        and tell the observers, once.
        """
        record = getattr(request, "record", None)
        if record is None or record.finished:
            return
        record.finished = self.reactor.seconds()
        record.aborted = aborted
        record.status = request.code if (request.startedWriting or not aborted) else 0
        record.bytesOut = getattr(request, "sentLength", 0)
        self._each("requestFinished", record)

    def requestRejected(self, listener: str, status: int, error: str, client: str = "") -> None:
        """
        The listener refused a request before it was parsed.
        """
        self._each("requestRejected", listener, status, error, client)
