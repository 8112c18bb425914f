"""
C{workers: N}: N processes serving the same listening sockets.

The model (see docs/operations.md, "Workers"):

  - The B{parent} (the twistd process) binds every listener's socket, before
    twistd drops privileges: for a TCP listener one C{SO_REUSEPORT} socket per
    worker on the same address, so the kernel spreads connections evenly; for
    other endpoints (UNIX sockets...) one socket they all accept from.  It
    never accepts a connection itself.
  - It starts N B{workers} (C{python -m golb.workers}), handing each its
    sockets as inherited file descriptors, and starts a new one when one
    dies (after 1 s, up to 30 s when a worker keeps dying at start).  A
    worker's socket stays open in the parent meanwhile, so connections
    that arrive wait in its backlog instead of being refused.
  - Active health checks, DNS discovery of the parent's view, the admin
    site, the metrics endpoint and the Manhole run in the parent only.  The
    parent sends each probe result to every worker, which folds it in with
    the same thresholds (so all agree on what is up), and admin changes
    (drain, maint, weight) within half a second.
  - Workers serve requests: routing, policies, balancing, passive health
    (outlier ejection), retries and circuit breakers are per worker, as are
    rate-limit buckets unless they use C{store: redis://}.  Access logs are
    written by each worker to the same file (whole lines, appended).
  - A scrape of the parent's C{/metrics} asks every worker for its counts
    and adds them up (request, error, byte and connection counts, in-flight
    gauges, histograms); health, admin state and configuration series are
    the parent's.  The admin API's per-backend C{in_flight} and C{requests}
    are the workers' sums too (refreshed every second), and
    C{/api/v1/workers} lists the workers.
  - Workers run the configuration text the parent loaded, sent over the
    control pipe (not the file, which may have changed since): a worker
    started again after a crash runs what the others run.
  - SIGHUP (or the admin reload) reloads in the parent first; only a valid
    file reaches the workers, which reload the same text in place.  When
    the listeners' sockets change the parent binds the new ones and
    replaces the workers one at a time, each old one draining.
  - SIGTERM drains: the parent tells every worker to drain, waits for them
    (up to C{shutdown.grace} and a few seconds more), then exits.

Control messages are JSON lines: parent to worker on the worker's fd 3,
worker to parent on its fd 4.
"""

import json
import os
import signal
import socket
import sys
from typing import Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventAsJSON, eventFromJSON, globalLogPublisher
from twisted.protocols.basic import LineOnlyReceiver

__all__ = ["WorkerSupervisor", "main", "mergeExpositions"]

CONTROL_IN = 3  # parent -> worker
CONTROL_OUT = 4  # worker -> parent
FIRST_SOCKET = 5

#: metric families the workers count and the parent adds up
SUMMED = frozenset({
    "golb_requests", "golb_request_duration_seconds", "golb_request_body_bytes",
    "golb_response_body_bytes", "golb_requests_aborted", "golb_errors", "golb_retries",
    "golb_upstream_attempts", "golb_upstream_response_seconds",
    "golb_circuit_breaker_rejections", "golb_rate_limited", "golb_listener_rejections",
    "golb_listener_open_connections", "golb_upstream_connections",
    "golb_backend_requests_in_flight", "golb_pool_requests_in_flight",
    "golb_pool_requests_queued", "golb_backend_ejections", "golb_tls_certificate_reloads",
})
#: metric families the workers hold and the parent shows the highest of
MAXED = frozenset({
    "golb_backend_ejected", "golb_pool_panic_mode", "golb_backend_latency_seconds",
    "golb_tls_certificate_expiry_seconds",
})
WORKER_FAMILIES = SUMMED | MAXED


def mergeExpositions(texts: List[str]):
    """
    Add up the worker-owned metric families of several Prometheus text
    expositions: counters, histograms and additive gauges are summed, the
    L{MAXED} gauges take their highest value, C{_created} samples their
    lowest.

    @return: a list of L{prometheus_client.metrics_core.Metric}.
    """
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: Dict[str, Tuple[object, Dict[tuple, float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in WORKER_FAMILIES:
                continue
            found = families.get(family.name)
            if found is None:
                found = families[family.name] = (family, {})
            values = found[1]
            maxed = family.name in MAXED
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = values.get(key)
                if old is None:
                    values[key] = sample.value
                elif sample.name.endswith("_created"):
                    values[key] = min(old, sample.value)
                elif maxed:
                    values[key] = max(old, sample.value)
                else:
                    values[key] = old + sample.value
    merged = []
    for name in sorted(families):
        family, values = families[name]
        metric = Metric(family.name, family.documentation, family.type, family.unit)
        for (sampleName, labels), value in values.items():
            metric.add_sample(sampleName, dict(labels), value)
        merged.append(metric)
    return merged


class WorkerFamilies:
    """
    A Prometheus collector yielding the families last merged from the
    workers (see L{WorkerSupervisor.scrape}).
    """

    def __init__(self):
        self.families = []

    def describe(self):
        return []

    def collect(self):
        return list(self.families)


# ---------------------------------------------------------------- sockets


def _reusePortSocket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or "0.0.0.0", port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bindListener(listener, count: int, reactor) -> Tuple[List[socket.socket], int]:
    """
    Bind a listener's sockets: C{count} C{SO_REUSEPORT} sockets for a TCP
    address, else one socket shared by every worker.

    @return: the sockets, and their address family.
    @raise CannotListenError: the address cannot be had.
    """
    description = listener.endpointDescription()
    kind = description.split(":", 1)[0]
    address = getattr(listener, "address", None)
    if listener.endpoint is None and address is not None and hasattr(socket, "SO_REUSEPORT"):
        host, port = address.host or "", address.port
        sockets = []
        try:
            for _ in range(count):
                sockets.append(_reusePortSocket(host, port))
                if port == 0:  # the first one picked a port: the others share it
                    port = sockets[0].getsockname()[1]
        except OSError as e:
            for sock in sockets:
                sock.close()
            raise error.CannotListenError(host, port, e) from None
        return sockets, sockets[0].family
    if kind == "unix":
        path = description.split(":", 1)[1].split(":", 1)[0]
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(1024)
        except OSError as e:
            sock.close()
            raise error.CannotListenError(path, 0, e) from None
        return [sock], socket.AF_UNIX
    raise error.CannotListenError(description, 0, OSError(
        f"workers need tcp or unix listeners, not {kind}"))


# ---------------------------------------------------------------- the parent


class _WorkerProcess(ProcessProtocol):
    """
    The parent's side of one worker process.
    """

    def __init__(self, supervisor: "WorkerSupervisor", index: int):
        self.supervisor = supervisor
        self.index = index
        self.pid: Optional[int] = None
        self.startedAt = 0.0
        self.ready = False
        self.retiring = False
        self.ended: defer.Deferred = defer.Deferred()
        self._buffer = b""
        self._replies: Dict[int, defer.Deferred] = {}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.startedAt = self.supervisor.clock.seconds()

    def send(self, message: dict) -> None:
        if self.transport is not None and self.pid is not None:
            try:
                self.transport.writeToChild(CONTROL_IN, json.dumps(message).encode() + b"\n")
            except (KeyError, OSError):  # the pipe closed: the worker is gone
                pass

    def sendConfig(self, text: Optional[str]) -> None:
        """
        Send the configuration text, first thing: its length on a line,
        then the text (the worker reads it before it starts its reactor).
        """
        data = (text or "").encode("utf-8")
        if self.transport is not None:
            self.transport.writeToChild(CONTROL_IN, b"%d\n" % (len(data),) + data)

    def ask(self, op: str, timeout: float) -> defer.Deferred:
        """
        Send C{op} and wait for the worker's reply (fails after C{timeout}).
        """
        supervisor = self.supervisor
        supervisor._nextId += 1
        ident = supervisor._nextId
        d = defer.Deferred()
        self._replies[ident] = d
        self.send({"op": op, "id": ident})

        def forget(result):
            self._replies.pop(ident, None)
            return result

        d.addBoth(forget)
        d.addTimeout(timeout, supervisor.clock)
        return d

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != CONTROL_OUT:
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            self._message(message)

    def _message(self, message: dict) -> None:
        op = message.get("op")
        if op == "log":
            event = eventFromJSON(message["event"])
            event["log_worker"] = self.index
            event["log_namespace"] = f"worker {self.index}: {event.get('log_namespace', '')}"
            if event.get("log_system", "-") == "-":
                event["log_system"] = f"worker {self.index}"
            globalLogPublisher(event)
        elif op == "reply":
            d = self._replies.pop(message.get("id"), None)
            if d is not None:
                d.callback(message.get("body"))
        elif op == "ready":
            self.ready = True
            self.supervisor._workerReady(self)

    def processEnded(self, reason) -> None:
        for d in list(self._replies.values()):
            d.errback(reason)
        self._replies.clear()
        self.supervisor._workerEnded(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """
    The parent's service with C{workers: N}: binds the listeners' sockets,
    runs and restarts the workers and keeps them in step (see the module
    docstring).

    @ivar workers: the current L{_WorkerProcess} of each index.
    @ivar restarts: how many times a worker was started again after dying.
    """

    name = "workers"
    log = Logger()
    restartDelay = 1.0
    maxRestartDelay = 30.0
    syncInterval = 0.5

    def __init__(self, golb, reactor, spawn=None):
        self.golb = golb
        self.reactor = reactor
        self.clock = reactor
        self.count = golb.config.workers
        self._spawn = spawn if spawn is not None else reactor.spawnProcess
        self.sockets: Dict[str, Tuple[object, List[socket.socket], int]] = {}
        self.workers: Dict[int, _WorkerProcess] = {}
        self.restarts = 0
        self.families = WorkerFamilies()
        self._nextId = 0
        self._stopping = False
        self._delays: Dict[int, float] = {}
        self._restartCalls: Dict[int, object] = {}
        self._sync = None
        self._sentAdmin: Dict[Tuple[str, str], Tuple[str, int]] = {}
        self._stats = None
        self._allReady = False

    # -- sockets

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._bindAll()

    def _bindAll(self) -> None:
        for listener in self.golb.config.listeners:
            if listener.name not in self.sockets:
                sockets, family = bindListener(listener, self.count, self.reactor)
                self.sockets[listener.name] = (listener, sockets, family)

    def _closeSockets(self, names) -> None:
        for name in names:
            _, sockets, _ = self.sockets.pop(name)
            for sock in sockets:
                sock.close()

    def addresses(self) -> Dict[str, Tuple[str, int]]:
        """
        Where each listener listens (the port a C{:0} address was given).
        """
        found = {}
        for name, (_, sockets, family) in self.sockets.items():
            if family != socket.AF_UNIX:
                found[name] = sockets[0].getsockname()[:2]
        return found

    # -- running the workers

    def startService(self) -> None:
        if not self.sockets:
            self._bindAll()
        Service.startService(self)
        self.golb.workers = self
        for index in range(self.count):
            self._start(index)
        from twisted.internet.task import LoopingCall

        self._sync = LoopingCall(self._syncAdmin)
        self._sync.clock = self.clock
        self._sync.start(self.syncInterval, now=False)
        self._stats = LoopingCall(self._pullStats)
        self._stats.clock = self.clock
        self._stats.start(1.0, now=False)
        health = self._health()
        if health is not None:
            health.observers.append(self._probed)
        from golb.observe.metrics import metricsFor

        metrics = metricsFor(self.golb)
        if metrics.supervisor is None:
            metrics.useWorkers(self)

    def _health(self):
        if self.parent is None:
            return None
        try:
            return self.parent.getServiceNamed("health")
        except KeyError:
            return None

    def _start(self, index: int) -> None:
        config = self.golb.config
        fds = {0: "w", 1: 1, 2: 2, CONTROL_IN: "w", CONTROL_OUT: "r"}
        specs = []
        fd = FIRST_SOCKET
        for name, (_, sockets, family) in sorted(self.sockets.items()):
            sock = sockets[index % len(sockets)]
            fds[fd] = sock.fileno()
            specs.append(f"{name}={fd}:{int(family)}")
            fd += 1
        args = [sys.executable, "-m", "golb.workers", "--config",
                os.path.abspath(config.filename), "--index", str(index),
                "--sockets", ",".join(specs)]
        process = _WorkerProcess(self, index)
        self.workers[index] = process
        self._spawn(process, sys.executable, args, env=dict(os.environ), childFDs=fds)
        # the configuration the parent runs, whatever the file holds by now
        process.sendConfig(self.golb.configText)
        self.log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)

    def _workerReady(self, process: _WorkerProcess) -> None:
        if not self._allReady and all(p.ready for p in self.workers.values()) \
                and len(self.workers) == self.count:
            self._allReady = True
            self.log.info("{count} workers serving", count=self.count)
        elif self._allReady:
            self.log.info("worker {index} serving (pid {pid})", index=process.index,
                          pid=process.pid)
        process.send({"op": "health", "backends": self._healthSnapshot()})
        admin = self._adminState().items()
        process.send({"op": "admin", "backends": [
            [pool, url, state, weight] for (pool, url), (state, weight) in admin]})

    def _workerEnded(self, process: _WorkerProcess, reason) -> None:
        index = process.index
        if self.workers.get(index) is process:
            del self.workers[index]
        if self._stopping or process.retiring:
            return
        status = reason.value
        lived = self.clock.seconds() - process.startedAt
        delay = self._delays.get(index, self.restartDelay)
        if lived > 10:
            delay = self.restartDelay
        self.log.error(
            "worker {index} (pid {pid}) died ({status}); starting another in {delay:g}s",
            index=index, pid=process.pid, status=_describeEnd(status), delay=delay)
        self._delays[index] = min(delay * 2, self.maxRestartDelay)

        def restart():
            self._restartCalls.pop(index, None)
            if not self._stopping and index not in self.workers:
                self.restarts += 1
                self._start(index)

        self._restartCalls[index] = self.clock.callLater(delay, restart)

    def stopService(self):
        """
        Drain every worker (SIGTERM), kill those still there after the grace
        and a few seconds, then close the sockets.
        """
        Service.stopService(self)
        self._stopping = True
        for call in self._restartCalls.values():
            if call.active():
                call.cancel()
        self._restartCalls.clear()
        for loop in (self._sync, self._stats):
            if loop is not None and loop.running:
                loop.stop()
        health = self._health()
        if health is not None and self._probed in health.observers:
            health.observers.remove(self._probed)
        waits = [self._terminate(process) for process in list(self.workers.values())]
        d = defer.DeferredList(waits, consumeErrors=True)
        d.addCallback(lambda _: self._closeSockets(list(self.sockets)))
        return d

    def _terminate(self, process: _WorkerProcess) -> defer.Deferred:
        grace = self.golb.config.shutdown.grace + 5
        try:
            process.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            return process.ended
        kill = self.clock.callLater(grace, _kill, process)

        def ended(result):
            if kill.active():
                kill.cancel()
            return result

        return process.ended.addBoth(ended)

    # -- keeping workers in step

    def broadcast(self, message: dict) -> None:
        for process in list(self.workers.values()):
            if process.ready:
                process.send(message)

    def _probed(self, backend, result) -> None:
        self.broadcast({"op": "probe", "pool": backend.pool, "url": backend.url,
                        "result": [result.ok, result.detail, result.latency, result.at,
                                   result.code]})

    def _healthSnapshot(self) -> list:
        snapshot = []
        for pool in self.golb.pools.values():
            for backend in list(pool.backends) + list(getattr(pool, "backupBackends", ())):
                health = backend.health
                snapshot.append([pool.name, backend.url, health.status, health.passes,
                                 health.fails, health.since, health.reason])
        return snapshot

    def _adminState(self) -> Dict[Tuple[str, str], Tuple[str, int]]:
        state = {}
        for pool in self.golb.pools.values():
            for backend in pool.backends:
                state[(pool.name, backend.url)] = (backend.state, backend.weight)
        return state

    def _syncAdmin(self) -> None:
        state = self._adminState()
        changed = [[pool, url, s, w] for (pool, url), (s, w) in state.items()
                   if self._sentAdmin.get((pool, url)) != (s, w)]
        self._sentAdmin = state
        if changed:
            self.broadcast({"op": "admin", "backends": changed})

    def _pullStats(self):
        """
        Fold the workers' per-backend counts into the parent's backends, for
        the admin site.
        """
        ready = [p for p in self.workers.values() if p.ready]
        if not ready:
            return None
        d = defer.DeferredList([p.ask("stats", 2.0) for p in ready], consumeErrors=True)

        def got(results):
            totals: Dict[Tuple[str, str], List[int]] = {}
            for ok, body in results:
                if not ok or not body:
                    continue
                for pool, url, inFlight, requests, failures in body:
                    total = totals.setdefault((pool, url), [0, 0, 0])
                    total[0] += inFlight
                    total[1] += requests
                    total[2] += failures
            for pool in self.golb.pools.values():
                for backend in pool.backends:
                    found = totals.get((pool.name, backend.url))
                    if found is not None:
                        backend.inFlight, backend.requests, backend.failures = found

        return d.addCallback(got)

    def scrape(self, timeout: float = 5.0) -> defer.Deferred:
        """
        Ask every worker for its metrics and merge them into L{families}.
        """
        ready = [p for p in self.workers.values() if p.ready]
        d = defer.DeferredList([p.ask("metrics", timeout) for p in ready], consumeErrors=True)

        def merge(results):
            texts = [body for ok, body in results if ok and body]
            self.families.families = mergeExpositions(texts)

        return d.addCallback(merge)

    @property
    def serving(self) -> bool:
        """
        Whether every worker is up and serving its sockets.
        """
        return len(self.workers) == self.count and all(
            process.ready for process in self.workers.values())

    def describe(self) -> List[dict]:
        """
        The workers, for the admin API.
        """
        now = self.clock.seconds()
        return [{
            "index": index,
            "pid": process.pid,
            "ready": process.ready,
            "uptime": round(now - process.startedAt, 3),
        } for index, process in sorted(self.workers.items())]

    # -- reloads

    def reloaded(self, ok: bool) -> None:
        """
        The parent reloaded: pass a good configuration on.  Workers reload
        the same file in place when the listeners' sockets stay; otherwise
        the parent binds the new sockets and replaces the workers one by
        one.
        """
        if not ok or self._stopping:
            return
        from golb.tap import _sameSocket

        wanted = {listener.name: listener for listener in self.golb.config.listeners}
        changed = set(wanted) != set(self.sockets) or any(
            not _sameSocket(self.sockets[name][0], listener)
            for name, listener in wanted.items()
        )
        if not changed:
            for name, listener in wanted.items():
                old, sockets, family = self.sockets[name]
                self.sockets[name] = (listener, sockets, family)
            self.broadcast({"op": "reload", "text": self.golb.configText})
            return
        gone = [name for name, (old, _, _) in self.sockets.items()
                if name not in wanted or not _sameSocket(old, wanted[name])]
        try:
            fresh = {}
            for name, listener in wanted.items():
                if name not in self.sockets or name in gone:
                    fresh[name] = bindListener(listener, self.count, self.reactor)
        except error.CannotListenError as e:
            for sockets, _ in fresh.values():
                for sock in sockets:
                    sock.close()
            self.golb.listenerProblems([f"cannot listen: {e}"])
            return
        old = {name: self.sockets[name] for name in gone}
        for name in gone:
            del self.sockets[name]
        for name, (sockets, family) in fresh.items():
            self.sockets[name] = (wanted[name], sockets, family)
        self.log.info("listeners changed: replacing the workers one by one")
        self._replaceAll().addCallback(lambda _: self._closeOld(old))

    @defer.inlineCallbacks
    def _replaceAll(self):
        for index in range(self.count):
            old = self.workers.get(index)
            if old is not None:
                old.retiring = True
                del self.workers[index]
            self._start(index)
            if old is not None:
                yield self._terminate(old)

    def _closeOld(self, old) -> None:
        for _, sockets, _ in old.values():
            for sock in sockets:
                sock.close()
        self.log.info("workers replaced; old listening sockets closed")


def _kill(process: _WorkerProcess) -> None:
    try:
        process.transport.signalProcess("KILL")
    except error.ProcessExitedAlready:
        pass


def _describeEnd(status) -> str:
    signal_ = getattr(status, "signal", None)
    if signal_:
        try:
            return f"signal {signal.Signals(signal_).name}"
        except ValueError:
            return f"signal {signal_}"
    return f"exit status {getattr(status, 'exitCode', '?')}"


# ---------------------------------------------------------------- a worker


class WorkerControl(LineOnlyReceiver):
    """
    A worker's end of its control pipe.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, root, index: int):
        self.root = root
        self.golb = root.golb
        self.index = index

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        op = message.get("op")
        try:
            handler = getattr(self, f"op_{op}")
        except AttributeError:
            return
        try:
            handler(message)
        except Exception:
            Logger().failure("worker {index}: control message {op} failed",
                             index=self.index, op=op)

    def send(self, message: dict) -> None:
        self.transport.write(json.dumps(message).encode() + b"\n")

    def connectionLost(self, reason) -> None:
        # the parent is gone: drain and exit, as on SIGTERM
        reactor = self.root.reactor
        if reactor is not None and reactor.running:
            reactor.stop()

    def _backends(self):
        for pool in self.golb.pools.values():
            for backend in pool.backends:
                yield pool, backend

    def op_probe(self, message: dict) -> None:
        from golb.health import ProbeResult, recordProbe

        pool = self.golb.pools.get(message["pool"])
        if pool is None or pool.config.health_check is None:
            return
        ok, detail, latency, at, code = message["result"]
        for backend in pool.backends:
            if backend.url == message["url"]:
                result = ProbeResult(ok, detail, latency, at, code)
                recordProbe(backend, pool.config.health_check, result, self.root.clock.seconds())

    def op_health(self, message: dict) -> None:
        from golb.health import _settle

        known = {(pool.name, backend.url): backend for pool, backend in self._backends()}
        now = self.root.clock.seconds()
        for pool, url, status, passes, fails, since, reason in message["backends"]:
            backend = known.get((pool, url))
            if backend is None:
                continue
            health = backend.health
            health.status, health.passes, health.fails = status, passes, fails
            _settle(backend, now, reason)
            health.since = since

    def op_admin(self, message: dict) -> None:
        known = {(pool.name, backend.url): backend for pool, backend in self._backends()}
        for pool, url, state, weight in message["backends"]:
            backend = known.get((pool, url))
            if backend is None:
                continue
            if backend.state != "ready" and state == "ready":
                backend.markReady()
            backend.state, backend.weight = state, weight

    def op_reload(self, message: dict) -> None:
        self.root.reload(message.get("text"))

    def op_stats(self, message: dict) -> None:
        body = [[pool.name, backend.url, backend.inFlight, backend.requests, backend.failures]
                for pool, backend in self._backends()]
        self.send({"op": "reply", "id": message["id"], "body": body})

    def op_metrics(self, message: dict) -> None:
        from golb.observe.metrics import metricsFor

        body, _ = metricsFor(self.golb).exposition()
        self.send({"op": "reply", "id": message["id"], "body": body.decode("utf-8")})


class _LogForwarder:
    """
    A worker's log observer: every event goes to the parent, which logs it
    its own way (file, format, level).
    """

    def __init__(self, write):
        self._write = write

    def __call__(self, event: dict) -> None:
        try:
            self._write(json.dumps({"op": "log", "event": eventAsJSON(event)}).encode() + b"\n")
        except Exception:  # pragma: no cover (a log event that cannot be sent)
            pass


def _readConfigText(fd: int) -> str:
    """
    Read the configuration text the parent sends first on C{fd}: its
    length on a line, then the text.  Nothing more is read, so the control
    messages that follow stay in the pipe.
    """
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            raise ValueError("the parent closed the control pipe")
        header += byte
    length = int(header)
    data = b""
    while len(data) < length:
        chunk = os.read(fd, length - len(data))
        if not chunk:
            raise ValueError("the parent closed the control pipe")
        data += chunk
    return data.decode("utf-8")


def _parseSockets(spec: str) -> Dict[str, Tuple[int, int]]:
    found = {}
    for item in filter(None, spec.split(",")):
        name, rest = item.rsplit("=", 1)
        fd, family = rest.split(":")
        found[name] = (int(fd), int(family))
    return found


def main(argv=None) -> None:
    """
    A worker: C{python -m golb.workers --config PATH --index N --sockets
    name=fd:family,...}, started by the parent's L{WorkerSupervisor}.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="golb.workers")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--sockets", default="")
    args = parser.parse_args(argv)

    from golb.reactor import installIfUnchosen

    installIfUnchosen()
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner

    forwarder = _LogForwarder(lambda data: os.write(CONTROL_OUT, data))
    globalLogBeginner.beginLoggingTo([forwarder], redirectStandardIO=False)
    from golb.config import ConfigError, loadConfigText
    from golb.tap import makeWorkerService

    try:
        text = _readConfigText(CONTROL_IN) or None
        config, text = loadConfigText(args.config, text)
    except (ConfigError, OSError, ValueError) as e:
        Logger().critical("worker {index}: cannot load {path}: {error}", index=args.index,
                          path=args.config, error=str(e))
        sys.exit(1)
    root = makeWorkerService(config, reactor, _parseSockets(args.sockets), args.index, text)
    root.privilegedStartService()
    root.startService()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    control = WorkerControl(root, args.index)
    StandardIO(control, stdin=CONTROL_IN, stdout=CONTROL_OUT, reactor=reactor)
    forwarder._write = control.transport.write
    control.send({"op": "ready", "pid": os.getpid()})
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
