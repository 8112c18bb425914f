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
