#!/usr/bin/env python3
"""bench/run.py -- quick throughput/latency benchmark of golb on loopback.

What it does (every process it starts is stopped by PID at the end):
  1. starts two fast backends on 127.0.0.1 (3001/3002, or free ports if busy):
     nginx (if installed) returning a fixed 100-byte body, else a tiny asyncio
     server in a child Python process returning the same body;
  2. writes a temporary golb YAML (listener 127.0.0.1:PORT, pool `default`
     of the two backends) and starts golb with
     `twistd -n --pidfile= golb --config FILE` (twistd next to this Python,
     or $GOLB_TWISTD);
  3. waits until golb answers with the backend body;
  4. runs wrk (bounded: -d DURATION, -c CONNECTIONS, -t 1, --latency) twice:
     keep-alive, then with `-H 'Connection: close'`;
  5. prints requests/s, p50/p99 latency and golb's peak RSS (VmHWM).

Usage:
  .venv/bin/python bench/run.py [--duration 10] [--connections 50] [--json OUT]

Requires: wrk (apt-get install -y wrk); nginx optional (nginx-light).
Python 3.9+, stdlib only.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BODY = b"ok" + b"x" * 98  # 100 bytes
HERE = os.path.dirname(os.path.abspath(__file__))

ASYNC_BACKEND = r'''
import asyncio, sys
BODY = b"ok" + b"x" * 98
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY)) + BODY
async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            low = head.lower()
            n = 0
            for line in low.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            if n:
                await r.readexactly(n)
            if b"connection: close" in low:
                w.write(CLOSE); await w.drain(); break
            w.write(RESP); await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        w.close()
async def main():
    servers = [await asyncio.start_server(handle, "127.0.0.1", int(p), backlog=1024) for p in sys.argv[1:]]
    await asyncio.gather(*(s.serve_forever() for s in servers))
asyncio.run(main())
'''


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pick_port(preferred):
    return preferred if port_free(preferred) else free_port()


def find_twistd():
    env = os.environ.get("GOLB_TWISTD")
    if env:
        return env
    cand = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(cand):
        return cand
    cand = os.path.join(HERE, "..", ".venv", "bin", "twistd")
    if os.path.exists(cand):
        return os.path.abspath(cand)
    return shutil.which("twistd") or "twistd"


class Procs:
    """Processes we started; stopped by PID only."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)
        self.procs = []


def nginx_conf(prefix, servers):
    """An nginx configuration (one worker, no logs, long keep-alive) with `servers`."""
    return """worker_processes 1;
daemon off;
pid %(t)s/nginx.pid;
error_log %(t)s/nginx.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path %(t)s/body; proxy_temp_path %(t)s/proxy;
    fastcgi_temp_path %(t)s/fcgi; uwsgi_temp_path %(t)s/uwsgi; scgi_temp_path %(t)s/scgi;
    keepalive_requests 1000000; keepalive_timeout 65s;
%(s)s
}
""" % {"t": prefix, "s": servers}


def start_backends(procs, tmp, ports, log):
    """Start two backends; returns a description string."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx and not os.environ.get("BENCH_NO_NGINX"):
        body = BODY.decode()
        servers = "\n".join(
            "    server { listen 127.0.0.1:%d backlog=4096; location / { default_type text/plain; return 200 \"%s\"; } }"
            % (p, body) for p in ports)
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(tmp, servers))
        procs.start([nginx, "-c", conf, "-p", tmp, "-e", os.path.join(tmp, "nginx.err")],
                    stdout=log, stderr=log)
        kind = "nginx"
    else:
        procs.start([sys.executable, "-c", ASYNC_BACKEND] + [str(p) for p in ports],
                    stdout=log, stderr=log)
        kind = "asyncio"
    for p in ports:
        wait_body("http://127.0.0.1:%d/" % p, None, 10)
    return kind


def wait_body(url, proc, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited (rc=%s) before %s answered" % (proc.returncode, url))
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                data = r.read()
                if data == BODY:
                    return
                last = "unexpected body %r" % data[:80]
        except Exception as e:  # noqa: BLE001
            last = repr(e)
        time.sleep(0.2)
    raise RuntimeError("%s did not answer in %ss: %s" % (url, timeout, last))


def write_golb_config(path, port, backend_ports):
    with open(path, "w") as f:
        f.write("listeners:\n  - name: bench\n    address: \"127.0.0.1:%d\"\n" % port)
        f.write("backend_pools:\n  - name: default\n    algorithm: round_robin\n    backends:\n")
        for p in backend_ports:
            f.write("      - url: http://127.0.0.1:%d\n" % p)


def proc_status(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # kB -> bytes
    except OSError:
        pass
    return None


def to_ms(s):
    s = s.strip()
    for unit, mult in (("us", 0.001), ("ms", 1.0), ("m", 60000.0), ("s", 1000.0)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * mult
    return float(s)


def parse_wrk(out):
    res = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": None, "errors": 0}
    lines = out.splitlines()
    in_dist = False
    for line in lines:
        t = line.strip()
        if t.startswith("Requests/sec:"):
            res["rps"] = float(t.split()[1])
        elif "requests in" in t:
            res["requests"] = int(t.split()[0])
        elif t.startswith("Latency Distribution"):
            in_dist = True
        elif in_dist and t[:3] in ("50%", "99%"):
            res["p%s_ms" % t[:2]] = to_ms(t.split()[1])
        elif t.startswith("Socket errors:"):
            for part in t.split(":", 1)[1].split(","):
                res["errors"] += int(part.split()[1])
        elif t.startswith("Non-2xx or 3xx responses:"):
            res["non2xx"] = int(t.split(":")[1])
    return res


def run_wrk(url, duration, conns, close):
    args = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency", "--timeout", "5s"]
    if close:
        args += ["-H", "Connection: close"]
    args.append(url)
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=duration + 30).stdout
    r = parse_wrk(out)
    r["raw"] = out
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    ap.add_argument("--port", type=int, default=8080, help="golb port (a free one if busy)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds before measuring")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")

    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="golb-bench-")
    log = open(os.path.join(tmp, "procs.log"), "w")
    results = {}
    try:
        b1 = pick_port(3001)
        b2 = pick_port(3002) if b1 == 3001 else free_port()
        if b2 == b1:
            b2 = free_port()
        kind = start_backends(procs, tmp, [b1, b2], log)
        port = pick_port(args.port)
        cfg = os.path.join(tmp, "golb.yaml")
        write_golb_config(cfg, port, [b1, b2])
        golb_log = open(os.path.join(tmp, "golb.log"), "w")
        golb = procs.start([find_twistd(), "-n", "--pidfile=", "golb", "--config", cfg],
                           stdout=golb_log, stderr=golb_log, cwd=tmp)
        url = "http://127.0.0.1:%d/" % port
        try:
            wait_body(url, golb, 30)
        except RuntimeError:
            golb_log.flush()
            sys.stderr.write(open(golb_log.name).read()[-3000:])
            raise
        rss_start = proc_status(golb.pid, "VmRSS")
        if args.warmup > 0:
            run_wrk(url, args.warmup, args.connections, False)
        results = {"backend": kind, "backend_ports": [b1, b2], "golb_port": port,
                   "duration": args.duration, "connections": args.connections,
                   "golb_rss_start_bytes": rss_start}
        for mode, close in (("keepalive", False), ("close", True)):
            r = run_wrk(url, args.duration, args.connections, close)
            if golb.poll() is not None:
                raise RuntimeError("golb exited during the %s run" % mode)
            raw = r.pop("raw")
            if r["rps"] is None:
                sys.stderr.write(raw)
            results[mode] = r
        results["golb_peak_rss_bytes"] = proc_status(golb.pid, "VmHWM")
    finally:
        procs.stop_all()
        log.close()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)

    print("golb bench: backends=%s x2 (100-byte body), wrk -t1 -c%d -d%ds, loopback"
          % (results["backend"], args.connections, args.duration))
    for mode in ("keepalive", "close"):
        r = results[mode]
        print("  %-9s  %10.1f req/s   p50 %8.3f ms   p99 %8.3f ms   errors %d%s"
              % (mode, r["rps"] or 0, r["p50_ms"] or 0, r["p99_ms"] or 0, r["errors"],
                 ("   non-2xx %d" % r["non2xx"]) if r.get("non2xx") else ""))
    hwm = results.get("golb_peak_rss_bytes")
    print("  golb peak RSS (VmHWM): %.1f MiB" % (hwm / 1048576.0 if hwm else float("nan")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
