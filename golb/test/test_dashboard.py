"""
The Grafana dashboard in deploy/grafana: valid PromQL over metrics golb
really exports.
"""

import json
import os
import re

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "grafana",
                         "golb-dashboard.json")


def expressions():
    with open(DASHBOARD, encoding="utf-8") as f:
        dashboard = json.load(f)
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
            found.append((panel["title"], expr.replace("$job", ".*")))
    return found


class DashboardTests(TestCase):
    """
    Every panel query of the dashboard.
    """

    def test_knownMetrics(self):
        """
        Every metric a panel queries is one golb exports (as documented in
        docs/observability-metrics.md, whose table the metrics tests check).
        """
        from golb.observe import metrics

        source = open(metrics.__file__, encoding="utf-8").read()
        for title, expr in expressions():
            for name in re.findall(r"\bgolb_[a-z_]+", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                self.assertIn(f'"{base}"', source, f"{title}: {name} is not exported")

    @defer.inlineCallbacks
    def test_promql(self):
        """
        promtool accepts every panel query (as recording rules).
        """
        import shutil

        promtool = shutil.which("promtool")
        if promtool is None:
            self.fail("promtool is not installed: it comes with Debian's prometheus package"
                      " (apt-get install -y prometheus), which .ci/run installs")
        lines = ["groups:", "  - name: dashboard", "    rules:"]
        for index, (_title, expr) in enumerate(expressions()):
            lines.append(f"      - record: golb:panel{index}")
            lines.append(f"        expr: {json.dumps(expr)}")
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        out, err, code = yield getProcessOutputAndValue(
            promtool, ["check", "rules", path], env=dict(os.environ), reactor=reactor)
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
