"""
Tests for L{golb.config}.
"""

import glob
import ipaddress
import json
import os
import textwrap

import attr
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from golb.config import (
    Address,
    AdminConfig,
    BasicAuthPolicy,
    Config,
    ConfigError,
    HealthCheckConfig,
    MaxBodyPolicy,
    PassiveHealthConfig,
    Problem,
    Rate,
    RateLimitPolicy,
    loadConfig,
    parseConfig,
    summary,
)

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "config", "examples")

MINIMAL = """\
server:
  address: ":0"
backend_pools:
  - name: web
    backends:
      - url: http://127.0.0.1:3001
"""


def parse(text, **kwargs):
    """
    Parse dedented C{text}.
    """
    return parseConfig(textwrap.dedent(text), **kwargs)


def problems(testCase, text, **kwargs):
    """
    The problems of dedented C{text}, as strings.
    """
    error = testCase.assertRaises(ConfigError, parse, text, **kwargs)
    return [str(problem) for problem in error.problems]


class ExampleTests(SynchronousTestCase):
    """
    The example files load, with the values they say.
    """

    def test_seed(self):
        """
        The seed example of the configuration contract loads unchanged, with
        its values normalized and the rest defaulted.
        """
        config = loadConfig(os.path.join(EXAMPLES, "seed.yaml"))
        [listener] = config.listeners
        self.assertEqual(listener.name, "default")
        self.assertEqual(listener.address, Address("", 8080))
        self.assertEqual(listener.endpointDescription(), "tcp:port=8080")
        [pool] = config.backend_pools
        self.assertEqual(pool.name, "web-servers")
        self.assertEqual(pool.algorithm, "round_robin")
        self.assertEqual([b.url for b in pool.backends],
                         ["http://localhost:3001", "http://localhost:3002"])
        self.assertEqual([b.weight for b in pool.backends], [1, 2])
        self.assertEqual([b.name for b in pool.backends], ["localhost:3001", "localhost:3002"])
        self.assertEqual(pool.health_check,
                         HealthCheckConfig(path="/health", interval=30.0, timeout=5.0))
        self.assertIsNone(pool.passive_health)
        [rule] = config.routing_rules
        self.assertEqual(rule.name, "rule0")
        self.assertEqual(rule.match.host, "example.com")
        self.assertEqual(rule.match.path, "/api/*")
        self.assertEqual(rule.target_pool, "web-servers")
        self.assertEqual(rule.policies, (RateLimitPolicy(rate=Rate(100, 60.0), burst=100),))
        self.assertEqual(rule.policies[0].kind, "rate_limit")
        prometheus = config.monitoring.prometheus
        self.assertEqual((prometheus.enabled, prometheus.path, prometheus.port),
                         (True, "/metrics", 9090))
        self.assertEqual(prometheus.listenAddress(), Address("", 9090))
        tracing = config.monitoring.tracing
        self.assertEqual((tracing.enabled, tracing.service_name, tracing.endpoint),
                         (True, "go-loadbalancer", "localhost:4317"))
        self.assertEqual(config.admin, AdminConfig())
        self.assertEqual(config.workers, 1)
        self.assertEqual(summary(config), "1 listener, 1 pool, 2 backends, 1 routing rule")

    def test_everyExampleLoads(self):
        """
        Every file in config/examples loads without problems.
        """
        paths = sorted(glob.glob(os.path.join(EXAMPLES, "*.yaml")))
        self.assertGreaterEqual(len(paths), 4)
        for path in paths:
            self.assertIsInstance(loadConfig(path), Config, path)

    def test_full(self):
        """
        The full example exercises every section; spot-check the conversions.
        """
        config = loadConfig(os.path.join(EXAMPLES, "full.yaml"))
        base = os.path.abspath(EXAMPLES)
        https, http, internal = config.listeners
        self.assertEqual(https.max_header_bytes, 65536)
        self.assertEqual(https.tls.certificates[0].cert,
                         os.path.join(base, "certs", "example.com.pem"))
        self.assertEqual(https.tls.reload_interval, 60.0)
        self.assertEqual(http.endpointDescription(), "tcp6:port=8080:interface=\\:\\:")
        self.assertEqual(http.redirect_to_https, 8443)
        self.assertEqual(internal.endpointDescription(), "tcp6:port=8090:interface=\\:\\:1")
        self.assertTrue(internal.http2.h2c)
        self.assertEqual(config.trusted_proxies, (ipaddress.ip_network("127.0.0.1/32"),
                                                  ipaddress.ip_network("::1/128")))
        web = config.pool("web")
        self.assertEqual(web.sticky.ttl, 3600.0)
        self.assertEqual(web.panic_threshold, 0.5)
        self.assertEqual(web.passive_health, PassiveHealthConfig())
        self.assertEqual(web.retries.on, ("connect_failure", "reset", "timeout", "502", "503"))
        self.assertEqual(web.retries.budget, 0.2)
        backup = web.backends[2]
        self.assertEqual((backup.scheme, backup.host, backup.port, backup.name),
                         ("https", "10.0.0.3", 443, "10.0.0.3:443"))
        self.assertEqual(web.backends[1].path_prefix, "/app")
        self.assertEqual(config.pool("api").discovery.refresh, 30.0)
        self.assertEqual([rule.name for rule in config.sortedRules()],
                         ["api", "admin-area", "old-docs", "site"])
        api = config.routing_rules[0]
        self.assertEqual(api.mirror.percent, 0.1)
        self.assertEqual([(t.pool, t.weight) for t in api.split], [("api", 90), ("canary", 10)])
        self.assertEqual(api.policies[0].store, "redis://127.0.0.1:6379/0")
        auth = config.routing_rules[1].policies[0]
        self.assertEqual(auth, BasicAuthPolicy(os.path.join(base, "users.htpasswd"), "golb"))
        self.assertEqual(config.policies[2], MaxBodyPolicy(10 * 1024 * 1024))
        self.assertEqual([p.kind for p in config.policies],
                         ["acl", "rate_limit", "max_body", "headers", "compress"])
        self.assertEqual(config.monitoring.tracing.sampling_rate, 0.25)
        self.assertEqual(config.manhole.authorized_keys,
                         os.path.expanduser("~/.ssh/authorized_keys"))
        self.assertEqual(
            summary(config),
            "3 listeners, 4 pools, 5 backends, 1 discovered pool, 4 routing rules",
        )


class ShapeTests(SynchronousTestCase):
    """
    Defaults, shorthands and normalization.
    """

    def test_serverDefaults(self):
        """
        C{server:} without an address listens on :8080; absent sections take
        their defaults and the frozen result refuses changes.
        """
        config = parse("""\
            server: {}
            backend_pools: [{name: web, backends: [{url: "http://a"}]}]
        """)
        self.assertEqual(config.listeners[0].address, Address("", 8080))
        self.assertEqual(config.pool("web").backends[0].port, 80)
        self.assertEqual(config.pool("web").backends[0].path_prefix, "")
        self.assertEqual(config.admin.address, Address("127.0.0.1", 8081))
        self.assertEqual(config.shutdown.grace, 20.0)
        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, config, "workers", 2)
        self.assertRaises(KeyError, config.pool, "nope")

    def test_serverAndListeners(self):
        """
        C{server} comes first as C{default}, then C{listeners}; port 0 may
        repeat.
        """
        config = parse(MINIMAL + 'listeners: [{name: other, address: ":0"}]\n')
        self.assertEqual([lis.name for lis in config.listeners], ["default", "other"])

    def test_yamlScalars(self):
        """
        C{on} stays a key, C{0800} is decimal 800, and C{yes} is a string.
        """
        config = parse(MINIMAL + textwrap.dedent("""\
              - name: other
                backends: [{url: "http://b", name: yes}]
                retries: {on: [reset, 502]}
            demo: {base_port: 0800}
        """))
        self.assertEqual(config.pool("other").retries.on, ("reset", "502"))
        self.assertEqual(config.pool("other").backends[0].name, "yes")
        self.assertEqual(config.demo.base_port, 800)

    def test_rateLimitForms(self):
        """
        The short and long rate limit forms give the same policy; the burst
        defaults to the rate's count.
        """
        short = parse(MINIMAL + "policies: [{rate_limit: 10/s}]\n").policies[0]
        long = parse(MINIMAL + "policies: [{rate_limit: {rate: 10/second}}]\n").policies[0]
        self.assertEqual(short, long)
        self.assertEqual(short.burst, 10)

    def test_relativePaths(self):
        """
        Relative file paths resolve against C{baseDir}.
        """
        base = self.mktemp()
        os.makedirs(base)
        with open(os.path.join(base, "users"), "w") as f:
            f.write("a:b\n")
        config = parse(MINIMAL + "policies: [{basic_auth: {users_file: users}}]\n", baseDir=base)
        self.assertEqual(
            config.policies[0].users_file, os.path.join(os.path.abspath(base), "users")
        )

    def test_sortedRules(self):
        """
        Higher priority first; equal priorities keep file order.
        """
        config = parse(MINIMAL + textwrap.dedent("""\
            routing_rules:
              - {name: a, target_pool: web}
              - {name: b, priority: 5, target_pool: web}
              - {name: c, target_pool: web}
              - {name: d, priority: 5, target_pool: web}
        """))
        self.assertEqual([r.name for r in config.sortedRules()], ["b", "d", "a", "c"])
        self.assertEqual([r.name for r in config.routing_rules], ["a", "b", "c", "d"])

    def test_problemFormat(self):
        """
        A problem reads C{file:line: path: message}; without a line or path
        those parts are left out; the file is shown by its base name.
        """
        self.assertEqual(str(Problem("/etc/golb/golb.yaml", 3, "a.b", "bad")),
                         "golb.yaml:3: a.b: bad")
        self.assertEqual(str(Problem("golb.yaml", None, "a", "bad")), "golb.yaml: a: bad")
        self.assertEqual(str(Problem("golb.yaml", 1, "", "bad")), "golb.yaml:1: bad")


class ProblemTests(SynchronousTestCase):
    """
    Each kind of mistake is reported with its line, path and a useful message.
    """

    def test_threeMistakes(self):
        """
        A bad URL, an unknown key and a bad duration in different places are
        all reported, in line order.
        """
        self.assertEqual(problems(self, """\
            server:
              address: ":8080"
            backend_pools:
              - name: web-servers
                backends:
                  - url: "http://localhost:3001"
                  - url: "localhost:3002"
                helth_check: {path: /}
            shutdown:
              grace: 5 minutes
        """), [
            "golb.yaml:7: backend_pools[0].backends[1].url: "
            "'localhost:3002' is not an http(s) URL",
            "golb.yaml:8: backend_pools[0].helth_check: unknown key; "
            "did you mean 'health_check'?",
            "golb.yaml:10: shutdown.grace: "
            "'5 minutes' is not a duration (like 250ms, 5s, 1.5m, 2h or a number of seconds)",
        ])

    def test_empty(self):
        """
        An empty file says what the smallest useful file is.
        """
        self.assertEqual(problems(self, ""), [
            "golb.yaml: nothing to do: the smallest useful file is a listener ('server:' with"
            " an 'address', or 'listeners:') and one pool in 'backend_pools'"
        ])

    def test_yamlSyntax(self):
        """
        A YAML syntax error is one problem with its line.
        """
        [problem] = problems(self, "server:\n  address: ':8080'\n bad: [\n", filename="x.yaml")
        self.assertTrue(problem.startswith("x.yaml:3: YAML syntax error: "), problem)

    def test_topLevelNotMapping(self):
        """
        A document that is not a mapping is refused.
        """
        self.assertEqual(problems(self, "- a\n"), [
            "golb.yaml:1: expected a mapping of settings at the top level (like 'server:')"
        ])

    def test_types(self):
        """
        Wrong types, missing required keys and out-of-range values.
        """
        self.assertEqual(problems(self, """\
            server: ":8080"
            backend_pools:
              - backends: {url: "http://a"}
              - name: b
                backends:
                  - {url: "http://a", weight: 300}
            workers: "two"
        """), [
            "golb.yaml:1: server: expected a mapping",
            "golb.yaml:3: backend_pools[0]: missing required key 'name'",
            "golb.yaml:3: backend_pools[0].backends: expected a list",
            "golb.yaml:6: backend_pools[1].backends[0].weight: 300 is out of range 0..256",
            "golb.yaml:7: workers: expected an integer, not 'two'",
        ])

    def test_enumAndReferences(self):
        """
        Enumerations list their values; unknown pools and policy kinds get a
        suggestion.
        """
        self.assertEqual(problems(self, MINIMAL + textwrap.dedent("""\
                algorithm: round_robbin
            routing_rules:
              - target_pool: wbe
                policies: [{rate_limt: 1/s}]
        """)), [
            "golb.yaml:7: backend_pools[0].algorithm: 'round_robbin' is not one of round_robin,"
            " weighted_round_robin, least_connections, random, power_of_two, ip_hash,"
            " consistent_hash, least_response_time, first; did you mean 'round_robin'?",
            "golb.yaml:9: routing_rules[0].target_pool: no pool named 'wbe'; did you mean 'web'?",
            "golb.yaml:10: routing_rules[0].policies[0].rate_limt: unknown policy kind; did you"
            " mean 'rate_limit'? (one of rate_limit, acl, basic_auth, headers, rewrite,"
            " redirect, cors, compress, max_body)",
        ])

    def test_crossChecks(self):
        """
        Checks between keys: target_pool or split, timeout within interval,
        distinct names, distinct addresses, cert with key.
        """
        self.assertEqual(problems(self, """\
            server: {address: ":8080"}
            listeners: [{name: default, address: "127.0.0.1:8080"}]
            backend_pools:
              - name: web
                backends: [{url: "http://a"}, {url: "http://a:80"}]
                health_check: {interval: 1s, timeout: 2s}
                tls: {cert: c.pem}
              - name: web
                backends: []
            routing_rules:
              - match: {path: /a, path_prefix: /b}
        """), [
            "golb.yaml:2: listeners[0].name: duplicate listener name 'default' (also server)",
            "golb.yaml:2: listeners[0].address: 127.0.0.1:8080 is already used by server.address",
            "golb.yaml:5: backend_pools[0].backends[1].name: duplicate backend name 'a:80'"
            " (also backends[0]); give each backend a distinct name",
            "golb.yaml:6: backend_pools[0].health_check.timeout: timeout must not exceed"
            " interval (1s)",
            "golb.yaml:7: backend_pools[0].tls: set both cert and key, or neither",
            "golb.yaml:8: backend_pools[1].name: duplicate pool name 'web' (also backend_pools[0])",
            "golb.yaml:9: backend_pools[1].backends: a pool needs at least one backend in"
            " 'backends', or 'discovery'",
            "golb.yaml:11: routing_rules[0].match: set only one of 'path' or 'path_prefix' or"
            " 'path_regex'",
            "golb.yaml:11: routing_rules[0]: set one of 'target_pool' or 'split'",
        ])

    def test_policyChecks(self):
        """
        Policies are checked when loading: header edits that would break
        framing or inject lines, a rewrite path with a query, an unknown
        redirect placeholder.
        """
        self.assertEqual(problems(self, """\
            server: {address: ":8080"}
            backend_pools: [{name: web, backends: [{url: "http://a"}]}]
            policies:
              - headers: {response: {set: {X-A: "a\\nb"}, remove: [Transfer-Encoding]}}
              - rewrite: {replace_path: "/a?b"}
              - redirect: {to: "https://{hots}{path}"}
              - cors: {allow_origins: ["https://*.example.com:8443", "app.example.com"]}
        """), [
            "golb.yaml:4: policies[0].headers: response.remove: Transfer-Encoding cannot be"
            " edited: it frames the message: golb sets it itself",
            "golb.yaml:4: policies[0].headers: response.set.X-A: the value contains a control"
            " character (CR, LF, NUL...): 'a\\nb'",
            "golb.yaml:5: policies[1].rewrite: replace_path: '/a?b' contains '?' or '#'; a"
            " rewrite changes the path only and keeps the client's query string",
            "golb.yaml:6: policies[2].redirect: to: unknown placeholder {hots} in"
            " 'https://{hots}{path}'; use {scheme}, {host}, {path}, {query}, {uri}",
            "golb.yaml:7: policies[3].cors.allow_origins: 'app.example.com' (entry 1) is not an"
            " origin: use '*', 'null', or scheme://host[:port] with at most one '*' in the"
            " host, like https://*.example.com",
        ])

    def test_nameserverMustBeAnAddress(self):
        """
        Discovery nameservers are IP addresses (the resolver cannot look up
        its own nameservers); a host name is refused when loading.
        """
        self.assertEqual(problems(self, """\
            server: {address: ":8080"}
            backend_pools:
              - name: web
                discovery: {dns_srv: _http._tcp.web.test, nameservers: ["dns.local:53", "10.0.0.1"]}
        """), [
            "golb.yaml:4: backend_pools[0].discovery.nameservers[0]: 'dns.local:53': a nameserver"
            " must be an IP address (like 10.96.0.10:53), not a name",
        ])

    def test_adminOffLoopback(self):
        """
        An admin site off loopback needs authentication.
        """
        self.assertEqual(problems(self, MINIMAL + 'admin: {address: "0.0.0.0:8081"}\n'), [
            "golb.yaml:7: admin.address: 0.0.0.0:8081 is not loopback;"
            " set admin.auth.users_file or token_file",
        ])

    def test_missingFiles(self):
        """
        Files that must exist are checked: basic auth users, and the
        authorized keys of an enabled manhole.
        """
        base = os.path.abspath(self.mktemp())
        self.assertEqual(problems(self, MINIMAL + textwrap.dedent("""\
            policies: [{basic_auth: {users_file: nope}}]
            manhole: {enabled: true, authorized_keys: keys}
        """), baseDir=base), [
            f"golb.yaml:7: policies[0].basic_auth.users_file: file '{base}/nope' does not exist",
            f"golb.yaml:8: manhole.authorized_keys: file '{base}/keys' does not exist",
        ])

    def test_duplicateKey(self):
        """
        A key given twice is reported with both lines.
        """
        self.assertEqual(problems(self, MINIMAL + "workers: 1\nworkers: 2\n"), [
            "golb.yaml:8: workers: duplicate key (first at line 7)",
        ])

    def test_badValuesKeepParsing(self):
        """
        A bad value in one backend does not hide problems elsewhere.
        """
        self.assertEqual(len(problems(self, """\
            server: {address: ":99999"}
            backend_pools:
              - name: web
                backends: [{url: "ftp://a"}, {url: "http://u:p@b"}, {url: "http://c/?q"}]
                retries: {on: [teapot], budget: 0.3}
            routing_rules: [{target_pool: web, match: {client_ip: [nope], path_regex: "("}}]
            monitoring: {logging: {level: loud}, tracing: {sampling_rate: 2}}
            demo: {backends: 65}
        """)), 11)

    def test_loadMissingFile(self):
        """
        A file that cannot be read is a L{ConfigError} too.
        """
        error = self.assertRaises(ConfigError, loadConfig, "/nonexistent/golb.yaml")
        self.assertIn("golb.yaml: cannot read:", str(error))

    @settings(max_examples=200)
    @given(st.text(alphabet="abc:-[]{}\n 0123456789'\"/&*!%@", max_size=60))
    def test_garbageOnlyConfigError(self, text):
        """
        Whatever the text, parsing gives a L{Config} or a L{ConfigError}.
        """
        try:
            parseConfig(text)
        except ConfigError as e:
            self.assertTrue(e.problems)

    @settings(max_examples=100)
    @given(st.dictionaries(
        st.sampled_from(["weight", "name", "url", "backup", "max_connections", "extra"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=8), st.booleans(),
                  st.lists(st.integers(), max_size=2)),
    ))
    def test_garbageBackend(self, backend):
        """
        Whatever a backend holds, parsing gives a L{Config} or a
        L{ConfigError}.
        """
        text = "server: {}\nbackend_pools: [{name: p, backends: [" + json.dumps(backend) + "]}]"
        try:
            parseConfig(text)
        except ConfigError as e:
            self.assertTrue(e.problems)
