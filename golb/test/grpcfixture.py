"""
gRPC test fixtures: a grpcio server and client run as subprocesses, and the
helpers trial tests use to start them.

golb's suite also runs on PyPy, where grpcio does not exist, so this module
imports neither grpc nor Twisted at import time. The gRPC side runs in
another interpreter (L{grpcPython}) as a script::

    python -m golb.test.grpcfixture server --port P --name NAME [--tls CERT KEY]
    python -m golb.test.grpcfixture client --target HOST:PORT[,...] --call CALL --count N
        [--payload X] [--timeout SECONDS] [--concurrency K]
        [--tls-ca CA] [--authority NAME]

The server has no generated code: raw bytes in, raw bytes out.

  - C{/test.Echo/Unary}: replies C{NAME:} + the request.
  - C{/test.Echo/Bidi}: replies C{NAME:} + each request message, in order,
    as the messages arrive.
  - C{/test.Echo/Fail}: fails with C{NOT_FOUND} and the details
    C{"no such thing: "} + the request.
  - C{/test.Echo/Slow}: sleeps C{float(request)} seconds (cut short when the
    call is cancelled), then replies like C{Unary}.
  - C{/grpc.health.v1.Health/Check}: C{SERVING}; C{NOT_SERVING} after the
    process gets C{SIGUSR1}, C{SERVING} again after C{SIGUSR2}.

It binds 127.0.0.1 (port 0 picks one, without C{SO_REUSEPORT}), prints
C{ready PORT} once serving and exits cleanly on C{SIGTERM} or C{SIGINT}.

The client prints one JSON line and exits 0 whatever the calls' statuses
(non-zero only for usage errors and crashes). Every call mode reports
C{"code"} (C{"OK"} or the gRPC status name of the first failure, with
C{"details"}):

  - C{unary}: C{--count} calls of C{--payload}; C{{"replies": [...]}}.
  - C{bidi}: one call streaming C{--count} messages C{PAYLOAD-0},
    C{PAYLOAD-1}, ..., each sent only after the reply to the one before
    arrived (a proxy that buffers the request stream times out);
    C{{"replies": [...]}} in order.
  - C{fail}: C{{"code": "NOT_FOUND", "details": "no such thing: PAYLOAD"}}.
  - C{slow}: C{--payload} is the server's delay; C{{"code": "OK"}} or
    C{"DEADLINE_EXCEEDED"} when C{--timeout} is shorter.
  - C{health}: C{{"status": "SERVING"}} (or C{NOT_SERVING}, ...).
  - C{bench}: C{--count} unary calls, C{--concurrency} in flight, spread
    over the C{--target}s when it lists several (the other calls use the
    first);
    C{{"calls", "ok", "errors", "seconds", "calls_per_s", "p50_ms",
    "p99_ms"}}.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "FixtureError",
    "HEALTH_STATUSES",
    "grpcPython",
    "main",
    "requireGrpcPython",
    "runClient",
    "startServer",
]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The directory holding the C{golb} package (the repository root in a checkout)."""

SKIP_REASON = "no Python with grpcio (set GOLB_GRPC_PYTHON)"

HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
"""C{grpc.health.v1.HealthCheckResponse.ServingStatus} by number."""

_SERVING = b"\x08\x01"
_NOT_SERVING = b"\x08\x02"


class FixtureError(Exception):
    """
    A fixture process failed: it exited before it was ready, with a non-zero
    code, or took too long. The message ends with its standard error.
    """


# ------------------------------------------------------------ finding grpcio

_grpcPython: Dict[str, Optional[str]] = {}


def _canImportGrpc(python: str) -> bool:
    try:
        result = subprocess.run(
            [python, "-c", "import grpc"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=30, env=_environment(),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def grpcPython() -> Optional[str]:
    """
    The path of a Python interpreter that can import grpc: C{$GOLB_GRPC_PYTHON}
    if set, else this interpreter if it has grpcio, else the checkout's
    C{.venv/bin/python} if it has. Checked once per process (in a
    subprocess, so grpc never loads into the test run).

    @return: the path, or L{None} when there is none.
    """
    if "python" not in _grpcPython:
        found = os.environ.get("GOLB_GRPC_PYTHON") or None
        if found is None:
            venv = os.path.join(ROOT, ".venv", "bin", "python")
            for candidate in (sys.executable, venv):
                if candidate and os.path.exists(candidate) and _canImportGrpc(candidate):
                    found = candidate
                    break
        _grpcPython["python"] = found
    return _grpcPython["python"]


def requireGrpcPython() -> str:
    """
    L{grpcPython}, or raise L{twisted.trial.unittest.SkipTest} saying how to
    provide one.
    """
    python = grpcPython()
    if python is None:
        from twisted.trial.unittest import SkipTest

        raise SkipTest(SKIP_REASON)
    return python


# ------------------------------------------------------ helpers for trial tests


def _environment() -> Dict[str, str]:
    env = dict(os.environ)
    # not the test run's own PYTHONPATH: trial -j sets it to its sys.path,
    # which on PyPy would put PyPy's packages before the CPython ones
    env["PYTHONPATH"] = ROOT
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _makeProtocol(what: str, reactor, timeout: float, readyLine: bool):
    """
    A C{ProcessProtocol} collecting a fixture's output, with C{ready} (the
    port from its C{ready PORT} line, when C{readyLine}) and C{ended} (its
    exit code) L{Deferred}s, that kills the process after C{timeout}
    seconds without C{ready} (or without ending, when not C{readyLine}).
    """
    from twisted.internet import defer
    from twisted.internet.error import ProcessExitedAlready
    from twisted.internet.protocol import ProcessProtocol

    class FixtureProcess(ProcessProtocol):
        def __init__(self):
            self.output = b""
            self.errors = b""
            self.ready = defer.Deferred()
            self.ended = defer.Deferred()
            self.timedOut = False
            self._timer = reactor.callLater(timeout, self._timeUp)

        def _timeUp(self):
            self.timedOut = True
            self._timer = None
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

        def _cancelTimer(self):
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None

        def describe(self, problem: str) -> str:
            tail = self.errors.decode("utf-8", "replace")[-3000:].strip()
            return f"{what} {problem}" + (f"; stderr:\n{tail}" if tail else "")

        def outReceived(self, data):
            self.output += data
            if readyLine and not self.ready.called:
                for line in self.output.splitlines():
                    if line.startswith(b"ready "):
                        self._cancelTimer()
                        self.ready.callback(int(line.split()[1]))
                        break

        def errReceived(self, data):
            self.errors += data

        def processEnded(self, reason):
            self._cancelTimer()
            code = reason.value.exitCode
            if not self.ready.called:
                if self.timedOut:
                    problem = f"killed after {timeout}s"
                elif readyLine:
                    problem = f"exited (code {code}, signal {reason.value.signal}) before ready"
                else:
                    problem = None if code == 0 else (
                        f"exited with code {code} (signal {reason.value.signal})")
                if problem is None:
                    self.ready.callback(self.output)
                else:
                    self.ready.errback(FixtureError(self.describe(problem)))
            self.ended.callback(code)

    return FixtureProcess()


def startServer(testCase, name: str, port: Optional[int] = None,
                tls: Optional[Tuple[str, str]] = None, reactor=None,
                timeout: float = 20.0):
    """
    Run a fixture gRPC server called C{name} in a subprocess for the duration
    of C{testCase}: at cleanup it gets C{SIGTERM} (C{SIGKILL} after 5
    seconds) and the cleanup waits for it to end.

    @param port: the port to listen on, 127.0.0.1; by default one the
        server picks (no race with other tests).
    @param tls: C{(certificate file, key file)} to serve TLS (PEM).
    @param timeout: seconds to wait for the C{ready} line.
    @return: a L{Deferred} firing with C{(port, process transport)} once the
        server serves; C{transport.signalProcess(signal.SIGUSR1)} makes its
        health check answer C{NOT_SERVING}, C{signal.SIGUSR2} C{SERVING}
        again.
        L{FixtureError} when it does not start.
    """
    if reactor is None:
        from twisted.internet import reactor
    from golb.test.support import stopProcess

    python = requireGrpcPython()
    args = [python, "-m", "golb.test.grpcfixture", "server",
            "--port", str(port or 0), "--name", name]
    if tls is not None:
        args += ["--tls", tls[0], tls[1]]
    protocol = _makeProtocol(f"gRPC fixture server {name!r}", reactor, timeout, True)
    process = reactor.spawnProcess(protocol, python, args, env=_environment())
    testCase.addCleanup(stopProcess, process, protocol.ended, reactor)
    return protocol.ready.addCallback(lambda actual: (actual, process))


def runClient(args: Sequence, reactor=None, timeout: float = 60.0):
    """
    Run the fixture client with C{args} (what follows C{client} on its
    command line; numbers are turned into strings).

    @param timeout: seconds before the client is killed.
    @return: a L{Deferred} firing with its parsed JSON line, or failing with
        L{FixtureError} (and its standard error) when it exits non-zero.
    """
    if reactor is None:
        from twisted.internet import reactor

    python = requireGrpcPython()
    argv = [python, "-m", "golb.test.grpcfixture", "client", *map(str, args)]
    protocol = _makeProtocol(f"gRPC fixture client {' '.join(argv[4:])!r}", reactor,
                             timeout, False)
    reactor.spawnProcess(protocol, python, argv, env=_environment())

    def parse(output):
        lines = output.decode("utf-8", "replace").strip().splitlines()
        if not lines:
            raise FixtureError(protocol.describe("printed nothing"))
        return json.loads(lines[-1])

    return protocol.ready.addCallback(parse)


# --------------------------------------------------------------- the server


def _serve(options) -> int:
    from concurrent import futures

    import grpc

    prefix = options.name.encode("utf-8") + b":"
    serving = threading.Event()
    serving.set()
    stopping = threading.Event()

    def unary(request, context):
        return prefix + request

    def bidi(requests, context):
        for message in requests:
            yield prefix + message

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND,
                      "no such thing: " + request.decode("utf-8", "replace"))

    def slow(request, context):
        ended = threading.Event()
        context.add_callback(ended.set)
        ended.wait(float(request or b"0"))
        return prefix + request

    def check(request, context):
        return _SERVING if serving.is_set() else _NOT_SERVING

    def handler(function, kind=grpc.unary_unary_rpc_method_handler):
        return kind(function, request_deserializer=None, response_serializer=None)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.workers),
        handlers=[
            grpc.method_handlers_generic_handler("test.Echo", {
                "Unary": handler(unary),
                "Bidi": handler(bidi, grpc.stream_stream_rpc_method_handler),
                "Fail": handler(fail),
                "Slow": handler(slow),
            }),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
                "Check": handler(check),
            }),
        ],
        options=[("grpc.so_reuseport", 0)],
    )
    address = f"{options.host}:{options.port}"
    try:
        if options.tls:
            with open(options.tls[0], "rb") as f:
                cert = f.read()
            with open(options.tls[1], "rb") as f:
                key = f.read()
            credentials = grpc.ssl_server_credentials([(key, cert)])
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:  # grpcio >= 1.51 raises when it cannot bind
        sys.stderr.write(f"cannot listen on {address}: {e}\n")
        return 1
    if not port:
        sys.stderr.write(f"cannot listen on {address}\n")
        return 1
    signal.signal(signal.SIGUSR1, lambda *_: serving.clear())
    signal.signal(signal.SIGUSR2, lambda *_: serving.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server.start()
    sys.stdout.write(f"ready {port}\n")
    sys.stdout.flush()
    while not stopping.is_set():
        stopping.wait(0.2)
    server.stop(grace=0.5).wait()
    return 0


# --------------------------------------------------------------- the client


def _channel(options, target):
    import grpc

    channelOptions: List[Tuple[str, object]] = []
    if options.tls_ca:
        with open(options.tls_ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(f.read())
        if options.authority:
            channelOptions.append(("grpc.ssl_target_name_override", options.authority))
        return grpc.secure_channel(target, credentials, channelOptions)
    if options.authority:
        channelOptions.append(("grpc.default_authority", options.authority))
    return grpc.insecure_channel(target, channelOptions)


def _failure(result: dict, error) -> dict:
    result["code"] = error.code().name
    result["details"] = error.details()
    return result


def _callUnary(channel, options, method: str = "/test.Echo/Unary") -> dict:
    import grpc

    call = channel.unary_unary(method)
    result: dict = {"replies": [], "code": "OK"}
    try:
        for _ in range(options.count):
            reply = call(options.payload.encode("utf-8"), timeout=options.timeout)
            result["replies"].append(reply.decode("utf-8", "replace"))
    except grpc.RpcError as e:
        _failure(result, e)
    return result


def _callBidi(channel, options) -> dict:
    import queue

    import grpc

    answered = queue.Queue()
    patience = options.timeout or 30.0

    def messages():
        for i in range(options.count):
            yield f"{options.payload}-{i}".encode("utf-8")
            try:
                answered.get(timeout=patience)
            except queue.Empty:
                return

    result: dict = {"replies": [], "code": "OK"}
    try:
        call = channel.stream_stream("/test.Echo/Bidi")(messages(), timeout=options.timeout)
        for reply in call:
            result["replies"].append(reply.decode("utf-8", "replace"))
            answered.put(True)
    except grpc.RpcError as e:
        _failure(result, e)
    return result


def _callFail(channel, options) -> dict:
    import grpc

    call = channel.unary_unary("/test.Echo/Fail")
    result: dict = {"code": "OK"}
    for _ in range(options.count):
        try:
            call(options.payload.encode("utf-8"), timeout=options.timeout)
        except grpc.RpcError as e:
            _failure(result, e)
    return result


def _callSlow(channel, options) -> dict:
    return _callUnary(channel, options, "/test.Echo/Slow")


def _parseHealth(data: bytes) -> int:
    """
    The C{status} field (1, a varint) of a C{HealthCheckResponse}; 0 when
    absent. Other fields are skipped.
    """
    def varint(i):
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, i

    status, i = 0, 0
    while i < len(data):
        key, i = varint(i)
        field, wireType = key >> 3, key & 7
        if wireType == 0:
            value, i = varint(i)
            if field == 1:
                status = value
        elif wireType == 2:
            length, i = varint(i)
            i += length
        elif wireType == 1:
            i += 8
        elif wireType == 5:
            i += 4
        else:
            raise ValueError(f"bad wire type {wireType} in {data!r}")
    return status


def _callHealth(channel, options) -> dict:
    import grpc

    call = channel.unary_unary("/grpc.health.v1.Health/Check")
    result: dict = {"code": "OK"}
    try:
        for _ in range(options.count):
            status = _parseHealth(call(b"", timeout=options.timeout))
            result["status"] = HEALTH_STATUSES.get(status, str(status))
    except grpc.RpcError as e:
        _failure(result, e)
    return result


def _callBench(channels, options) -> dict:
    """
    C{count} unary calls from C{concurrency} threads (thread I calls through
    channel I modulo their number); latency per call.
    """
    import grpc

    calls = [channel.unary_unary("/test.Echo/Unary") for channel in channels]
    payload = options.payload.encode("utf-8")
    for call in calls:
        call(payload, timeout=options.timeout or 10.0)  # connect before timing
    lock = threading.Lock()
    remaining = [options.count]
    latencies: List[float] = []
    errors: Dict[str, int] = {}

    def worker(call):
        mine: List[float] = []
        while True:
            with lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                call(payload, timeout=options.timeout)
            except grpc.RpcError as e:
                with lock:
                    name = e.code().name
                    errors[name] = errors.get(name, 0) + 1
            else:
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(calls[i % len(calls)],))
               for i in range(max(1, options.concurrency))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    latencies.sort()

    def percentile(p):
        if not latencies:
            return None
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3)

    return {
        "calls": options.count, "ok": len(latencies), "errors": errors,
        "seconds": round(seconds, 4),
        "calls_per_s": round(len(latencies) / seconds, 1) if seconds else None,
        "p50_ms": percentile(0.50), "p99_ms": percentile(0.99),
        "code": "OK" if not errors else sorted(errors)[0],
    }


_CALLS = {
    "unary": _callUnary,
    "bidi": _callBidi,
    "fail": _callFail,
    "slow": _callSlow,
    "health": _callHealth,
    "bench": _callBench,
}


def _client(options) -> int:
    channels = [_channel(options, target) for target in options.target.split(",")]
    try:
        if options.call == "bench":
            result = _callBench(channels, options)
        else:
            result = _CALLS[options.call](channels[0], options)
    finally:
        for channel in channels:
            channel.close()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m golb.test.grpcfixture",
        description="gRPC test server and client (grpcio, no generated code).")
    commands = parser.add_subparsers(dest="command")
    commands.required = True
    server = commands.add_parser("server", help="serve test.Echo and grpc.health.v1")
    server.add_argument("--port", type=int, default=0, help="0: any free port")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--name", required=True, help="prefix of every reply")
    server.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    server.add_argument("--workers", type=int, default=16, help="thread pool size")
    client = commands.add_parser("client", help="make calls and print one JSON line")
    client.add_argument("--target", required=True, metavar="HOST:PORT",
                        help="for bench, a comma-separated list is spread over")
    client.add_argument("--call", required=True, choices=sorted(_CALLS))
    client.add_argument("--count", type=int, default=1)
    client.add_argument("--payload", default="hello")
    client.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="deadline of each call (of the whole call for bidi)")
    client.add_argument("--concurrency", type=int, default=1, help="threads, for bench")
    client.add_argument("--tls-ca", metavar="CA", help="use TLS, trusting CA (PEM)")
    client.add_argument("--authority", metavar="NAME",
                        help="TLS name to verify (with --tls-ca), else :authority")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Run the C{server} or C{client} command in C{argv} (default:
    C{sys.argv[1:]}).
    """
    options = _parser().parse_args(argv)
    if options.command == "server":
        return _serve(options)
    return _client(options)


if __name__ == "__main__":
    sys.exit(main())
