"""
Pick cost per balancing algorithm (10 and 1000 backends) and route-match cost
(10 and 10 000 host rules), in microseconds per call.

    .venv/bin/python bench/balance.py

Not a test: figures depend on the machine; compare algorithms within one run.
"""

import random
import time

from twisted.web.http_headers import Headers

from golb.balancing import BALANCERS, balancerFor
from golb.config import parseConfig
from golb.pool import Backend, BackendRegistry
from golb.runtime import Runtime


class Request:
    def __init__(self, i):
        self.requestHeaders = Headers({b"x-key": [b"k%d" % i]})
        self.args = {}
        self.path = b"/p%d" % i
        self.client = "10.0.%d.%d" % (i // 250 % 250, i % 250)
        self.uri = self.path

    def clientAddress(self):
        return self.client

    def getCookie(self, name):
        return None


def timed(fn, budget=0.5):
    n = 0
    start = time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        n += 200
        elapsed = time.perf_counter() - start
        if elapsed > budget:
            return elapsed / n * 1e6


def backends(count):
    rng = random.Random(1)
    result = []
    for i in range(count):
        b = Backend(pool="p", id=str(i), url="http://10.0.0.1:%d" % (1000 + i), scheme="http",
                    host="10.0.0.1", port=1000 + i, weight=rng.randint(1, 5))
        b.inFlight = rng.randint(0, 10)
        b.latency = rng.uniform(0.001, 0.05)
        result.append(b)
    return result


def main():
    requests = [Request(i) for i in range(1000)]
    print("pick cost, us per call")
    print("%-22s %10s %10s" % ("algorithm", "10", "1000"))
    for name in BALANCERS:
        row = []
        for count in (10, 1000):
            pool = backends(count)
            balancer = balancerFor(name, "header:X-Key")
            it = iter(range(10**12))
            row.append(timed(
                lambda b=balancer, it=it, pool=pool: b.pick(requests[next(it) % 1000], pool)))
        print("%-22s %10.2f %10.2f" % (name, row[0], row[1]))
    print("\nroute match cost, us per call")
    for count in (10, 10000):
        rules = "".join(
            "  - {name: r%d, match: {host: h%d.example.org}, target_pool: web}\n" % (i, i)
            for i in range(count)
        )
        yaml = ("server: {address: '127.0.0.1:0'}\nbackend_pools:\n"
                "  - {name: web, backends: [{url: 'http://127.0.0.1:1'}]}\nrouting_rules:\n"
                + rules + "  - {name: wild, match: {host: '*.example.net'}, target_pool: web}\n")
        router = Runtime.build(parseConfig(yaml), BackendRegistry()).router
        from twisted.web.test.requesthelper import DummyRequest

        def request(host):
            r = DummyRequest([b""])
            r.path = b"/"
            r.requestHeaders.setRawHeaders(b"host", [host])
            return r

        hit = request(b"h%d.example.org" % (count // 2))
        wild = request(b"a.example.net")
        miss = request(b"nowhere.example.com")
        print("%6d rules: exact %.2f  wildcard %.2f  miss %.2f" % (
            count, timed(lambda r=router, q=hit: r.match(q)),
            timed(lambda r=router, q=wild: r.match(q)), timed(lambda r=router, q=miss: r.match(q))))


if __name__ == "__main__":
    main()
