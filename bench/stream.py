#!/usr/bin/env python3
"""bench/stream.py -- does golb stream large bodies with bounded memory?

  1. starts a backend (asyncio, child process) on 127.0.0.1 that answers any
     GET with N bytes (default 1 GiB) generated on the fly, writing 64 KiB
     chunks and awaiting drain() (so it only produces as fast as golb reads);
  2. starts golb (`twistd -n --pidfile= golb --config TMP.yaml`) in front;
  3. a slow client (raw socket, SO_RCVBUF 64 KiB) reads 64 KiB, pauses
     --pause ms, repeats, until the whole body arrived or --max-time passed;
  4. samples golb's VmRSS every 50 ms; prints bytes received, elapsed, and
     RSS growth (max sampled VmRSS - VmRSS at start).
Exit status: 0 if growth <= --limit-mib (default 64), 1 otherwise, 2 on error.
Every process it starts is stopped by PID.

Usage: .venv/bin/python bench/stream.py [--size BYTES] [--max-time 120]
                                        [--pause 2] [--limit-mib 64]
Python 3.9+, stdlib only.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import Procs, find_twistd, pick_port, proc_status  # noqa: E402

BACKEND = r'''
import asyncio, sys
PORT, SIZE = int(sys.argv[1]), int(sys.argv[2])
CHUNK = (b"0123456789abcdef" * 4096)  # 64 KiB
async def handle(r, w):
    try:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % SIZE)
        left = SIZE
        while left > 0:
            n = min(left, len(CHUNK))
            w.write(CHUNK[:n] if n < len(CHUNK) else CHUNK)
            left -= n
            await w.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        w.close()
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", PORT)
    await s.serve_forever()
asyncio.run(main())
'''


def wait_port(port, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited (rc=%s) before port %d opened" % (proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("port %d did not open in %ss" % (port, timeout))


def slow_get(port, path, max_time, pause_s, rcvbuf):
    """Returns (status_line, body_bytes_received, content_length, elapsed)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path.encode(), port))
    t0 = time.time()
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise RuntimeError("connection closed before response head: %r" % buf[:200])
        buf += d
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    clen = None
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            clen = int(v.strip())
    got = len(body)
    deadline = t0 + max_time
    try:
        while (clen is None or got < clen) and time.time() < deadline:
            want = 65536
            while want > 0 and (clen is None or got < clen):
                s.settimeout(max(0.1, min(30.0, deadline - time.time())))
                d = s.recv(want)
                if not d:
                    want = -1
                    break
                got += len(d)
                want -= len(d)
            if want < 0:
                break
            if pause_s:
                time.sleep(pause_s)
    except socket.timeout:
        pass
    s.close()
    return lines[0].decode("latin-1"), got, clen, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1 << 30, help="body bytes (default 1 GiB)")
    ap.add_argument("--max-time", type=float, default=120.0, help="stop reading after this many s")
    ap.add_argument("--pause", type=float, default=2.0, help="ms to pause after each 64 KiB")
    ap.add_argument("--rcvbuf", type=int, default=65536, help="client SO_RCVBUF")
    ap.add_argument("--limit-mib", type=float, default=64.0, help="max allowed RSS growth")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()

    procs = []
    tmp = tempfile.mkdtemp(prefix="golb-stream-")
    log = open(os.path.join(tmp, "procs.log"), "w")
    samples = []
    stop = threading.Event()
    rc = 2
    try:
        bport = pick_port(3001)
        be = subprocess.Popen([sys.executable, "-c", BACKEND, str(bport), str(args.size)],
                              stdout=log, stderr=log)
        procs.append(be)
        wait_port(bport, be, 10)
        port = pick_port(args.port)
        cfg = os.path.join(tmp, "golb.yaml")
        with open(cfg, "w") as f:
            f.write("listeners:\n  - name: stream\n    address: \"127.0.0.1:%d\"\n"
                    "backend_pools:\n  - name: default\n    backends:\n"
                    "      - url: http://127.0.0.1:%d\n" % (port, bport))
        golb = subprocess.Popen([find_twistd(), "-n", "--pidfile=", "golb", "--config", cfg],
                                stdout=log, stderr=log, cwd=tmp)
        procs.append(golb)
        wait_port(port, golb, 30)
        time.sleep(0.5)
        rss0 = proc_status(golb.pid, "VmRSS")

        def sampler():
            while not stop.is_set():
                v = proc_status(golb.pid, "VmRSS")
                if v is not None:
                    samples.append(v)
                stop.wait(0.05)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        status, got, clen, elapsed = slow_get(port, "/big", args.max_time,
                                              args.pause / 1000.0, args.rcvbuf)
        time.sleep(0.2)
        stop.set()
        th.join()
        peak = max(samples + [rss0])
        growth = peak - rss0
        mib = 1048576.0
        print("golb streaming check: body %d bytes, client pause %.1f ms per 64 KiB, rcvbuf %d"
              % (args.size, args.pause, args.rcvbuf))
        print("  status: %s" % status)
        print("  received %d of %s bytes (%.1f%%) in %.1f s (%.1f MiB/s)%s"
              % (got, clen, 100.0 * got / clen if clen else 0, elapsed, got / mib / elapsed,
                 "" if clen == got else "  [stopped early: time bound or close]"))
        print("  golb VmRSS start %.1f MiB, max sampled %.1f MiB, growth %.1f MiB (limit %.0f)"
              % (rss0 / mib, peak / mib, growth / mib, args.limit_mib))
        rc = 0 if growth <= args.limit_mib * mib else 1
        print("  result: %s" % ("PASS" if rc == 0 else "FAIL (RSS grew too much)"))
    finally:
        stop.set()
        for p in reversed(procs):
            Procs.stop(None, p)
        log.close()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
