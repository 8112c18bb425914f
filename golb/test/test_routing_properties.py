"""
Property tests for the matchers in L{golb.routing}.
"""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from golb.config import parseConfig
from golb.pool import BackendRegistry
from golb.runtime import Runtime
from golb.test.test_routing import request

EXAMPLES = settings(max_examples=100, deadline=None)

# Two pools, neither named default: unmatched requests get no route at all.
POOLS = """\
server: {address: "127.0.0.1:0"}
backend_pools:
  - {name: one, backends: [{url: "http://127.0.0.1:1"}]}
  - {name: two, backends: [{url: "http://127.0.0.1:2"}]}
"""

segments = st.text(alphabet="abAB09-._~", min_size=0, max_size=4)
paths = st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
labels = st.from_regex(r"[a-z]([a-z0-9-]{0,4}[a-z0-9])?", fullmatch=True)
hostNames = st.lists(labels, min_size=1, max_size=3).map(".".join)


def build(rules):
    """
    Compile C{rules} (a list of dicts) after L{POOLS}; return C{(config, router)}.
    """
    text = POOLS + "routing_rules: " + json.dumps(rules) + "\n"
    config = parseConfig(text)
    return config, Runtime.build(config, BackendRegistry()).router


def routeName(router, req):
    route = router.match(req)
    return None if route is None else route.name


def mixCase(draw, text):
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips))


@st.composite
def hostHeaders(draw, name):
    """
    C{name} as a client might send it: any letter case, maybe with a port.
    """
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    value = mixCase(draw, name) + ("" if port is None else f":{port}")
    return value.encode("ascii")


class PathPropertyTests(SynchronousTestCase):
    """
    Path conditions.
    """

    @EXAMPLES
    @given(prefix=paths, path=paths)
    def test_prefix(self, prefix, path):
        """
        A C{path_prefix} rule matches exactly the paths starting with it.
        """
        _, router = build([{"name": "r", "match": {"path_prefix": prefix}, "target_pool": "one"}])
        for candidate in (path, prefix + path.lstrip("/"), prefix):
            got = routeName(router, request(candidate.encode("ascii")))
            self.assertEqual(got == "r", candidate.startswith(prefix), (prefix, candidate))

    @EXAMPLES
    @given(path=paths)
    def test_glob(self, path):
        """
        C{/a/*} matches every path under C{/a/} and nothing else: not C{/a},
        C{/ab}, C{/b/...}.
        """
        _, router = build([{"name": "r", "match": {"path": "/a/*"}, "target_pool": "one"}])
        for candidate in (path, "/a" + path, "/b" + path, "/a"):
            got = routeName(router, request(candidate.encode("ascii")))
            self.assertEqual(got == "r", candidate.startswith("/a/"), candidate)


class HostPropertyTests(SynchronousTestCase):
    """
    Host conditions.
    """

    @EXAMPLES
    @given(data=st.data(), name=hostNames, other=hostNames)
    def test_exactHost(self, data, name, other):
        """
        An exact host matches its name in any letter case, with or without a
        port, and no other name.
        """
        _, router = build([{"name": "r", "match": {"host": name}, "target_pool": "one"}])
        header = data.draw(hostHeaders(name))
        self.assertEqual(routeName(router, request(host=header)), "r", header)
        header = data.draw(hostHeaders(other))
        self.assertEqual(
            routeName(router, request(host=header)) == "r", other == name, (name, header)
        )

    @EXAMPLES
    @given(data=st.data(), prefix=hostNames, other=hostNames)
    def test_wildcardHost(self, data, prefix, other):
        """
        C{*.example.com} matches one or more labels before C{.example.com}, in
        any case and with any port, and never C{example.com} itself.
        """
        _, router = build(
            [{"name": "r", "match": {"host": "*.example.com"}, "target_pool": "one"}]
        )
        header = data.draw(hostHeaders(prefix + ".example.com"))
        self.assertEqual(routeName(router, request(host=header)), "r", header)
        header = data.draw(hostHeaders("example.com"))
        self.assertIsNone(routeName(router, request(host=header)), header)
        for name in (prefix + "example.com", other + ".example.org", other):
            header = data.draw(hostHeaders(name))
            self.assertIsNone(routeName(router, request(host=header)), header)


ruleHosts = st.sampled_from([None, "x", "a.x", "b.x", "*.x", "*.a.x", "y"])
requestHosts = st.sampled_from(["x", "a.x", "b.x", "c.a.x", "a.b.x", "y", "z", "b.y"])
rulePrefixes = st.sampled_from([None, "/", "/a", "/a/b", "/b"])
requestPaths = st.sampled_from(["/", "/a", "/a/b", "/a/bc", "/b", "/c"])


@st.composite
def rules(draw):
    count = draw(st.integers(1, 8))
    result = []
    for i in range(count):
        match = {}
        host = draw(ruleHosts)
        if host is not None:
            match["host"] = host
        prefix = draw(rulePrefixes)
        if prefix is not None:
            match["path_prefix"] = prefix
        rule = {"name": f"r{i}", "target_pool": draw(st.sampled_from(["one", "two"]))}
        if match:
            rule["match"] = match
        priority = draw(st.one_of(st.none(), st.integers(-2, 2)))
        if priority is not None:
            rule["priority"] = priority
        result.append(rule)
    return result


def hostHolds(ruleHost, host):
    if ruleHost is None:
        return True
    if ruleHost.startswith("*."):
        return host.endswith(ruleHost[1:])
    return host == ruleHost


def bruteForce(config, host, path):
    """
    The first rule in C{config.sortedRules()} whose conditions hold.
    """
    for rule in config.sortedRules():
        match = rule.match
        ruleHost = match.host if match is not None else None
        prefix = match.path_prefix if match is not None else None
        if hostHolds(ruleHost, host) and (not prefix or path.startswith(prefix)):
            return rule.name
    return None


class PriorityPropertyTests(SynchronousTestCase):
    """
    The indexed router agrees with a linear scan.
    """

    @EXAMPLES
    @given(data=st.data(), ruleList=rules(), host=requestHosts, path=requestPaths)
    def test_firstMatchInPriorityOrder(self, data, ruleList, host, path):
        """
        C{match()} returns the first rule, in priority order (ties in file
        order), whose host and path conditions hold.
        """
        config, router = build(ruleList)
        header = data.draw(hostHeaders(host))
        self.assertEqual(
            routeName(router, request(path.encode("ascii"), host=header)),
            bruteForce(config, host, path),
            (ruleList, header, path),
        )
