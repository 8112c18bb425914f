"""
Tests for L{golb.pool}.
"""

from twisted.trial.unittest import SynchronousTestCase

from golb.config import parseConfig
from golb.pool import BackendRegistry, RetryBudget

CONFIG = """\
server: {address: "127.0.0.1:0"}
backend_pools:
  - name: web
    panic_threshold: 50%
    backends:
      - {url: "http://127.0.0.1:1", name: a}
      - {url: "http://127.0.0.1:2", name: b}
      - {url: "http://127.0.0.1:3", name: c}
      - {url: "http://127.0.0.1:4", name: d}
      - {url: "http://127.0.0.1:9", name: spare, backup: true}
"""


class PoolTests(SynchronousTestCase):
    """
    Tests for L{golb.pool.Pool}.
    """

    def setUp(self):
        self.registry = BackendRegistry()
        self.pool = self.registry.buildPool(parseConfig(CONFIG).pool("web"))
        self.byId = {backend.id: backend for backend in self.pool.backends}

    def ids(self, backends):
        return sorted(backend.id for backend in backends)

    def test_backupOnlyWhenPrimariesDown(self):
        """
        A backup takes traffic only when no primary is available.
        """
        self.assertEqual(self.ids(self.pool.candidates()), ["a", "b", "c", "d"])
        for name in "abcd":
            self.byId[name].state = "drain"
        self.assertEqual(self.ids(self.pool.candidates()), ["spare"])

    def test_drainAndMaint(self):
        """
        Drained and maintenance backends get no new requests.
        """
        self.byId["a"].state = "drain"
        self.byId["b"].state = "maint"
        self.assertEqual(self.ids(self.pool.candidates()), ["c", "d"])

    def test_panic(self):
        """
        Below the panic threshold of healthy backends, health is ignored.
        """
        self.byId["a"].healthy = False
        self.byId["b"].healthy = False
        self.assertEqual(self.ids(self.pool.candidates()), ["c", "d"])
        self.assertFalse(self.pool.panicking)
        self.byId["c"].healthy = False
        self.assertEqual(self.ids(self.pool.candidates()), ["a", "b", "c", "d", "spare"])
        self.assertTrue(self.pool.panicking)

    def test_stateSurvivesRebuild(self):
        """
        Rebuilding a pool (a reload) keeps each remaining backend's state.
        """
        self.byId["a"].state = "drain"
        self.byId["a"].requests = 7
        rebuilt = self.registry.buildPool(parseConfig(CONFIG).pool("web"))
        self.assertIs(rebuilt.backends[0], self.byId["a"])
        self.assertEqual((rebuilt.backends[0].state, rebuilt.backends[0].requests), ("drain", 7))


class RetryBudgetTests(SynchronousTestCase):
    """
    Tests for L{RetryBudget}.
    """

    def test_share(self):
        """
        Past the floor, retries are limited to the share of recent requests,
        and the window slides.
        """
        now = [0.0]
        budget = RetryBudget(0.2, clock=lambda: now[0])
        for _ in range(100):
            budget.request()
        granted = sum(budget.tryRetry() for _ in range(50))
        self.assertEqual(granted, 20)
        now[0] = 25.0
        self.assertTrue(budget.tryRetry())

    def test_floor(self):
        """
        A quiet pool may still retry C{MIN_RETRIES} times per window.
        """
        budget = RetryBudget(0.2, clock=lambda: 0.0)
        budget.request()
        self.assertEqual(sum(budget.tryRetry() for _ in range(30)), RetryBudget.MIN_RETRIES)


class SlowStartTests(SynchronousTestCase):
    """
    slow_start ramps a backend's effective weight.
    """

    def test_reloadAddedBackendRamps(self):
        """
        A backend added by a reload starts with a small share that grows
        linearly to its full weight over slow_start; the others are unaffected.
        """
        now = [100.0]
        registry = BackendRegistry(clock=lambda: now[0])
        config = CONFIG.replace("panic_threshold: 50%", "slow_start: 10s").replace(
            "      - {url: \"http://127.0.0.1:9\", name: spare, backup: true}\n", "")
        config = config.replace("name: a}", "name: a, weight: 10}").replace(
            "name: b}", "name: b, weight: 10}")
        registry.buildPool(parseConfig(config).pool("web"))
        registry.built()
        added = config.replace(
            "      - {url: \"http://127.0.0.1:4\", name: d}\n",
            "      - {url: \"http://127.0.0.1:4\", name: d}\n"
            "      - {url: \"http://127.0.0.1:5\", name: e, weight: 10}\n")
        pool = registry.buildPool(parseConfig(added).pool("web"))
        byId = {backend.id: backend for backend in pool.backends}
        self.assertEqual(byId["a"].effectiveWeight, 10)
        self.assertEqual(byId["e"].effectiveWeight, 1)
        now[0] += 5
        self.assertEqual(byId["e"].effectiveWeight, 5)
        now[0] += 5
        self.assertEqual(byId["e"].effectiveWeight, 10)
        self.assertEqual(byId["e"].readySince, 0.0)
