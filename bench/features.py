#!/usr/bin/env python3
"""bench/features.py -- what golb's features cost per request, as ratios
taken in one run.

Each scenario is a golb configuration on the same two backends (nginx, else
an asyncio server; see bench/run.py).  The scenarios run in turn, twice
each in alternating order (A B C A B C) so that drift on the machine hits
all of them alike, and each is reported with its best run and its ratio to
the `base` scenario (no policies, no observability).

Scenarios:
  base        no policies, metrics off, tracing off, access log off
  policies5   five policies on the route: acl, rate_limit (never reached),
              headers (request set + response remove), rewrite (strip_prefix),
              cors
  metrics     Prometheus metrics on (scraped once at the end, checked)
  tracing1    metrics + OpenTelemetry tracing, sampling 1.0, exporting over
              OTLP/HTTP to a local sink that accepts and drops
  tracing001  the same with sampling 0.01
  accesslog   metrics + a JSON access log to a file

Usage:
  .venv/bin/python bench/features.py [--duration 10] [--connections 50]
        [--scenarios base,policies5] [--json OUT]

Every process it starts is stopped by PID at the end.  Requires wrk.
"""
import argparse
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/run.py: backends, wrk, process handling)


def monitoring(metricsPort=None, sinkPort=None, sampling=None, accessLog=None):
    """
    The C{monitoring:} section: metrics on C{metricsPort} (off when None),
    tracing to the sink at C{sampling} (off when None), a JSON access log
    to the file C{accessLog} (off when None).
    """
    lines = ["monitoring:"]
    if metricsPort is None:
        lines.append("  prometheus: {enabled: false}")
    else:
        lines.append('  prometheus: {enabled: true, address: "127.0.0.1:%d"}' % metricsPort)
    if sampling is None:
        lines.append("  tracing: {enabled: false}")
    else:
        lines.append('  tracing: {enabled: true, protocol: http,'
                     ' endpoint: "http://127.0.0.1:%d", sampling_rate: %s}' % (sinkPort, sampling))
    if accessLog is None:
        lines.append("  logging: {access_log: {enabled: false}}")
    else:
        lines.append('  logging: {access_log: {enabled: true, format: json, path: "%s"}}'
                     % accessLog)
    return "\n".join(lines) + "\n"


POLICIES5 = """\
    policies:
      - acl: {allow: ["127.0.0.0/8", "::1/128"], deny: ["10.0.0.0/8"]}
      - rate_limit: {rate: 1000000/second, burst: 1000000}
      - headers:
          request: {set: {X-Bench: "1"}, remove: [X-Debug]}
          response: {remove: [X-Powered-By]}
      - rewrite: {strip_prefix: /nothing}
      - cors: {allow_origins: ["https://app.example.com"]}
"""


def scenario(name, metricsPort, sinkPort, tmp):
    """
    The YAML for one scenario: the route (with its policies) and monitoring.
    """
    route = "routing_rules:\n  - match: {path_prefix: /}\n    target_pool: default\n"
    if name == "base":
        return route + monitoring()
    if name == "policies5":
        return route + POLICIES5 + monitoring()
    if name == "metrics":
        return route + monitoring(metricsPort)
    if name == "tracing1":
        return route + monitoring(metricsPort, sinkPort, "1.0")
    if name == "tracing001":
        return route + monitoring(metricsPort, sinkPort, "0.01")
    if name == "accesslog":
        return route + monitoring(metricsPort, accessLog=os.path.join(tmp, "access.log"))
    raise SystemExit("unknown scenario %r" % name)


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts and drops everything."""

    received = 0

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).received += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--scenarios", default="base,policies5",
                    help="comma-separated (base,policies5,metrics,tracing1,tracing001,accesslog)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each scenario (default 2)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = ap.parse_args()
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    if "base" not in names:
        names.insert(0, "base")
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    procs = run.Procs()
    tmp = tempfile.mkdtemp(prefix="golb-features-")
    log = open(os.path.join(tmp, "procs.log"), "w")
    results = {name: [] for name in names}
    try:
        backends = [run.free_port(), run.free_port()]
        kind = run.start_backends(procs, tmp, backends, log)
        for round_ in range(args.rounds):
            for name in names:
                port = run.free_port()
                metricsPort = run.free_port()
                cfg = os.path.join(tmp, "%s.yaml" % name)
                run.write_golb_config(cfg, port, backends)
                extra = scenario(name, metricsPort, sink.server_address[1], tmp)
                with open(cfg, "a") as f:
                    f.write(extra)
                golbLog = open(os.path.join(tmp, "%s-%d.log" % (name, round_)), "w")
                golb = procs.start(
                    [run.find_twistd(), "-n", "--pidfile=", "golb", "--config", cfg],
                    stdout=golbLog, stderr=golbLog, cwd=tmp)
                url = "http://127.0.0.1:%d/" % port
                try:
                    run.wait_body(url, golb, 30)
                except RuntimeError:
                    golbLog.flush()
                    sys.stderr.write(open(golbLog.name).read()[-3000:])
                    raise
                run.run_wrk(url, 2, args.connections, False)
                r = run.run_wrk(url, args.duration, args.connections, False)
                raw = r.pop("raw")
                if r["rps"] is None or golb.poll() is not None:
                    sys.stderr.write(raw)
                    raise RuntimeError("scenario %s failed" % name)
                if "prometheus: {enabled: true" in extra:
                    with urllib.request.urlopen(
                            "http://127.0.0.1:%d/metrics" % metricsPort, timeout=5) as m:
                        r["metrics_bytes"] = len(m.read())
                r["peak_rss_bytes"] = run.proc_status(golb.pid, "VmHWM")
                results[name].append(r)
                procs.stop(golb)
                golbLog.close()
    finally:
        procs.stop_all()
        sink.shutdown()
        log.close()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)

    best = {name: max(runs, key=lambda r: r["rps"] or 0) for name, runs in results.items()}
    base = best["base"]["rps"]
    print("golb features: backends=%s x2 (100-byte body), wrk -t1 -c%d -d%ds keep-alive,"
          " best of %d, loopback" % (kind, args.connections, args.duration, args.rounds))
    for name in names:
        r = best[name]
        print("  %-11s %10.1f req/s  x%.3f of base   p50 %7.3f ms   p99 %7.3f ms   errors %d%s"
              % (name, r["rps"], r["rps"] / base, r["p50_ms"] or 0, r["p99_ms"] or 0,
                 r["errors"], ("   non-2xx %d" % r["non2xx"]) if r.get("non2xx") else ""))
    if _Sink.received:
        print("  (OTLP sink received %d export requests)" % _Sink.received)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": kind, "runs": results,
                       "ratios": {n: best[n]["rps"] / base for n in names}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
