#!/usr/bin/env python3
"""bench/workers.py -- golb with `workers: 1` against `workers: 2` (or more), same run.

What it does (every process it starts is stopped by PID at the end):
  1. starts two nginx backends (100-byte body; bench/run.py's, an asyncio server without nginx);
  2. for each worker count (default 1 and 2): starts golb on a fresh config with that
     `workers:` value, waits until it answers, warms up, runs wrk (keep-alive, --latency)
     and records req/s, p50/p99 and the CPU time of golb's processes (the parent and every
     worker, from /proc) per request;
  3. prints a table with the ratio of each run to the first.

On a machine where wrk and the backends share the cores with golb, more workers help only as
far as cores are free: read the "golb CPU" column (how many cores golb kept busy) beside req/s.

Usage:
  .venv/bin/python bench/workers.py [--workers 1,2] [--duration 10] [--connections 100]
                                   [--threads 2] [--json OUT]
GOLB_TWISTD picks the twistd (e.g. .venv-pypy/bin/twistd). Requires wrk; Linux (/proc).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import (  # noqa: E402
    Procs,
    find_twistd,
    free_port,
    parse_wrk,
    start_backends,
    wait_body,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICKS


def children(pid):
    found = []
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            found = [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found


def rss(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def wrk(url, duration, conns, threads):
    import subprocess

    args = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency",
            "--timeout", "5s", url]
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=duration + 30).stdout
    return parse_wrk(out)


def run_one(procs, tmp, workers, backends, args):
    port = free_port()
    cfg = os.path.join(tmp, "golb-%d.yaml" % workers)
    with open(cfg, "w") as f:
        f.write("workers: %d\n" % workers)
        f.write("listeners: [{name: bench, address: \"127.0.0.1:%d\"}]\n" % port)
        f.write("backend_pools:\n  - name: default\n    backends:\n")
        for b in backends:
            f.write("      - url: http://127.0.0.1:%d\n" % b)
        f.write("monitoring:\n  prometheus: {address: \"127.0.0.1:%d\"}\n" % free_port())
        f.write("  logging: {access_log: {enabled: false}}\n")
        f.write("admin: {enabled: false}\n")
    log = open(os.path.join(tmp, "golb-%d.log" % workers), "w")
    golb = procs.start([find_twistd(), "-n", "--pidfile=", "golb", "--config", cfg],
                       stdout=log, stderr=log, cwd=tmp)
    url = "http://127.0.0.1:%d/" % port
    wait_body(url, golb, 30)
    deadline = time.time() + 30
    while workers > 1 and len(children(golb.pid)) < workers and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    pids = [golb.pid] + children(golb.pid)
    if args.warmup:
        wrk(url, args.warmup, args.connections, args.threads)
    before = cpu_seconds(pids)
    started = time.time()
    result = wrk(url, args.duration, args.connections, args.threads)
    elapsed = time.time() - started
    used = cpu_seconds(pids) - before
    result["workers"] = workers
    result["golb_cpu_cores"] = used / elapsed
    result["cpu_us_per_request"] = used / result["requests"] * 1e6 if result["requests"] else None
    result["rss_bytes"] = rss(pids)
    procs.stop(golb)
    procs.procs.remove(golb)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    counts = [int(n) for n in args.workers.split(",")]
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="golb-workers-")
    log = open(os.path.join(tmp, "procs.log"), "w")
    results = []
    try:
        backends = [free_port(), free_port()]
        kind = start_backends(procs, tmp, backends, log)
        for count in counts:
            results.append(run_one(procs, tmp, count, backends, args))
    finally:
        procs.stop_all()
        log.close()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    print("golb workers bench: %s backends x2 (100-byte body), wrk -t%d -c%d -d%ds keep-alive,"
          " %d cores, %s" % (kind, args.threads, args.connections, args.duration,
                             os.cpu_count(), find_twistd()))
    print("  %-8s %10s %7s %9s %9s %10s %12s %9s" % (
        "workers", "req/s", "ratio", "p50 ms", "p99 ms", "golb CPU", "CPU us/req", "RSS MiB"))
    base = results[0]["rps"] or 1
    for r in results:
        print("  %-8d %10.1f %7.2f %9.2f %9.2f %9.2fc %12.1f %9.1f" % (
            r["workers"], r["rps"] or 0, (r["rps"] or 0) / base, r["p50_ms"] or 0,
            r["p99_ms"] or 0, r["golb_cpu_cores"], r["cpu_us_per_request"] or 0,
            r["rss_bytes"] / 1048576.0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
