"""
Tests for L{golb.policies.acl}: client allow and deny lists.
"""

import ipaddress
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from golb._units import parseNetworks
from golb.config import AclPolicy
from golb.errors import GolbError
from golb.policies import Environment, IPolicy, States
from golb.policies.acl import Acl, NetworkSet, clientIP, parseClientIP
from golb.test.support import header, listenBackend, listenGolb, parseResponses, rawRequest
from golb.test.test_proxy import ProxyTestCase


class FakeRequest:
    """
    The part of a L{golb.listener.GolbRequest} the ACL looks at.
    """

    def __init__(self, address: str):
        self.address = address

    def clientAddress(self) -> str:
        return self.address


def acl(allow=(), deny=()) -> Acl:
    """
    An L{Acl} for the given lists of network strings.
    """
    config = AclPolicy(allow=parseNetworks(list(allow)), deny=parseNetworks(list(deny)))
    return Acl(config, Environment(None, States(), "global"))


def verdict(policy: Acl, address: str) -> bool:
    """
    Whether C{policy} lets a client at C{address} through.
    """
    result = policy.onRequest(FakeRequest(address), None)
    if result is None:
        return True
    assert isinstance(result, GolbError), result
    return False


class AclTests(SynchronousTestCase):
    """
    The verdicts of L{Acl} for one client address.
    """

    def test_interface(self):
        """
        L{Acl} provides L{IPolicy}.
        """
        verifyObject(IPolicy, acl(allow=["10.0.0.0/8"]))

    def test_denyBeatsAllow(self):
        """
        A client in both lists is refused: deny wins; its neighbours in the
        allowed network pass.
        """
        policy = acl(allow=["10.0.0.0/8"], deny=["10.0.0.13"])
        self.assertFalse(verdict(policy, "10.0.0.13"))
        self.assertTrue(verdict(policy, "10.0.0.12"))
        self.assertTrue(verdict(policy, "10.0.0.14"))

    def test_emptyAllowAllowsAll(self):
        """
        With an empty allow list every client passes except the denied ones.
        """
        policy = acl(deny=["192.0.2.0/24", "2001:db8::/32"])
        self.assertTrue(verdict(policy, "198.51.100.7"))
        self.assertTrue(verdict(policy, "2001:db9::1"))
        self.assertFalse(verdict(policy, "192.0.2.200"))
        self.assertFalse(verdict(policy, "2001:db8:1::1"))

    def test_noRules(self):
        """
        With both lists empty every client passes.
        """
        self.assertTrue(verdict(acl(), "203.0.113.1"))

    def test_allowList(self):
        """
        With an allow list, a client outside it is refused with 403
        C{forbidden}, whose message does not reveal the rules.
        """
        policy = acl(allow=["10.0.0.0/8", "172.16.0.0/12"])
        self.assertTrue(verdict(policy, "172.31.255.255"))
        self.assertFalse(verdict(policy, "172.32.0.0"))
        error = policy.onRequest(FakeRequest("11.0.0.1"), None)
        self.assertEqual((error.status, error.code), (403, "forbidden"))
        self.assertNotIn("10.", error.message)
        self.assertNotIn("172", error.message)

    def test_ipv6(self):
        """
        IPv6 rules match IPv6 clients, and IPv4 rules never match IPv6
        clients (nor the other way round).
        """
        policy = acl(allow=["2001:db8::/32", "10.0.0.0/8"], deny=["2001:db8:dead::/48"])
        self.assertTrue(verdict(policy, "2001:db8::1"))
        self.assertTrue(verdict(policy, "2001:0db8:0000::0002"))
        self.assertFalse(verdict(policy, "2001:db8:dead::1"))
        self.assertFalse(verdict(policy, "::a00:1"))
        self.assertFalse(verdict(policy, "fe80::1"))
        self.assertFalse(verdict(acl(allow=["::/0"]), "10.0.0.1"))
        self.assertFalse(verdict(acl(allow=["0.0.0.0/0"]), "::1"))

    def test_ipv6Scope(self):
        """
        A link-local IPv6 client with a scope (C{fe80::1%eth0}) matches the
        rules for its address.
        """
        self.assertTrue(verdict(acl(allow=["fe80::/10"]), "fe80::1%eth0"))
        self.assertFalse(verdict(acl(deny=["fe80::/10"]), "fe80::1%eth0"))

    def test_ipv4MappedClient(self):
        """
        An IPv4-mapped IPv6 client address (C{::ffff:10.0.0.1}, as a dual
        stack socket reports IPv4 peers) is judged by the IPv4 rules.
        """
        policy = acl(allow=["10.0.0.0/8"], deny=["10.0.0.13"])
        self.assertTrue(verdict(policy, "::ffff:10.0.0.1"))
        self.assertFalse(verdict(policy, "::ffff:10.0.0.13"))
        self.assertFalse(verdict(policy, "::ffff:11.0.0.1"))

    def test_ipv4MappedRule(self):
        """
        A rule written as an IPv4-mapped IPv6 network matches the IPv4
        clients it maps.
        """
        policy = acl(allow=["::ffff:10.0.0.0/104"])
        self.assertTrue(verdict(policy, "10.1.2.3"))
        self.assertTrue(verdict(policy, "::ffff:10.1.2.3"))
        self.assertFalse(verdict(policy, "11.1.2.3"))

    def test_notAnAddress(self):
        """
        A client without an IP address (C{""}, or garbage) is refused by any
        list, and let through only when both are empty.
        """
        for address in ("", "unknown", "10.0.0.1.2", "010.0.0.1"):
            self.assertFalse(verdict(acl(allow=["0.0.0.0/0", "::/0"]), address), address)
            self.assertFalse(verdict(acl(deny=["192.0.2.1"]), address), address)
        self.assertTrue(verdict(acl(), ""))

    def test_longList(self):
        """
        A 10,000-entry allow list gives the same verdicts as checking every
        network in turn.
        """
        networks = [ipaddress.ip_network((0x0A000000 + i * 512, 24)) for i in range(10000)]
        networks += [ipaddress.ip_network((0x20010DB8 << 96 | i << 64, 64)) for i in range(100)]
        policy = Acl(AclPolicy(allow=tuple(networks)), Environment(None, States(), "global"))
        for value in (0x0A000000, 0x0A0000FF, 0x0A000100, 0x0A000200, 0x0A000000 + 9999 * 512,
                      0x0A000000 + 10000 * 512, 0x09FFFFFF):
            address = ipaddress.IPv4Address(value)
            expected = any(address in network for network in networks)
            self.assertEqual(verdict(policy, str(address)), expected, address)
        self.assertTrue(verdict(policy, "2001:db8:0:63::1"))
        self.assertFalse(verdict(policy, "2001:db8:0:64::1"))


ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
mapped = ipv4.map(lambda a: ipaddress.IPv6Address("::ffff:" + str(a)))
networks4 = st.tuples(ipv4, st.integers(0, 32)).map(
    lambda t: ipaddress.IPv4Network((t[0], t[1]), strict=False))
networks6 = st.tuples(ipv6, st.integers(0, 128)).map(
    lambda t: ipaddress.IPv6Network((t[0], t[1]), strict=False))
# networks near each other, so that overlaps and adjacency happen
near4 = st.tuples(st.integers(0, 255), st.integers(24, 32)).map(
    lambda t: ipaddress.IPv4Network((0x0A000000 + t[0], t[1]), strict=False))
nearAddresses = st.integers(0, 511).map(lambda i: ipaddress.IPv4Address(0x0A000000 + i))
mappedNetworks = st.tuples(st.integers(0, 511), st.integers(96, 128)).map(
    lambda t: ipaddress.IPv6Network((0xFFFF0A000000 + t[0], t[1]), strict=False))


def naive(networks, address) -> bool:
    """
    The reference: C{address} (IPv4-mapped ones as IPv4) in any network
    (IPv4-mapped ones as IPv4 networks).
    """
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network in networks:
        if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(
                ipaddress.IPv6Network("::ffff:0:0/96")):
            network = ipaddress.IPv4Network(
                (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
        if network.version == address.version and address in network:
            return True
    return False


class NetworkSetPropertyTests(SynchronousTestCase):
    """
    L{NetworkSet} agrees with a linear scan of its networks.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(networks4, networks6, near4, mappedNetworks), max_size=20),
           st.lists(st.one_of(ipv4, ipv6, mapped, nearAddresses), max_size=20))
    def test_membership(self, networks, addresses):
        """
        For any networks and addresses, C{address in NetworkSet(networks)}
        (and the fast text path the policy uses) equals the linear scan.
        """
        networkSet = NetworkSet(networks)
        for address in addresses:
            expected = naive(networks, address)
            parsed = clientIP(str(address))
            self.assertEqual(parsed in networkSet, expected)
            self.assertEqual(networkSet.containsValue(*parseClientIP(str(address))), expected)


def golbYAML(backendPort: int, acl: dict, trusted=None) -> str:
    """
    A golb config forwarding everything to one backend, with one global
    C{acl} policy.
    """
    text = "listeners: [{name: web, address: '127.0.0.1:0'}]\n"
    if trusted is not None:
        text += f"trusted_proxies: {json.dumps(trusted)}\n"
    return text + (
        "backend_pools:\n  - name: default\n"
        f"    backends: [{{url: 'http://127.0.0.1:{backendPort}'}}]\n"
        f"policies:\n  - acl: {json.dumps(acl)}\n"
    )


class AclEndToEndTests(ProxyTestCase):
    """
    The ACL in a real golb listener, with real clients on 127.0.0.1.
    """

    def start(self, acl, trusted=None):
        port, backend = listenBackend(self)
        golb, golbPort, site = listenGolb(self, golbYAML(port.getHost().port, acl, trusted))
        self.base = f"http://127.0.0.1:{golbPort.getHost().port}"
        self.port = golbPort.getHost().port
        return backend

    @defer.inlineCallbacks
    def test_refused(self):
        """
        A client outside the allow list gets 403 with C{X-Golb-Error:
        forbidden}; the backend never sees the request.
        """
        backend = self.start({"allow": ["10.0.0.0/8"]})
        response, body = yield self.get("/")
        self.assertEqual(response.code, 403)
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"forbidden"])
        self.assertNotIn(b"10.0.0.0", body)
        self.assertEqual(backend.requests, 0)

    @defer.inlineCallbacks
    def test_allowed(self):
        """
        A client in the allow list reaches the backend.
        """
        backend = self.start({"allow": ["127.0.0.0/8"], "deny": ["10.0.0.13"]})
        response, body = yield self.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(backend.requests, 1)

    @defer.inlineCallbacks
    def test_spoofedForwardedFor(self):
        """
        Without C{trusted_proxies}, an C{X-Forwarded-For} or C{Forwarded}
        naming an allowed (or denied) address does not change the verdict
        on the real client, 127.0.0.1.
        """
        self.start({"allow": ["10.0.0.0/8"]})
        response, _ = yield self.get("/", headers={b"X-Forwarded-For": [b"10.1.2.3"]})
        self.assertEqual(response.code, 403)
        response, _ = yield self.get("/", headers={b"Forwarded": [b"for=10.1.2.3"]})
        self.assertEqual(response.code, 403)

    @defer.inlineCallbacks
    def test_spoofedForwardedForCannotDeny(self):
        """
        Without C{trusted_proxies}, naming a denied address in
        C{X-Forwarded-For} does not get the real client refused either.
        """
        self.start({"deny": ["10.0.0.13"]})
        response, _ = yield self.get("/", headers={b"X-Forwarded-For": [b"10.0.0.13"]})
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_trustedProxy(self):
        """
        When the peer is a trusted proxy, the client it names in
        C{X-Forwarded-For} is the one judged: allowed, denied, or outside
        the allow list.
        """
        self.start({"allow": ["10.0.0.0/8"], "deny": ["10.0.0.13"]}, trusted=["127.0.0.1/32"])
        codes = []
        for client in (b"10.1.2.3", b"10.0.0.13", b"192.0.2.1", b"192.0.2.1, 10.1.2.3"):
            response, _ = yield self.get("/", headers={b"X-Forwarded-For": [client]})
            codes.append(response.code)
        self.assertEqual(codes, [200, 403, 403, 200])

    @defer.inlineCallbacks
    def test_trustedProxyIPv6(self):
        """
        IPv6 clients reported by a trusted proxy are judged by the IPv6
        rules, and IPv4-mapped ones by the IPv4 rules.
        """
        self.start({"allow": ["2001:db8::/32", "10.0.0.0/8"]}, trusted=["127.0.0.1/32"])
        codes = []
        for client in (b"2001:db8::1", b"[2001:db8::1]:4711", b"2001:db9::1",
                       b"::ffff:10.0.0.1", b"::ffff:192.0.2.1"):
            response, _ = yield self.get("/", headers={b"X-Forwarded-For": [client]})
            codes.append(response.code)
        self.assertEqual(codes, [200, 200, 403, 200, 403])

    @defer.inlineCallbacks
    def test_routePolicy(self):
        """
        An C{acl} on a routing rule guards that route only.
        """
        port, backend = listenBackend(self)
        text = (
            "listeners: [{name: web, address: '127.0.0.1:0'}]\n"
            "backend_pools:\n  - name: default\n"
            f"    backends: [{{url: 'http://127.0.0.1:{port.getHost().port}'}}]\n"
            "routing_rules:\n"
            "  - match: {path: '/admin/*'}\n    target_pool: default\n"
            "    policies: [{acl: {allow: ['192.0.2.0/24']}}]\n"
        )
        golb, golbPort, site = listenGolb(self, text)
        data = yield rawRequest(
            self, golbPort.getHost().port,
            b"GET /admin/x HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /public HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        [(adminStatus, adminHeaders, _), (publicStatus, _, _)] = parseResponses(data)
        self.assertEqual((adminStatus, publicStatus), (403, 200))
        self.assertEqual(header(adminHeaders, b"x-golb-error"), [b"forbidden"])
