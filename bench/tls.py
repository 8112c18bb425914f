#!/usr/bin/env python3
"""bench/tls.py -- what TLS costs golb: HTTPS vs plain HTTP in the same run.

One golb serves two listeners on the same pool (two fast backends, nginx or
asyncio; see bench/run.py): `plain` on HTTP and `tls` on HTTPS with golb's
defaults (TLS 1.3, modern ciphers; an ECDSA P-256 or RSA 2048 certificate
made for the run).  wrk measures, in alternating rounds (plain, tls, plain,
tls...) so that drift on the machine hits both alike:
  keepalive   requests/s over keep-alive connections (bulk encryption cost)
  close       with --close: `Connection: close`, one handshake per request
Each is reported with its best round and the tls/plain ratio.

Usage:
  .venv/bin/python bench/tls.py [--duration 10] [--connections 50] [--rounds 2]
        [--key ecdsa|rsa] [--close] [--json OUT]

Every process it starts is stopped by PID at the end.  Requires wrk (built
with TLS, as Debian's is) and golb's HTTPS listeners wired into twistd.
"""
import argparse
import datetime
import json
import os
import shutil
import ssl
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/run.py: backends, wrk, process handling)


def write_certificate(directory, kind):
    """
    A self-signed certificate for localhost and 127.0.0.1.

    @return: (cert path, key path).
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if kind == "rsa":
        key = rsa.generate_private_key(65537, 2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    certPath = os.path.join(directory, "bench.pem")
    keyPath = os.path.join(directory, "bench.key")
    with open(certPath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyPath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(keyPath, 0o600)
    return certPath, keyPath


def write_config(path, plainPort, tlsPort, backends, cert, key):
    with open(path, "w") as f:
        f.write("listeners:\n")
        f.write('  - name: plain\n    address: "127.0.0.1:%d"\n' % plainPort)
        f.write('  - name: tls\n    address: "127.0.0.1:%d"\n' % tlsPort)
        f.write('    tls:\n      certificates:\n        - {cert: "%s", key: "%s"}\n' % (cert, key))
        f.write("backend_pools:\n  - name: default\n    algorithm: round_robin\n    backends:\n")
        for p in backends:
            f.write("      - url: http://127.0.0.1:%d\n" % p)
        f.write("monitoring:\n  prometheus: {enabled: false}\n  tracing: {enabled: false}\n"
                "  logging: {access_log: {enabled: false}}\n"
                "admin: {enabled: false}\n")


def wait_https(url, proc, timeout):
    """
    Wait until C{url} answers with the backend body over TLS (not verified:
    the certificate is the run's own).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("golb exited (rc=%s) before %s answered" % (proc.returncode, url))
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if r.read() == run.BODY:
                    return r.version
        except Exception as e:  # noqa: BLE001
            last = repr(e)
        time.sleep(0.2)
    raise RuntimeError("%s did not answer in %ss: %s" % (url, timeout, last))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each listener (default 2)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds per listener")
    ap.add_argument("--key", choices=("ecdsa", "rsa"), default="ecdsa",
                    help="certificate key type (default ecdsa)")
    ap.add_argument("--close", action="store_true",
                    help="also measure Connection: close (a handshake per request)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")

    procs = run.Procs()
    tmp = tempfile.mkdtemp(prefix="golb-tls-")
    log = open(os.path.join(tmp, "procs.log"), "w")
    modes = ["keepalive"] + (["close"] if args.close else [])
    results = {mode: {"plain": [], "tls": []} for mode in modes}
    try:
        backends = [run.free_port(), run.free_port()]
        kind = run.start_backends(procs, tmp, backends, log)
        cert, key = write_certificate(tmp, args.key)
        plainPort, tlsPort = run.free_port(), run.free_port()
        cfg = os.path.join(tmp, "golb.yaml")
        write_config(cfg, plainPort, tlsPort, backends, cert, key)
        golbLog = open(os.path.join(tmp, "golb.log"), "w")
        golb = procs.start([run.find_twistd(), "-n", "--pidfile=", "golb", "--config", cfg],
                           stdout=golbLog, stderr=golbLog, cwd=tmp)
        urls = {"plain": "http://127.0.0.1:%d/" % plainPort,
                "tls": "https://127.0.0.1:%d/" % tlsPort}
        try:
            run.wait_body(urls["plain"], golb, 30)
            wait_https(urls["tls"], golb, 30)
        except RuntimeError:
            golbLog.flush()
            sys.stderr.write(open(golbLog.name).read()[-3000:])
            raise
        if args.warmup > 0:
            for name in ("plain", "tls"):
                run.run_wrk(urls[name], args.warmup, args.connections, False)
        for _ in range(args.rounds):
            for mode in modes:
                for name in ("plain", "tls"):
                    r = run.run_wrk(urls[name], args.duration, args.connections, mode == "close")
                    if golb.poll() is not None:
                        raise RuntimeError("golb exited during the %s %s run" % (name, mode))
                    raw = r.pop("raw")
                    if r["rps"] is None:
                        sys.stderr.write(raw)
                    results[mode][name].append(r)
        peak = run.proc_status(golb.pid, "VmHWM")
    finally:
        procs.stop_all()
        log.close()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)

    print("golb TLS bench: backends=%s x2 (100-byte body), wrk -t1 -c%d -d%ds, %d round(s), "
          "%s certificate, loopback" % (kind, args.connections, args.duration, args.rounds,
                                        args.key))
    summary = {"backend": kind, "connections": args.connections, "duration": args.duration,
               "key": args.key, "golb_peak_rss_bytes": peak}
    for mode in modes:
        best = {}
        for name in ("plain", "tls"):
            runs = [r for r in results[mode][name] if r["rps"]]
            best[name] = max(runs, key=lambda r: r["rps"]) if runs else {"rps": 0}
            b = best[name]
            print("  %-9s %-5s  %10.1f req/s   p50 %8.3f ms   p99 %8.3f ms   errors %d"
                  % (mode, name, b["rps"] or 0, b.get("p50_ms") or 0, b.get("p99_ms") or 0,
                     b.get("errors", 0)))
        ratio = (best["tls"]["rps"] / best["plain"]["rps"]) if best["plain"]["rps"] else None
        print("  %-9s tls/plain: %s" % (mode, "%.2f" % ratio if ratio else "n/a"))
        summary[mode] = {"plain": results[mode]["plain"], "tls": results[mode]["tls"],
                         "ratio": ratio}
    print("  golb peak RSS (VmHWM): %.1f MiB" % (peak / 1048576.0 if peak else float("nan")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
