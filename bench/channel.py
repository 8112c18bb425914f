#!/usr/bin/env python3
"""bench/channel.py -- golb's client connection: GolbChannel vs FastChannel.

Two measurements, both alternating the two channels in the same run:

  micro   (default: on) one channel over a StringTransport and a trivial
          resource; N keep-alive requests of a typical browser-ish head
          (7 header fields), timed with perf_counter: us per request spent
          in parsing + Request + response framing, no sockets.
  server  (--server) the real thing: golb under twistd proxying to a backend
          (an nginx on --backend, default 127.0.0.1:18081, which must be
          running), loaded by `wrk -t1 -c20` for --duration seconds after a
          2 s warm-up.  golb's CPU time (utime+stime from /proc/PID/stat)
          divided by the requests served gives CPU us per request.

To run golb with FastChannel without touching golb/tap.py, the server is
started as `python bench/channel.py --serve ...`: that process sets
golb.listener.GolbSite.protocol from $GOLB_BENCH_CHANNEL (golb | fast) and
then runs twistd in-process (`twistd -n --pidfile= golb --config FILE`).
That hack lives here only.

Usage:
  .venv/bin/python bench/channel.py                         # micro only
  .venv/bin/python bench/channel.py --server --rounds 3     # + wrk vs nginx
  .venv/bin/python bench/channel.py --python .venv-pypy/bin/python --server

Every process it starts is stopped by PID.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHANNELS = ("golb", "fast")

HEAD = (
    b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n"
    b"X-Request-Id: 12345\r\nCookie: a=1\r\n\r\n"
)


def _channelClass(name):
    from golb._fastchannel import FastChannel
    from golb.listener import GolbChannel

    return {"golb": GolbChannel, "fast": FastChannel}[name]


def serve(argv):
    """
    Run twistd golb in this process with the channel named by
    $GOLB_BENCH_CHANNEL.
    """
    sys.path.insert(0, ROOT)
    import golb.listener

    golb.listener.GolbSite.protocol = _channelClass(os.environ.get("GOLB_BENCH_CHANNEL", "golb"))
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "-n", "--pidfile=", "golb"] + argv
    run()


def micro(requests, rounds):
    """
    Time C{requests} keep-alive requests per channel, C{rounds} times.

    @return: C{{name: [us per request, ...]}}.
    """
    sys.path.insert(0, ROOT)
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from golb.listener import GolbSite

    class Ok(Resource):
        isLeaf = True

        def render(self, request):
            request.setHeader(b"content-length", b"2")
            return b"ok"

    results = {name: [] for name in CHANNELS}
    for _ in range(rounds):
        for name in CHANNELS:
            site = GolbSite(Ok(), reactor=Clock())
            site.protocol = _channelClass(name)
            channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
            transport = StringTransport()
            channel.makeConnection(transport)
            for _ in range(2000):  # warm-up (and PyPy's JIT)
                channel.dataReceived(HEAD)
            transport.clear()
            start = time.perf_counter()
            for i in range(requests):
                channel.dataReceived(HEAD)
                if i % 1000 == 0:
                    transport.clear()
            elapsed = time.perf_counter() - start
            results[name].append(elapsed / requests * 1e6)
    return results


def _freePort():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _waitForPort(port, deadline):
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _cpuTicks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _wrk(url, duration, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    requests = rps = None
    for line in out.splitlines():
        if "requests in" in line:
            requests = int(line.split()[0])
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
    non2xx = "Non-2xx" in out or "Socket errors" in out
    return requests, rps, non2xx


def server(python, backend, rounds, duration, connections):
    """
    Alternate golb with each channel under wrk, C{rounds} times.

    @return: C{{name: [(rps, cpu us per request, errors?), ...]}}.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    results = {name: [] for name in CHANNELS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name in CHANNELS:
                port = _freePort()
                config = os.path.join(tmp, "golb.yaml")
                with open(config, "w") as f:
                    f.write(
                        f'listeners: [{{name: bench, address: "127.0.0.1:{port}"}}]\n'
                        f"backend_pools: [{{name: default, backends: "
                        f'[{{url: "http://{backend}"}}]}}]\n'
                        "admin: {enabled: false}\n"
                        "monitoring: {prometheus: {enabled: false}, "
                        "logging: {access_log: {enabled: false}}}\n"
                    )
                env = dict(os.environ, GOLB_BENCH_CHANNEL=name)
                log = open(os.path.join(tmp, f"golb-{name}.log"), "w")
                process = subprocess.Popen(
                    [python, os.path.abspath(__file__), "--serve", "--config", config],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                )
                try:
                    if not _waitForPort(port, time.time() + 30):
                        raise SystemExit(f"golb ({name}) did not start; see its log")
                    url = f"http://127.0.0.1:{port}/"
                    _wrk(url, 2, connections)
                    before = _cpuTicks(process.pid)
                    requests, rps, errors = _wrk(url, duration, connections)
                    after = _cpuTicks(process.pid)
                    cpu = (after - before) / ticks * 1e6 / max(requests or 1, 1)
                    results[name].append((rps, cpu, errors))
                    print(f"  {name:5} {rps:9.0f} req/s  {cpu:6.1f} CPU us/req"
                          + ("  (errors!)" if errors else ""), flush=True)
                finally:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                    log.close()
    return results


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the golb servers (e.g. .venv-pypy/bin/python)")
    parser.add_argument("--server", action="store_true", help="also run golb under wrk")
    parser.add_argument("--no-micro", action="store_true")
    parser.add_argument("--backend", default="127.0.0.1:18081")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()

    if not args.no_micro:
        print(f"micro ({sys.implementation.name}, {args.requests} keep-alive requests, "
              "StringTransport):")
        results = micro(args.requests, args.rounds)
        for name in CHANNELS:
            values = results[name]
            print(f"  {name:5} median {statistics.median(values):6.2f} us/req  "
                  f"({', '.join(f'{v:.2f}' for v in values)})")
    if args.server:
        print(f"server ({args.python}, wrk -c{args.connections} -d{args.duration}s "
              f"against {args.backend}, alternating):")
        results = server(args.python, args.backend, args.rounds, args.duration,
                         args.connections)
        for name in CHANNELS:
            rows = results[name]
            print(f"  {name:5} median {statistics.median(r[0] for r in rows):9.0f} req/s  "
                  f"{statistics.median(r[1] for r in rows):6.1f} CPU us/req")


if __name__ == "__main__":
    main()
