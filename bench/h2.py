#!/usr/bin/env python3
"""bench/h2.py -- HTTP/2 and gRPC through golb, against direct, in one run.

What it does (every process it starts is stopped by PID at the end):
  1. starts two HTTP/1.1 backends with bench/run.py's start_backends (nginx
     returning a 100-byte body, or its asyncio stand-in), and, when nginx is
     installed, one more nginx serving the same body over h2c (`listen ...
     http2` without ssl: prior knowledge) as the direct HTTP/2 baseline;
  2. starts two gRPC fixture servers (`python -m golb.test.grpcfixture
     server`, grpcio, this Python or $GOLB_GRPC_PYTHON);
  3. makes a self-signed certificate with the openssl CLI and starts one golb
     (`twistd -n --pidfile= golb --config FILE`; twistd next to this Python,
     or $GOLB_TWISTD) with four listeners: TLS with ALPN [h2, http/1.1],
     plain h2c, plain HTTP/1.1, and h2c for gRPC. Path /test.Echo/* goes to
     pool `grpc` (protocol h2c, the two fixture servers), the rest to pool
     `default` (the HTTP/1.1 backends);
  4. HTTP: h2load (-c CLIENTS -m STREAMS -D DURATION, or -n REQUESTS) against
     the direct h2c nginx, golb over TLS h2 and golb over h2c, then
     `h2load --h1 -m 1` against golb's TLS listener (TLS without HTTP/2);
     wrk against golb HTTP/1.1 and a backend directly;
  5. gRPC: `grpcfixture client --call bench` (COUNT unary calls, CONCURRENCY
     in flight, one grpcio client process) straight to the two fixture
     servers, then through golb's h2c listener and its TLS h2 listener;
     prints calls/s, p50/p99 and each golb row's ratio to direct.
  Also golb's CPU seconds per phase and peak RSS (VmHWM).

Usage:
  .venv/bin/python bench/h2.py [--duration 5] [--clients 50] [--streams 10]
      [--grpc-calls 5000] [--grpc-concurrency 16] [--only http|grpc] [--json OUT]

Requires: h2load (apt-get install -y nghttp2-client), openssl, wrk (optional:
the HTTP/1.1 rows), nginx (optional: nginx-light), grpcio in the Python that
runs the fixtures. Python 3.9+, stdlib only here.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import (  # noqa: E402
    BODY,
    Procs,
    find_twistd,
    free_port,
    nginx_conf,
    proc_status,
    run_wrk,
    start_backends,
    wait_body,
)


class BenchError(Exception):
    """A step failed; the message says which and why."""


# ------------------------------------------------------------------ helpers


def nginx_path():
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None


def start_h2c_nginx(procs, tmp, port, log):
    """An nginx serving BODY over h2c (prior knowledge) on `port`, in tmp/h2c."""
    prefix = os.path.join(tmp, "h2c")
    os.makedirs(prefix)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(prefix, """\
    http2_max_requests 1000000; http2_max_concurrent_streams 256;
    server { listen 127.0.0.1:%d http2 backlog=4096;
             location / { default_type text/plain; return 200 "%s"; } }""" % (
            port, BODY.decode())))
    proc = procs.start([nginx_path(), "-c", conf, "-p", prefix,
                        "-e", os.path.join(prefix, "nginx.err")], stdout=log, stderr=log)
    return proc


def make_certificate(tmp):
    cert = os.path.join(tmp, "cert.pem")
    key = os.path.join(tmp, "key.pem")
    out = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=30)
    if out.returncode:
        raise BenchError("openssl could not make a certificate:\n" + out.stdout)
    return cert, key


def grpc_python():
    python = os.environ.get("GOLB_GRPC_PYTHON") or sys.executable
    ok = subprocess.run([python, "-c", "import grpc"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, timeout=30).returncode == 0
    return python if ok else None


def fixture_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_grpc_server(procs, python, name, log):
    """A grpcfixture server on a port it picks; returns the port."""
    proc = procs.start([python, "-m", "golb.test.grpcfixture", "server", "--name", name,
                        "--workers", "32"],
                       stdout=subprocess.PIPE, stderr=log, env=fixture_env(),
                       universal_newlines=True)
    # The server prints `ready PORT` or exits (then readline returns "").
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        raise BenchError("gRPC fixture server %s did not start (%r); see %s"
                         % (name, line, log.name))
    return int(line.split()[1])


def grpc_client(python, targets, call, count, extra=(), timeout=120):
    args = [python, "-m", "golb.test.grpcfixture", "client", "--target", ",".join(targets),
            "--call", call, "--count", str(count)] + list(extra)
    out = subprocess.run(args, capture_output=True,
                         universal_newlines=True, env=fixture_env(), timeout=timeout)
    if out.returncode:
        raise BenchError("grpc client %s failed (exit %d):\n%s"
                         % (" ".join(args[3:]), out.returncode, out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_golb_config(path, ports, backend_ports, grpc_ports, cert, key):
    lines = [
        "listeners:",
        "  - name: h2tls",
        "    address: \"127.0.0.1:%d\"" % ports["h2tls"],
        "    tls:",
        "      certificates: [{cert: \"%s\", key: \"%s\"}]" % (cert, key),
        "      alpn: [h2, http/1.1]",
        "  - {name: h2c, address: \"127.0.0.1:%d\", http2: {h2c: true}}" % ports["h2c"],
        "  - {name: h1, address: \"127.0.0.1:%d\"}" % ports["h1"],
        "  - {name: grpc, address: \"127.0.0.1:%d\", http2: {h2c: true}}" % ports["grpc"],
        "backend_pools:",
        "  - name: default",
        "    backends:",
    ]
    lines += ["      - url: http://127.0.0.1:%d" % p for p in backend_ports]
    lines += ["  - name: grpc", "    protocol: h2c", "    backends:"]
    lines += ["      - url: http://127.0.0.1:%d" % p for p in grpc_ports]
    lines += [
        "routing_rules:",
        "  - {name: grpc, match: {path_prefix: \"/test.Echo/\"}, target_pool: grpc}",
        "admin: {enabled: false}",
        "monitoring: {prometheus: {enabled: false}, logging: {access_log: {enabled: false}}}",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def tail(path, chars=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)


def cpu_seconds(pid):
    """utime + stime of pid, in seconds (None when unknown)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class CPU:
    """golb's CPU seconds over a `with` block (`.used`)."""

    def __init__(self, pid):
        self.pid = pid
        self.used = None

    def __enter__(self):
        self.start = cpu_seconds(self.pid) if self.pid else None
        return self

    def __exit__(self, *exc):
        end = cpu_seconds(self.pid) if self.pid else None
        if self.start is not None and end is not None:
            self.used = round(end - self.start, 2)
        return False


# ------------------------------------------------------------------ h2load


def parse_h2load(out):
    res = {"rps": None, "requests": None, "succeeded": None, "failed": None, "errored": None,
           "mean_ms": None, "protocol": None}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    if m:
        res["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored", out)
    if m:
        res["requests"], res["succeeded"], res["failed"], res["errored"] = map(int, m.groups())
    m = re.search(r"^time for request:\s+\S+\s+\S+\s+(\S+)", out, re.M)
    if m:
        value = m.group(1)
        for unit, mult in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(unit):
                res["mean_ms"] = round(float(value[: -len(unit)]) * mult, 3)
                break
    m = re.search(r"Application protocol: (\S+)", out)
    if m:
        res["protocol"] = m.group(1)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        res["non2xx"] = sum(map(int, m.groups()[1:]))
    return res


def run_h2load(url, args, duration=None, requests=None, h1=False):
    cmd = ["h2load", "-t", "1", "-c", str(args.clients), "-m", "1" if h1 else str(args.streams)]
    if h1:
        cmd.append("--h1")
    if requests:
        cmd += ["-n", str(requests)]
        bound = 120
    else:
        cmd += ["-D", str(duration)]
        bound = duration + 60
    cmd.append(url)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=bound).stdout
    res = parse_h2load(out)
    res["raw"] = out
    return res


def check_h2(url, what, golb_log):
    res = run_h2load(url, argparse.Namespace(clients=1, streams=1), requests=2)
    if res["succeeded"] != 2 or res.get("non2xx"):
        msg = "%s does not answer HTTP/2 at %s:\n%s" % (what, url, res["raw"][-1500:])
        if golb_log:
            msg += "\n--- golb log tail ---\n" + tail(golb_log)
        raise BenchError(msg)
    return res["protocol"]


# ------------------------------------------------------------------ main


def http_phase(args, results, procs, tmp, log, golb, golb_log, ports, direct_port):
    golb_pid = golb.pid
    rows = results["http"]

    def measure(name, url, golb_side, h1=False):
        if args.warmup:
            run_h2load(url, args, duration=args.warmup, h1=h1)
        with CPU(golb_pid if golb_side else None) as cpu:
            r = run_h2load(url, args, duration=args.duration, requests=args.requests, h1=h1)
        raw = r.pop("raw")
        if r["rps"] is None or not r["succeeded"]:
            sys.stderr.write(raw[-2000:])
        if golb_side and golb.poll() is not None:
            raise BenchError("golb exited during %s:\n%s" % (name, tail(golb_log)))
        r["golb_cpu_s"] = cpu.used
        r["tool"] = "h2load"
        rows[name] = r

    if direct_port:
        url = "http://127.0.0.1:%d/" % direct_port
        check_h2(url, "the direct h2c nginx", None)
        measure("direct nginx h2c", url, False)
    golb_urls = [("golb h2 (TLS, ALPN)", "https://localhost:%d/" % ports["h2tls"]),
                 ("golb h2c", "http://127.0.0.1:%d/" % ports["h2c"])]
    for name, url in golb_urls:
        try:
            check_h2(url, "golb (%s)" % name, golb_log)
        except BenchError as e:
            rows[name] = {"error": "no HTTP/2 answer (details on stderr)"}
            sys.stderr.write("%s\n" % e)
            continue
        measure(name, url, True)
    # the same TLS listener with HTTP/1.1: what TLS costs without HTTP/2
    measure("golb h1 TLS (h2load --h1)", golb_urls[0][1], True, h1=True)
    if shutil.which("wrk"):
        for name, url, golb_side in (
                ("direct backend h1 (wrk)", "http://127.0.0.1:%d/" % results["backend_ports"][0],
                 False),
                ("golb h1 (wrk)", "http://127.0.0.1:%d/" % ports["h1"], True)):
            if args.warmup:
                run_wrk(url, args.warmup, args.clients, False)
            with CPU(golb_pid if golb_side else None) as cpu:
                r = run_wrk(url, args.duration, args.clients, False)
            r.pop("raw")
            r["golb_cpu_s"] = cpu.used
            r["tool"] = "wrk"
            rows[name] = r


def grpc_phase(args, results, python, golb, golb_log, ports, grpc_ports, cert):
    """Direct to the fixture servers, then through golb's h2c and TLS h2 listeners."""
    rows = results["grpc"]
    extra = ["--concurrency", str(args.grpc_concurrency), "--timeout", "10"]
    warm = max(200, args.grpc_calls // 10)
    bound = max(120, args.grpc_calls // 50)
    direct = ["127.0.0.1:%d" % p for p in grpc_ports]
    grpc_client(python, direct, "bench", warm, extra)
    rows["direct (2 servers)"] = r = grpc_client(python, direct, "bench", args.grpc_calls,
                                                 extra, timeout=bound)
    r["golb_cpu_s"] = None
    tls = ["--tls-ca", cert, "--authority", "localhost"]
    failed = False
    for name, target, more in (("through golb h2c", "127.0.0.1:%d" % ports["grpc"], []),
                               ("through golb h2 (TLS)", "127.0.0.1:%d" % ports["h2tls"], tls)):
        check = grpc_client(python, [target], "unary", 2, ["--timeout", "5"] + more)
        if check.get("code") != "OK" or len(check.get("replies", [])) != 2:
            sys.stderr.write("gRPC %s (%s, pool protocol h2c) fails: %s\n"
                             "--- golb log tail ---\n%s\n" % (name, target, check, tail(golb_log)))
            rows[name] = {"error": "%s %s" % (check.get("code"), check.get("details"))}
            failed = True
            continue
        grpc_client(python, [target], "bench", warm, extra + more)
        with CPU(golb.pid) as cpu:
            r = grpc_client(python, [target], "bench", args.grpc_calls, extra + more,
                            timeout=bound)
        r["golb_cpu_s"] = cpu.used
        r["replies_seen"] = sorted(set(check["replies"]))
        rows[name] = r
        if golb.poll() is not None:
            raise BenchError("golb exited during the gRPC run:\n%s" % tail(golb_log))
        if rows["direct (2 servers)"].get("calls_per_s") and r.get("calls_per_s"):
            r["ratio_to_direct"] = round(
                r["calls_per_s"] / rows["direct (2 servers)"]["calls_per_s"], 3)
    return failed


def print_results(args, results):
    print("golb HTTP/2 bench: backends=%s x2 (100-byte body), loopback" % results["backend"])
    http = results.get("http") or {}
    if http:
        print("  HTTP: h2load -t1 -c%d -m%d %s; wrk -t1 -c%d"
              % (args.clients, args.streams,
                 ("-n%d" % args.requests) if args.requests else "-D%ds" % args.duration,
                 args.clients))
        print("  %-26s %12s %10s %10s %9s %9s" % ("target", "req/s", "mean/p50ms", "p99 ms",
                                                  "failed", "golbCPU s"))
        for name, r in http.items():
            if "error" in r:
                print("  %-26s ERROR: %s" % (name, r["error"]))
                continue
            failed = (r.get("failed") or 0) + (r.get("errored") or 0) + r.get("errors", 0) \
                + (r.get("non2xx") or 0)
            lat = r.get("mean_ms") if r["tool"] == "h2load" else r.get("p50_ms")
            print("  %-26s %12.1f %10s %10s %9d %9s"
                  % (name, r.get("rps") or 0, "%.3f" % lat if lat is not None else "-",
                     "%.3f" % r["p99_ms"] if r.get("p99_ms") is not None else "-", failed,
                     r.get("golb_cpu_s") if r.get("golb_cpu_s") is not None else "-"))
        print("  (h2load reports the mean request time; wrk p50/p99)")
    grpc = results.get("grpc") or {}
    if grpc:
        print("  gRPC unary: %d calls, %d in flight, grpcio client (one process)"
              % (args.grpc_calls, args.grpc_concurrency))
        print("  %-26s %12s %10s %10s %9s %9s %8s" % ("target", "calls/s", "p50 ms", "p99 ms",
                                                      "errors", "golbCPU s", "x direct"))
        for name, r in grpc.items():
            if not isinstance(r, dict):
                continue
            if "error" in r:
                print("  %-26s ERROR: %s" % (name, r["error"]))
                continue
            print("  %-26s %12.1f %10.3f %10.3f %9d %9s %8s"
                  % (name, r.get("calls_per_s") or 0, r.get("p50_ms") or 0,
                     r.get("p99_ms") or 0, sum(r.get("errors", {}).values()),
                     r.get("golb_cpu_s") if r.get("golb_cpu_s") is not None else "-",
                     "%.3f" % r["ratio_to_direct"] if "ratio_to_direct" in r else "-"))
    hwm = results.get("golb_peak_rss_bytes")
    if hwm:
        print("  golb peak RSS (VmHWM): %.1f MiB" % (hwm / 1048576.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per HTTP run (default 5)")
    ap.add_argument("--requests", type=int, default=0,
                    help="h2load -n REQUESTS instead of -D DURATION")
    ap.add_argument("--clients", type=int, default=50, help="connections (default 50)")
    ap.add_argument("--streams", type=int, default=10,
                    help="h2load -m: concurrent streams per connection (default 10)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up seconds per target")
    ap.add_argument("--grpc-calls", type=int, default=5000, help="unary calls per gRPC run")
    ap.add_argument("--grpc-concurrency", type=int, default=16, help="calls in flight")
    ap.add_argument("--only", choices=("http", "grpc"), help="run one half only")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = ap.parse_args()
    for tool in ("openssl",) + (("h2load",) if args.only != "grpc" else ()):
        if not shutil.which(tool):
            sys.exit("%s not found: apt-get install -y nghttp2-client openssl" % tool)
    python = None
    if args.only != "http":
        python = grpc_python()
        if python is None:
            sys.exit("no Python with grpcio: run with .venv/bin/python or set GOLB_GRPC_PYTHON")

    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="golb-h2bench-")
    log = open(os.path.join(tmp, "procs.log"), "w")
    golb_log_path = os.path.join(tmp, "golb.log")
    results = {"http": {}, "grpc": {}}
    status = 0
    try:
        backend_ports = [free_port(), free_port()]
        while backend_ports[1] == backend_ports[0]:
            backend_ports[1] = free_port()
        results["backend"] = start_backends(procs, tmp, backend_ports, log)
        results["backend_ports"] = backend_ports
        direct_port = None
        if args.only != "grpc" and results["backend"] == "nginx":
            direct_port = free_port()
            start_h2c_nginx(procs, tmp, direct_port, log)
            wait_h2(direct_port)
        grpc_ports = []
        if args.only != "http":
            grpc_ports = [start_grpc_server(procs, python, name, log) for name in ("g1", "g2")]
        cert, key = make_certificate(tmp)
        ports = {k: free_port() for k in ("h2tls", "h2c", "h1", "grpc")}
        # a second look at every port, so that none is handed out twice
        used = set(backend_ports + grpc_ports + ([direct_port] if direct_port else []))
        for k in ports:
            while ports[k] in used:
                ports[k] = free_port()
            used.add(ports[k])
        results["golb_ports"] = ports
        cfg = os.path.join(tmp, "golb.yaml")
        write_golb_config(cfg, ports, backend_ports, grpc_ports or [free_port()], cert, key)
        with open(golb_log_path, "w") as golb_log:
            golb = procs.start([find_twistd(), "-n", "--pidfile=", "golb", "--config", cfg],
                               stdout=golb_log, stderr=golb_log, cwd=tmp)
        try:
            wait_body("http://127.0.0.1:%d/" % ports["h1"], golb, 30)
        except RuntimeError as e:
            raise BenchError("golb did not start: %s\n--- golb log tail ---\n%s"
                             % (e, tail(golb_log_path))) from None
        if args.only != "grpc":
            http_phase(args, results, procs, tmp, log, golb, golb_log_path, ports, direct_port)
        if args.only != "http":
            if grpc_phase(args, results, python, golb, golb_log_path, ports, grpc_ports, cert):
                status = 1
        results["golb_peak_rss_bytes"] = proc_status(golb.pid, "VmHWM")
        if any("error" in r for r in results["http"].values()):
            status = 1
    except BenchError as e:
        sys.stderr.write("bench/h2.py: %s\n" % e)
        status = 1
    finally:
        procs.stop_all()
        log.close()
        if os.environ.get("BENCH_KEEP_TMP"):
            sys.stderr.write("kept %s\n" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if "backend" in results:
        print_results(args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return status


def wait_h2(port, timeout=10):
    deadline = time.time() + timeout
    while True:
        try:
            check_h2("http://127.0.0.1:%d/" % port, "the direct h2c nginx", None)
            return
        except (BenchError, subprocess.TimeoutExpired):
            if time.time() > deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
