#!/usr/bin/env python3
"""bench/connections.py -- what idle keep-alive client connections cost golb.

Starts a demo-free golb (twistd, one listener, one nginx or asyncio backend
from bench/run.py), opens N client connections (default 10 000; the file
descriptor limits of this process and of golb are raised for it), sends one
request on each so that every connection has served a request and sits idle
in keep-alive, then reads golb's resident memory (VmRSS) before and after and
prints the cost per connection.  Every process it starts is stopped by PID.

Usage:
  .venv/bin/python bench/connections.py [--connections 10000] [--json OUT]
        [--twistd PATH]   (e.g. .venv-pypy/bin/twistd for PyPy)
"""
import argparse
import json
import os
import resource
import selectors
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/run.py: backends and process handling)

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def raiseLimit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def openConnections(port, count, timeout=120.0):
    """
    Open C{count} connections, send one request on each and read its whole
    response (a 100-byte body); return the sockets, still open.
    """
    selector = selectors.DefaultSelector()
    sockets = []
    pending = {}
    deadline = time.time() + timeout
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
        pending[s] = b""
        selector.register(s, selectors.EVENT_WRITE)
        # keep the number of handshakes in flight bounded
        while len(pending) > 512:
            _pump(selector, pending, deadline)
    while pending:
        _pump(selector, pending, deadline)
    selector.close()
    return sockets


def _pump(selector, pending, deadline):
    if time.time() > deadline:
        raise RuntimeError("connections did not complete in time: %d left" % len(pending))
    for key, events in selector.select(timeout=1.0):
        s = key.fileobj
        if events & selectors.EVENT_WRITE:
            s.send(REQUEST)
            selector.modify(s, selectors.EVENT_READ)
            continue
        data = s.recv(65536)
        if not data:
            raise RuntimeError("golb closed a connection")
        received = pending[s] + data
        if received.endswith(run.BODY):
            selector.unregister(s)
            del pending[s]
        else:
            pending[s] = received


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--twistd", default=None, help="twistd to run golb with")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    limit = raiseLimit(args.connections + 1000)
    if limit < args.connections + 100:
        sys.exit("cannot open %d files (limit %d): run as root or raise ulimit -n"
                 % (args.connections, limit))
    procs = run.Procs()
    tmp = tempfile.mkdtemp(prefix="golb-conns-")
    log = open(os.path.join(tmp, "procs.log"), "w")
    sockets = []
    try:
        backend = run.free_port()
        kind = run.start_backends(procs, tmp, [backend], log)
        port = run.free_port()
        cfg = os.path.join(tmp, "golb.yaml")
        run.write_golb_config(cfg, port, [backend])
        with open(cfg, "a") as f:
            f.write("    keepalive: {max_idle_per_backend: 64}\n")
            f.write("admin: {enabled: false}\n")
            f.write("monitoring: {prometheus: {enabled: false}, logging: "
                    "{access_log: {enabled: false}}}\n")
        twistd = os.path.abspath(args.twistd) if args.twistd else run.find_twistd()
        golbLog = open(os.path.join(tmp, "golb.log"), "w")
        golb = procs.start(
            [twistd, "-n", "--pidfile=", "golb", "--config", cfg],
            stdout=golbLog, stderr=golbLog, cwd=tmp,
            preexec_fn=lambda: raiseLimit(args.connections + 1000))
        run.wait_body("http://127.0.0.1:%d/" % port, golb, 30)
        # warm up, then measure the baseline with a few connections open
        warm = openConnections(port, 100)
        for s in warm:
            s.close()
        time.sleep(1.0)
        before = run.proc_status(golb.pid, "VmRSS")
        started = time.time()
        sockets = openConnections(port, args.connections)
        opened = time.time() - started
        time.sleep(1.0)
        after = run.proc_status(golb.pid, "VmRSS")
        if golb.poll() is not None:
            raise RuntimeError("golb exited")
        perConnection = (after - before) / float(args.connections)
        result = {
            "backend": kind, "connections": args.connections, "twistd": twistd,
            "rss_before_bytes": before, "rss_after_bytes": after,
            "bytes_per_connection": perConnection, "open_seconds": opened,
        }
        print("golb idle keep-alive connections (%s): %d connections opened in %.1f s"
              % (os.path.basename(os.path.dirname(os.path.dirname(twistd))) or twistd,
                 args.connections, opened))
        print("  golb VmRSS %.1f MiB -> %.1f MiB: %.1f KiB per connection"
              % (before / 1048576.0, after / 1048576.0, perConnection / 1024.0))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        for s in sockets:
            s.close()
        procs.stop_all()
        log.close()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
