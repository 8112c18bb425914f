"""
Cost of a pick for every balancing algorithm (10 and 1000 backends) and of
Router.match (10 and 10 000 host rules), in microseconds per call.

    .venv/bin/python bench/balance.py
    .venv/bin/python bench/balance.py --budget 0.3 --json /tmp/balance.json

Backends have weights 1..5, inFlight 0..10 and a latency (for
least_response_time), drawn from a seeded generator.  Hashing algorithms get
a different client IP and X-Key header on each call (1000 distinct requests,
cycled).  Each figure is measured with time.perf_counter for at most
--budget seconds (default 0.8); the whole run takes well under 60 s.

Not a test: figures depend on the machine; compare rows within one run.
"""

import argparse
import json
import platform
import random
import sys
import time

from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from golb.balancing import BALANCERS, balancerFor
from golb.config import parseConfig
from golb.pool import Backend, BackendRegistry
from golb.runtime import Runtime

BACKEND_COUNTS = (10, 1000)
RULE_COUNTS = (10, 10000)
HASH_ON = {"ip_hash": "client_ip", "consistent_hash": "client_ip"}
EXTRA = (("ip_hash", "header:X-Key"), ("consistent_hash", "header:X-Key"))


class PickRequest:
    """
    The parts of a request that the balancers read.
    """

    def __init__(self, i):
        self.requestHeaders = Headers({b"x-key": [b"key-%d" % i]})
        self.args = {}
        self.path = b"/item/%d" % i
        self.client = "10.%d.%d.%d" % (i // 65536 % 256, i // 256 % 256, i % 256)

    def clientAddress(self):
        return self.client

    def getCookie(self, name):
        return None


def timed(call, budget):
    """
    Microseconds per call of C{call()}, measured for about C{budget} seconds
    (batches of doubling size; at least one batch).
    """
    batch = 16
    calls = 0
    spent = 0.0
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            call()
        spent += time.perf_counter() - start
        calls += batch
        if spent >= budget:
            return spent / calls * 1e6
        if batch < 65536 and spent * 4 < budget:
            batch *= 2


def makeBackends(count, seed=1):
    rng = random.Random(seed)
    backends = []
    for i in range(count):
        port = 1000 + i
        backend = Backend(pool="bench", id="b%d" % i, url="http://10.0.0.1:%d" % port,
                          scheme="http", host="10.0.0.1", port=port, weight=rng.randint(1, 5))
        backend.inFlight = rng.randint(0, 10)
        backend.latency = rng.uniform(0.001, 0.050)
        backends.append(backend)
    return backends


def benchPicks(budget):
    requests = [PickRequest(i) for i in range(1000)]
    rows = [(name, HASH_ON.get(name, "")) for name in BALANCERS] + list(EXTRA)
    results = []
    for name, hashOn in rows:
        costs = {}
        for count in BACKEND_COUNTS:
            backends = makeBackends(count)
            balancer = balancerFor(name, hashOn or "client_ip")
            counter = [0]

            def call(balancer=balancer, backends=backends, counter=counter):
                counter[0] += 1
                return balancer.pick(requests[counter[0] % 1000], backends)

            call()  # warm caches (the consistent_hash ring) outside the timing
            costs[count] = timed(call, budget)
        results.append({"algorithm": name, "hash_on": hashOn, "us": costs})
    return results


def routerConfig(count):
    rules = "".join(
        "  - {name: r%d, match: {host: h%d.example.org}, target_pool: web}\n" % (i, i)
        for i in range(count)
    )
    return (
        "server: {address: '127.0.0.1:0'}\n"
        "backend_pools:\n"
        "  - {name: web, backends: [{url: 'http://127.0.0.1:1'}]}\n"
        "routing_rules:\n" + rules
        + "  - {name: wild, match: {host: '*.example.net'}, target_pool: web}\n"
        "  - {name: anyhost, match: {path_prefix: /}, target_pool: web}\n"
    )


def routeRequest(host):
    request = DummyRequest([b""])
    request.path = b"/"
    request.uri = b"/"
    request.args = {}
    request.requestHeaders.setRawHeaders(b"host", [host])
    return request


def benchRoutes(budget):
    results = []
    for count in RULE_COUNTS:
        start = time.perf_counter()
        router = Runtime.build(parseConfig(routerConfig(count)), BackendRegistry()).router
        build = time.perf_counter() - start
        cases = (
            ("exact", routeRequest(b"h%d.example.org" % (count // 2)), "r%d" % (count // 2)),
            ("wildcard", routeRequest(b"a.b.example.net"), "wild"),
            ("miss", routeRequest(b"nowhere.example.com"), "anyhost"),
        )
        costs = {}
        for label, request, expected in cases:
            route = router.match(request)
            if route is None or route.name != expected:
                raise SystemExit("%s: expected %s, got %r" % (label, expected, route))
            costs[label] = timed(lambda r=router, q=request: r.match(q), budget)
        results.append({"rules": count, "build_s": build, "us": costs})
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=0.8,
                        help="seconds per measurement (at most 1)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    options = parser.parse_args(argv)
    budget = min(max(options.budget, 0.01), 1.0)

    started = time.perf_counter()
    picks = benchPicks(budget)
    routes = benchRoutes(budget)

    print("%s %s" % (platform.python_implementation(), platform.python_version()))
    print("\npick cost, us per call")
    print("%-34s %10s %10s" % ("algorithm", "10", "1000"))
    for row in picks:
        label = row["algorithm"] + (" (%s)" % row["hash_on"] if row["hash_on"] else "")
        print("%-34s %10.2f %10.2f" % (label, row["us"][10], row["us"][1000]))
    print("\nRouter.match, us per call (host rules + 1 wildcard + 1 host-less)")
    print("%-10s %10s %10s %10s %10s" % ("rules", "exact", "wildcard", "miss", "build s"))
    for row in routes:
        print("%-10d %10.2f %10.2f %10.2f %10.2f" % (
            row["rules"], row["us"]["exact"], row["us"]["wildcard"], row["us"]["miss"],
            row["build_s"]))
    total = time.perf_counter() - started
    print("\ntotal %.1f s" % total)

    if options.json:
        with open(options.json, "w") as out:
            json.dump({
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "budget_s": budget,
                "picks": picks,
                "routes": routes,
                "total_s": total,
            }, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
