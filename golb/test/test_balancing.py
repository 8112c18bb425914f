"""
Tests for L{golb.balancing}.
"""

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from golb.balancing import IBalancer, RoundRobin, SmoothWeightedRoundRobin, balancerFor
from golb.pool import Backend


def backends(*weights):
    return [
        Backend(pool="p", id=chr(ord("a") + i), url=f"http://h:{i}", scheme="http",
                host="h", port=i, weight=w)
        for i, w in enumerate(weights)
    ]


class RoundRobinTests(SynchronousTestCase):
    """
    Tests for L{RoundRobin}.
    """

    def test_interface(self):
        """
        L{RoundRobin} and L{SmoothWeightedRoundRobin} provide L{IBalancer}.
        """
        verifyObject(IBalancer, RoundRobin())
        verifyObject(IBalancer, SmoothWeightedRoundRobin())

    def test_alternates(self):
        """
        With equal weights, requests alternate between backends in order.
        """
        pool = backends(1, 1, 1)
        balancer = RoundRobin()
        picks = [balancer.pick(None, pool).id for _ in range(6)]
        self.assertEqual(picks, ["a", "b", "c", "a", "b", "c"])

    def test_weights(self):
        """
        Over whole cycles each backend gets its weight's share exactly.
        """
        pool = backends(1, 2, 5)
        balancer = RoundRobin()
        counts = Counter(balancer.pick(None, pool).id for _ in range(800))
        self.assertEqual(counts, {"a": 100, "b": 200, "c": 500})

    def test_allZeroWeights(self):
        """
        When every candidate has weight 0 they still take turns.
        """
        pool = backends(0, 0)
        balancer = RoundRobin()
        self.assertEqual([balancer.pick(None, pool).id for _ in range(4)], ["a", "b", "a", "b"])


class SmoothWeightedRoundRobinTests(SynchronousTestCase):
    """
    Tests for L{SmoothWeightedRoundRobin}.
    """

    def test_nginxSequence(self):
        """
        Weights 5, 1, 1 give nginx's smooth sequence a a b a c a a.
        """
        pool = backends(5, 1, 1)
        balancer = SmoothWeightedRoundRobin()
        picks = "".join(balancer.pick(None, pool).id for _ in range(14))
        self.assertEqual(picks, "aabacaa" * 2)

    def test_registry(self):
        """
        The configuration's algorithm names map to their classes.
        """
        self.assertIsInstance(balancerFor("round_robin"), RoundRobin)
        self.assertIsInstance(balancerFor("weighted_round_robin"), SmoothWeightedRoundRobin)


class FakeRequest:
    """
    Just enough of a request for the hashing balancers.
    """

    def __init__(self, client="10.0.0.1", headers=None, cookies=None, args=None, path=b"/"):
        from twisted.web.http_headers import Headers

        self.client = client
        self.requestHeaders = Headers(headers or {})
        self.cookies = cookies or {}
        self.args = args or {}
        self.path = path

    def clientAddress(self):
        return self.client

    def getCookie(self, name):
        return self.cookies.get(name)


class LoadAwareTests(SynchronousTestCase):
    """
    Tests for the algorithms that look at load.
    """

    def test_leastConnectionsAvoidsBusy(self):
        """
        least_connections steers away from a backend with requests piling up
        (a slow one), relative to weight.
        """
        a, b, c = backends(1, 1, 2)
        a.inFlight, b.inFlight, c.inFlight = 5, 1, 4
        self.assertIs(balancerFor("least_connections").pick(None, [a, b, c]), b)
        b.inFlight = 2
        self.assertIs(balancerFor("least_connections").pick(None, [a, b, c]), c)

    def test_leastConnectionsTiesShare(self):
        """
        Equal backends take turns.
        """
        pool = backends(1, 1)
        balancer = balancerFor("least_connections")
        self.assertEqual({balancer.pick(None, pool).id for _ in range(4)}, {"a", "b"})

    def test_weightedRandom(self):
        """
        random respects weights within a few percent over many picks.
        """
        import random

        pool = backends(1, 3)
        balancer = balancerFor("random")
        balancer._rng = random.Random(7)
        counts = Counter(balancer.pick(None, pool).id for _ in range(20000))
        self.assertLess(abs(counts["b"] / 20000 - 0.75), 0.02)

    def test_powerOfTwo(self):
        """
        power_of_two never picks the busiest of three backends while the
        other two are idle: its two draws are distinct, so one is less loaded.
        """
        pool = backends(1, 1, 1)
        pool[0].inFlight = 10
        balancer = balancerFor("power_of_two")
        picks = Counter(balancer.pick(None, pool).id for _ in range(3000))
        self.assertEqual(picks["a"], 0)

    def test_first(self):
        """
        first fills backends in configuration order.
        """
        pool = backends(1, 1)
        self.assertEqual(balancerFor("first").pick(None, pool).id, "a")

    def test_leastResponseTime(self):
        """
        least_response_time tries unmeasured backends first, then prefers the
        fastest (peak EWMA times outstanding requests).
        """
        a, b = backends(1, 1)
        balancer = balancerFor("least_response_time")
        a.recordLatency(0.010)
        self.assertIs(balancer.pick(None, [a, b]), b)
        b.recordLatency(0.200)
        self.assertIs(balancer.pick(None, [a, b]), a)
        a.recordLatency(0.500)
        self.assertEqual(a.latency, 0.500)
        self.assertIs(balancer.pick(None, [a, b]), b)


class HashingTests(SynchronousTestCase):
    """
    Tests for ip_hash and consistent_hash.
    """

    def test_ipHashStable(self):
        """
        The same client always reaches the same backend.
        """
        pool = backends(1, 1, 1)
        balancer = balancerFor("ip_hash")
        for ip in ("10.0.0.1", "10.0.0.2", "192.168.1.9"):
            picks = {balancer.pick(FakeRequest(ip), pool).id for _ in range(10)}
            self.assertEqual(len(picks), 1)

    def test_hashOnKinds(self):
        """
        hash_on reads headers, cookies, query arguments and the path.
        """
        from golb.balancing import hashKeyFunction

        request = FakeRequest(
            headers={b"x-user": [b"u1"]}, cookies={b"sid": b"s1"},
            args={b"k": [b"q1"]}, path=b"/p",
        )
        self.assertEqual(hashKeyFunction("header:X-User")(request), b"u1")
        self.assertEqual(hashKeyFunction("cookie:sid")(request), b"s1")
        self.assertEqual(hashKeyFunction("query:k")(request), b"q1")
        self.assertEqual(hashKeyFunction("path")(request), b"/p")
        self.assertEqual(hashKeyFunction("client_ip")(request), b"10.0.0.1")

    def test_consistentRemapShare(self):
        """
        Removing one of 10 backends moves only the keys it held (about 1/10);
        the others stay where they were.
        """
        pool = backends(*[1] * 10)
        balancer = balancerFor("consistent_hash", "header:X-Key")
        keys = [b"key-%d" % i for i in range(5000)]

        def place(candidates):
            return {
                key: balancer.pick(FakeRequest(headers={b"x-key": [key]}), candidates).id
                for key in keys
            }

        before = place(pool)
        after = place(pool[:3] + pool[4:])
        moved = [key for key in keys if before[key] != after[key]]
        self.assertTrue(all(before[key] == "d" for key in moved))
        self.assertLess(abs(len(moved) / len(keys) - 0.1), 0.04)

    def test_consistentBoundedLoad(self):
        """
        A key whose backend is overloaded goes to the next one on the ring.
        """
        pool = backends(1, 1, 1)
        balancer = balancerFor("consistent_hash", "header:X-Key")
        request = FakeRequest(headers={b"x-key": [b"hot"]})
        home = balancer.pick(request, pool)
        home.inFlight = 50
        self.assertIsNot(balancer.pick(request, pool), home)
