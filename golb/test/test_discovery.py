"""
Tests for L{golb.discovery}.

L{SRVDiscovery} and the integration tests ask a real twisted.names DNS server
on loopback (UDP and TCP on one port) whose zone the test edits as it goes;
the refresh loops are tested with a L{task.Clock} and fake discoveries.
"""

import treq
from twisted.internet import defer, reactor, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, formatEvent
from twisted.names import common, dns, server
from twisted.names import error as dnserror
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer
from zope.interface.verify import verifyObject

from golb._units import Address
from golb.app import Golb
from golb.config import BackendConfig, DiscoveryConfig, parseConfig
from golb.discovery import (
    DiscoveryError,
    DiscoveryService,
    IDiscovery,
    SRVDiscovery,
    golbWeights,
    lookupTimeout,
    systemNameservers,
)
from golb.pool import Members
from golb.test.support import listenBackend, listenGolb

SRV = "_http._tcp.web.test"


class ServFail(Exception):
    """
    Raised by a L{Zone} told to fail: the server answers SERVFAIL (and logs
    it).
    """


class Zone(common.ResolverBase):
    """
    An in-memory authority whose records a test changes as it goes.

    @ivar srv: SRV records by name: lists of C{(priority, weight, port,
        target)}.
    @ivar hosts: addresses (IPv4 or IPv6) by host name.
    @ivar additional: whether SRV answers carry their targets' addresses.
    @ivar error: an exception to fail every query with (L{None}: answer).
    @ivar queries: every query received, as C{(name, type)}.
    """

    def __init__(self):
        common.ResolverBase.__init__(self)
        self.srv = {}
        self.hosts = {}
        self.additional = True
        self.error = None
        self.queries = []

    def _addressRecords(self, host):
        records = []
        for address in self.hosts.get(host, ()):
            if ":" in address:
                payload, kind = dns.Record_AAAA(address, ttl=30), dns.AAAA
            else:
                payload, kind = dns.Record_A(address, ttl=30), dns.A
            records.append(dns.RRHeader(host, kind, dns.IN, 30, payload, auth=True))
        return records

    def _lookup(self, name, cls, type, timeout):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        name = name.rstrip(".").lower()
        self.queries.append((name, type))
        if self.error is not None:
            return defer.fail(self.error)
        if type == dns.SRV and name in self.srv:
            answers = []
            additional = []
            for priority, weight, port, target in self.srv[name]:
                payload = dns.Record_SRV(priority, weight, port, target.encode("ascii"), ttl=30)
                answers.append(dns.RRHeader(name, dns.SRV, dns.IN, 30, payload, auth=True))
                if self.additional:
                    additional.extend(self._addressRecords(target.rstrip(".").lower()))
            return defer.succeed((answers, [], additional))
        if type in (dns.A, dns.AAAA) and name in self.hosts:
            records = [record for record in self._addressRecords(name) if record.type == type]
            return defer.succeed((records, [], []))
        if name in self.srv or name in self.hosts:
            return defer.succeed(([], [], []))  # NODATA
        return defer.fail(dnserror.AuthoritativeDomainError(name))


class TestDNSFactory(server.DNSServerFactory):
    """
    A DNS server over one L{Zone}; it tracks its TCP connections so that a
    test can wait for them to go.

    @ivar truncateUDP: answer every UDP query with an empty, truncated
        response, so that clients ask again over TCP.
    """

    truncateUDP = False

    def __init__(self, zone):
        server.DNSServerFactory.__init__(self, authorities=[zone])
        self.gone = []

    def connectionLost(self, protocol):
        server.DNSServerFactory.connectionLost(self, protocol)
        if not self.connections:
            gone, self.gone = self.gone, []
            for d in gone:
                d.callback(None)

    def sendReply(self, protocol, message, address):
        if self.truncateUDP and address is not None:
            message.answers = []
            message.additional = []
            message.trunc = 1
        server.DNSServerFactory.sendReply(self, protocol, message, address)

    def disconnected(self):
        """
        A L{Deferred} firing when no TCP connection is left.
        """
        if not self.connections:
            return defer.succeed(None)
        d = Deferred()
        self.gone.append(d)
        return d


def listenDNS(testCase):
    """
    Serve a new L{Zone} on 127.0.0.1 over UDP and TCP on one ephemeral port
    for the duration of C{testCase}.

    @return: C{(zone, factory, port number)}.
    """
    zone = Zone()
    factory = TestDNSFactory(zone)
    for _ in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        number = udp.getHost().port
        try:
            tcp = reactor.listenTCP(number, factory, interface="127.0.0.1")
        except CannotListenError:
            udp.stopListening()
            continue
        break
    else:  # pragma: no cover
        raise RuntimeError("no port free for both UDP and TCP")

    def close():
        for protocol in list(factory.connections):
            protocol.transport.abortConnection()
        return defer.gatherResults([
            defer.maybeDeferred(udp.stopListening),
            defer.maybeDeferred(tcp.stopListening),
            factory.disconnected(),
        ])

    testCase.addCleanup(close)
    return zone, factory, number


def discoveryConfig(port, **kw):
    """
    A L{DiscoveryConfig} for L{SRV} asking 127.0.0.1:C{port}.
    """
    return DiscoveryConfig(
        dns_srv=SRV, nameservers=(Address("127.0.0.1", port),), **kw
    )


def backend(host, port, weight=1, backup=False, scheme="http"):
    location = str(Address(host, port))
    return BackendConfig(
        url=f"{scheme}://{location}", name=location, weight=weight, backup=backup
    )


def capture(target):
    """
    Replace C{target.log} with a logger whose events are returned as text.
    """
    events = []
    target.log = Logger(observer=events.append)
    return events


def texts(events):
    return [formatEvent(event) for event in events]


class GolbWeightsTests(SynchronousTestCase):
    """
    Tests for L{golbWeights}.
    """

    def test_equal(self):
        """
        Equal weights, including all 0, are equal golb weights of 1.
        """
        self.assertEqual(golbWeights([0, 0, 0]), [1, 1, 1])
        self.assertEqual(golbWeights([33, 33, 33]), [1, 1, 1])
        self.assertEqual(golbWeights([7]), [1])
        self.assertEqual(golbWeights([]), [])

    def test_ratiosKept(self):
        """
        Different weights keep their ratios, reduced to the smallest integers.
        """
        self.assertEqual(golbWeights([10, 20, 30]), [1, 2, 3])
        self.assertEqual(golbWeights([33, 33, 34]), [33, 33, 34])

    def test_scaledDown(self):
        """
        Weights above 256 are scaled so that the largest is 256.
        """
        self.assertEqual(golbWeights([60000, 30000]), [2, 1])
        self.assertEqual(golbWeights([65535, 1000]), [64, 1])
        self.assertEqual(golbWeights([65535, 65000, 1]), [256, 254, 1])

    def test_zeroIsSmallest(self):
        """
        Next to positive weights a 0 gets the smallest share, never none.
        """
        self.assertEqual(golbWeights([100, 50, 0]), [100, 50, 1])
        self.assertEqual(golbWeights([65535, 1, 0]), [256, 1, 1])


class SystemNameserversTests(SynchronousTestCase):
    """
    Tests for L{systemNameservers} and the default resolver of
    L{SRVDiscovery}.
    """

    def test_resolvConf(self):
        """
        The C{nameserver} lines of resolv.conf are the servers, on port 53.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("search default.svc.cluster.local\nnameserver 10.96.0.10\n"
                    "nameserver fd00::a\noptions ndots:5\n")
        self.assertEqual(systemNameservers(path), [("10.96.0.10", 53), ("fd00::a", 53)])
        discovery = SRVDiscovery(DiscoveryConfig(dns_srv=SRV), task.Clock(), resolvConf=path)
        self.assertEqual(discovery.resolver.servers, [("10.96.0.10", 53), ("fd00::a", 53)])
        self.assertEqual(discovery.servers, "10.96.0.10:53, [fd00::a]:53")

    def test_missing(self):
        """
        Without a resolv.conf (or without servers in it) the server is
        127.0.0.1, as for the C library.
        """
        self.assertEqual(systemNameservers(self.mktemp()), [("127.0.0.1", 53)])

    def test_configured(self):
        """
        Configured C{nameservers} are used instead, and no timer is left
        running.
        """
        clock = task.Clock()
        discovery = SRVDiscovery(discoveryConfig(5353), clock)
        verifyObject(IDiscovery, discovery)
        self.assertEqual(discovery.resolver.servers, [("127.0.0.1", 5353)])
        self.assertEqual(clock.getDelayedCalls(), [])


class SRVDiscoveryTests(TestCase):
    """
    Tests for L{SRVDiscovery} against a real DNS server.
    """

    def setUp(self):
        self.zone, self.server, self.port = listenDNS(self)
        self.zone.srv[SRV] = [
            (10, 60, 8080, "b2.test."),
            (10, 30, 8080, "B1.test."),
            (20, 0, 9090, "spare.test."),
        ]
        self.zone.hosts = {
            "b1.test": ["10.0.0.1"],
            "b2.test": ["10.0.0.3", "10.0.0.2"],
            "spare.test": ["fd00::9"],
        }
        self.discovery = SRVDiscovery(discoveryConfig(self.port), reactor)
        self.addCleanup(self.discovery.close)
        self.events = capture(self.discovery)

    expected = Members(
        (
            backend("b1.test", 8080, weight=1),
            backend("b2.test", 8080, weight=2),
            backend("spare.test", 9090, backup=True),
        ),
        {
            "http://b1.test:8080": "10.0.0.1",
            "http://b2.test:8080": "10.0.0.2",
            "http://spare.test:9090": "fd00::9",
        },
    )

    @defer.inlineCallbacks
    def test_additionalSection(self):
        """
        SRV records become backends named C{target:port}: the lowest priority
        the primaries, higher ones backups, SRV weights as golb weights, in
        order.  Addresses come from the answer's additional section (the
        lowest when there are several), with no further query.
        """
        members = yield self.discovery.members()
        self.assertEqual(members, self.expected)
        self.assertEqual(self.zone.queries, [(SRV, dns.SRV)])

    @defer.inlineCallbacks
    def test_addressLookups(self):
        """
        Without addresses in the additional section each target is looked up:
        A records, else AAAA records.
        """
        self.zone.additional = False
        members = yield self.discovery.members()
        self.assertEqual(members, self.expected)
        self.assertEqual(sorted(self.zone.queries), [
            (SRV, dns.SRV),
            ("b1.test", dns.A), ("b2.test", dns.A),
            ("spare.test", dns.A), ("spare.test", dns.AAAA),
        ])

    @defer.inlineCallbacks
    def test_scheme(self):
        """
        C{scheme: https} makes https backends; the target name stays the
        backend's host (for the Host header and TLS).
        """
        discovery = SRVDiscovery(discoveryConfig(self.port, scheme="https"), reactor)
        members = yield discovery.members()
        self.assertEqual(members.backends[0].url, "https://b1.test:8080")
        self.assertEqual(members.backends[0].host, "b1.test")

    @defer.inlineCallbacks
    def test_ipLiteralTargets(self):
        """
        Targets that are IP literals need no lookup; IPv6 ones are bracketed.
        """
        self.zone.srv[SRV] = [(0, 0, 80, "10.1.2.3."), (0, 0, 80, "fd00::2")]
        members = yield self.discovery.members()
        self.assertEqual(members, Members(
            (backend("10.1.2.3", 80), backend("fd00::2", 80)), {}
        ))
        self.assertEqual(members.backends[1].url, "http://[fd00::2]:80")
        self.assertEqual(self.zone.queries, [(SRV, dns.SRV)])

    @defer.inlineCallbacks
    def test_dotTarget(self):
        """
        A target of C{.} is ignored; when it is the only one, the service is
        said to be unavailable, which is a failed lookup.
        """
        self.zone.srv[SRV] = [(0, 0, 0, "."), (0, 0, 8080, "b1.test")]
        members = yield self.discovery.members()
        self.assertEqual([b.name for b in members.backends], ["b1.test:8080"])
        self.zone.srv[SRV] = [(0, 0, 0, ".")]
        error = yield self.assertFailure(self.discovery.members(), DiscoveryError)
        self.assertIn("not available", str(error))

    @defer.inlineCallbacks
    def test_badTargetName(self):
        """
        A target that is not a host name is left out, and logged.
        """
        self.zone.srv[SRV] = [(0, 0, 8080, "b1.test"), (0, 0, 8080, "bad name.test")]
        members = yield self.discovery.members()
        self.assertEqual([b.name for b in members.backends], ["b1.test:8080"])
        self.assertEqual(texts(self.events),
                         [f"{SRV}: ignoring SRV target b'bad name.test': not a host name"])

    @defer.inlineCallbacks
    def test_duplicateTargets(self):
        """
        The same target and port twice counts once, at its lowest priority.
        """
        self.zone.srv[SRV] = [(20, 0, 8080, "b1.test"), (10, 0, 8080, "b1.test"),
                              (30, 0, 8080, "b2.test")]
        members = yield self.discovery.members()
        self.assertEqual(members.backends, (backend("b1.test", 8080),
                                            backend("b2.test", 8080, backup=True)))

    @defer.inlineCallbacks
    def test_addressFailure(self):
        """
        A target whose address lookup fails keeps its previous address; a new
        one is left out until it resolves.  Both are logged.
        """
        self.zone.additional = False
        yield self.discovery.members()
        del self.zone.hosts["b2.test"]
        self.zone.srv[SRV].append((10, 0, 8080, "new.test"))
        members = yield self.discovery.members()
        self.assertEqual([b.name for b in members.backends],
                         ["b1.test:8080", "b2.test:8080", "spare.test:9090"])
        self.assertEqual(members.addresses["http://b2.test:8080"], "10.0.0.2")
        self.assertEqual(texts(self.events), [
            f"{SRV}: address lookup of b2.test failed (NXDOMAIN: no such name);"
            " keeping 10.0.0.2",
            f"{SRV}: address lookup of new.test failed (NXDOMAIN: no such name);"
            " leaving it out",
        ])

    @defer.inlineCallbacks
    def test_noTargetResolves(self):
        """
        When no target has an address the lookup fails.
        """
        self.zone.additional = False
        self.zone.hosts = {}
        error = yield self.assertFailure(self.discovery.members(), DiscoveryError)
        self.assertEqual(str(error), "none of the 3 SRV targets could be resolved to an address")

    @defer.inlineCallbacks
    def test_nxdomain(self):
        """
        A name that does not exist fails with NXDOMAIN.
        """
        self.zone.srv = {}
        error = yield self.assertFailure(self.discovery.members(), DiscoveryError)
        self.assertEqual(str(error), "NXDOMAIN: no such name")

    @defer.inlineCallbacks
    def test_servfail(self):
        """
        A server failure fails with SERVFAIL and the server's address.
        """
        self.zone.error = ServFail()
        error = yield self.assertFailure(self.discovery.members(), DiscoveryError)
        self.assertEqual(str(error), f"SERVFAIL from 127.0.0.1:{self.port}")
        self.assertEqual(len(self.flushLoggedErrors(ServFail)), 1)

    @defer.inlineCallbacks
    def test_noData(self):
        """
        A name without SRV records fails.
        """
        self.zone.srv = {}
        self.zone.hosts = {SRV: ["10.0.0.1"]}
        error = yield self.assertFailure(self.discovery.members(), DiscoveryError)
        self.assertEqual(str(error), "no SRV records in the answer")

    @defer.inlineCallbacks
    def test_truncated(self):
        """
        Answers truncated over UDP are asked again over TCP; L{close} closes
        the TCP connection the resolver keeps.
        """
        self.server.truncateUDP = True
        members = yield self.discovery.members()
        self.assertEqual(members, self.expected)
        self.assertEqual(len(self.server.connections), 1)
        self.discovery.close()
        yield self.server.disconnected()


class FakeResolver:
    """
    An C{IResolver} whose SRV lookups the test answers by hand.
    """

    def __init__(self):
        self.pending = []
        self.cancelled = []

    def lookupService(self, name, timeout=None):
        d = Deferred(self.cancelled.append)
        self.pending.append(d)
        return d


class SRVDiscoveryFakeResolverTests(SynchronousTestCase):
    """
    Tests for L{SRVDiscovery} with a resolver answered by hand.
    """

    def setUp(self):
        self.resolver = FakeResolver()
        self.discovery = SRVDiscovery(
            DiscoveryConfig(dns_srv=SRV), task.Clock(), resolver=self.resolver
        )

    def test_timeout(self):
        """
        A query that timed out fails with a message naming the servers.
        """
        d = self.discovery.members()
        self.resolver.pending[0].errback(defer.TimeoutError())
        self.assertEqual(str(self.failureResultOf(d, DiscoveryError).value),
                         "no answer from the nameservers")

    def test_cancel(self):
        """
        Cancelling L{SRVDiscovery.members} cancels the query in flight.
        """
        d = self.discovery.members()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.resolver.cancelled, self.resolver.pending)


@implementer(IDiscovery)
class FakeDiscovery:
    """
    A discovery answering with what its L{FakeDiscoveries} says.

    @ivar lookups: how many times L{members} was called.
    """

    def __init__(self, owner, config):
        self.owner = owner
        self.config = config
        self.lookups = 0
        self.closed = False

    def members(self):
        self.lookups += 1
        return self.owner.answer(self.config)

    def close(self):
        self.closed = True


class FakeDiscoveries:
    """
    A C{discoveryFactory} making L{FakeDiscovery}s.

    @ivar answer: called with a C{DiscoveryConfig} for each lookup; returns
        a L{Deferred} or raises.
    @ivar created: every discovery made, in order.
    """

    def __init__(self):
        self.created = []
        self.pending = []
        self.cancelled = []
        self.answer = lambda config: defer.succeed(members("a", "b"))

    def __call__(self, config, reactor):
        discovery = FakeDiscovery(self, config)
        self.created.append(discovery)
        return discovery

    def hold(self, config):
        """
        An C{answer}: a L{Deferred} that fires when the test says.
        """
        d = Deferred(self.cancelled.append)
        self.pending.append(d)
        return d


def members(*hosts):
    """
    L{Members} with one backend on port 80 per host.
    """
    return Members(
        tuple(backend(host, 80) for host in hosts),
        {f"http://{host}:80": f"10.0.0.{index + 1}" for index, host in enumerate(hosts)},
    )


def poolsYAML(*pools, refresh="30s"):
    """
    A configuration with a discovered pool per name in C{pools}.
    """
    text = "listeners:\n  - name: web\n    address: '127.0.0.1:0'\nbackend_pools:\n"
    for name in pools:
        text += (
            f"  - name: {name}\n"
            f"    discovery: {{dns_srv: _http._tcp.{name}.test, nameservers: [127.0.0.1],"
            f" refresh: {refresh}}}\n"
        )
    text += "  - name: static\n    backends: [{url: 'http://127.0.0.1:1'}]\n"
    return text


class Boom(Exception):
    """
    A discovery's unexpected exception.
    """


class DiscoveryServiceLoopTests(SynchronousTestCase):
    """
    Tests for L{DiscoveryService}'s loops, with a L{task.Clock}.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.golb = Golb(parseConfig(poolsYAML("web"), "test.yaml"), reactor=self.clock,
                         upstreamFactory=lambda backend, poolConfig, current: None)
        self.changes = []
        self.golb.observe(lambda: self.changes.append(dict(self.golb.members)))
        self.fakes = FakeDiscoveries()
        self.service = DiscoveryService(self.golb, self.clock, discoveryFactory=self.fakes)

    def tearDown(self):
        if self.service.running:
            self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def reload(self, *pools, **kw):
        self.golb.reload(parseConfig(poolsYAML(*pools, **kw), "test.yaml"))

    def ids(self, pool="web"):
        return [b.id for b in self.golb.pools[pool].backends]

    def test_interval(self):
        """
        The first lookup is at start, then one every C{refresh}; only changed
        members are applied.
        """
        self.assertEqual(self.service.name, "discovery")
        self.service.startService()
        [discovery] = self.fakes.created
        self.assertEqual(discovery.lookups, 1)
        self.assertEqual(self.ids(), ["a:80", "b:80"])
        self.assertEqual(len(self.changes), 1)
        self.clock.advance(29)
        self.assertEqual(discovery.lookups, 1)
        self.clock.advance(1)
        self.assertEqual(discovery.lookups, 2)
        self.assertEqual(len(self.changes), 1)
        self.fakes.answer = lambda config: defer.succeed(members("a", "c"))
        self.clock.advance(30)
        self.assertEqual(self.ids(), ["a:80", "c:80"])
        self.assertEqual(len(self.changes), 2)
        self.assertEqual(self.ids("static"), ["127.0.0.1:1"])

    def test_logsChanges(self):
        """
        A change is logged in one line naming what came and went.
        """
        events = capture(self.service)
        self.service.startService()
        self.fakes.answer = lambda config: defer.succeed(members("a", "c"))
        self.clock.advance(30)
        self.assertEqual(texts(events), [
            "pool web: discovered 2 members via _http._tcp.web.test: +a:80 +b:80",
            "pool web: discovered 2 members via _http._tcp.web.test: +c:80 -b:80",
        ])

    def test_survivesExceptions(self):
        """
        A discovery that raises, or fails with an unexpected error, is logged
        with its traceback and the loop goes on.
        """
        def boom(config):
            raise Boom("raised")

        self.fakes.answer = boom
        self.service.startService()
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.fakes.answer = lambda config: defer.fail(Boom("failed"))
        self.clock.advance(30)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.fakes.answer = lambda config: defer.succeed(members("a"))
        self.clock.advance(30)
        self.assertEqual(self.ids(), ["a:80"])
        self.assertEqual(self.fakes.created[0].lookups, 3)

    def test_badResult(self):
        """
        A discovery giving something other than L{Members} is an error too.
        """
        self.fakes.answer = lambda config: defer.succeed(["a"])
        self.service.startService()
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.ids(), [])

    def test_failureKeepsMembers(self):
        """
        A failed lookup changes nothing and logs a warning saying why.
        """
        events = capture(self.service)
        self.service.startService()
        before = self.golb.pools["web"].backends
        self.fakes.answer = lambda config: defer.fail(DiscoveryError("SERVFAIL from x"))
        self.clock.advance(30)
        self.assertEqual(self.golb.pools["web"].backends, before)
        self.assertEqual(texts(events)[-1], "pool web: DNS SRV lookup of _http._tcp.web.test"
                         " failed (SERVFAIL from x); keeping the last 2 members")

    def test_failureBeforeAnyMembers(self):
        """
        A pool that never had members says so.
        """
        events = capture(self.service)
        self.fakes.answer = lambda config: defer.fail(DiscoveryError("NXDOMAIN: no such name"))
        self.service.startService()
        self.assertEqual(texts(events), ["pool web: DNS SRV lookup of _http._tcp.web.test"
                                         " failed (NXDOMAIN: no such name); the pool stays empty"])

    def test_timeout(self):
        """
        A lookup that does not finish is cancelled after L{lookupTimeout};
        the next one runs on time.
        """
        events = capture(self.service)
        self.fakes.answer = self.fakes.hold
        self.service.startService()
        self.assertEqual(lookupTimeout(self.golb.pools["web"].config.discovery), 10.0)
        self.clock.advance(10)
        self.assertEqual(self.fakes.cancelled, self.fakes.pending[:1])
        self.assertEqual(texts(events), ["pool web: DNS SRV lookup of _http._tcp.web.test"
                                         " failed (no answer within 10s); the pool stays empty"])
        self.clock.advance(20)
        self.assertEqual(len(self.fakes.pending), 2)

    def test_oneLookupAtATime(self):
        """
        L{DiscoveryService.refresh} during a lookup joins it; the loop waits
        for it too.
        """
        self.fakes.answer = self.fakes.hold
        self.service.startService()
        first = self.service.refresh("web")
        second = self.service.refresh("web")
        self.assertEqual(self.fakes.created[0].lookups, 1)
        self.assertNoResult(first)
        self.fakes.pending[0].callback(members("a"))
        self.assertEqual(self.successResultOf(first), members("a"))
        self.assertEqual(self.successResultOf(second), members("a"))
        self.assertEqual(self.ids(), ["a:80"])
        third = self.service.refresh("web")
        self.assertEqual(self.fakes.created[0].lookups, 2)
        self.fakes.pending[1].errback(DiscoveryError("nope"))
        self.failureResultOf(third, DiscoveryError)

    def test_refreshUnknownPool(self):
        """
        Refreshing a pool without discovery fails with L{KeyError}.
        """
        self.failureResultOf(self.service.refresh("static"), KeyError)
        self.failureResultOf(self.service.refresh("nope"), KeyError)

    def test_refreshWhileStopped(self):
        """
        L{DiscoveryService.refresh} works while the service is not running;
        no loop starts.
        """
        self.assertEqual(self.successResultOf(self.service.refresh("web")), members("a", "b"))
        self.assertEqual(self.ids(), ["a:80", "b:80"])
        self.clock.advance(60)
        self.assertEqual(self.fakes.created[0].lookups, 1)

    def test_reload(self):
        """
        After a reload, new discovered pools get a loop, gone ones lose it
        (their lookup in flight is cancelled), and a pool whose C{discovery}
        changed starts over with a new discovery.
        """
        self.service.startService()
        [web] = self.fakes.created
        self.fakes.answer = self.fakes.hold
        self.reload("web", "api")
        [_, api] = self.fakes.created
        self.assertEqual((api.config.dns_srv, api.lookups), ("_http._tcp.api.test", 1))
        self.assertEqual(web.lookups, 1)
        self.reload("web")
        self.assertTrue(api.closed)
        self.assertEqual(self.fakes.cancelled, self.fakes.pending[:1])
        self.assertNotIn("api", self.golb.members)
        self.clock.advance(30)
        self.assertEqual(api.lookups, 1)
        self.assertEqual(web.lookups, 2)
        self.fakes.pending[1].callback(members("a", "b"))
        self.reload("web", refresh="5s")
        self.assertTrue(web.closed)
        newWeb = self.fakes.created[-1]
        self.assertEqual((newWeb.config.refresh, newWeb.lookups), (5.0, 1))
        self.fakes.pending[-1].callback(members("a", "b"))
        self.clock.advance(5)
        self.assertEqual(newWeb.lookups, 2)
        self.assertEqual(web.lookups, 2)

    def test_stop(self):
        """
        Stopping the service stops the loops, cancels the lookups in flight
        and closes the discoveries; nothing is left scheduled.
        """
        self.fakes.answer = self.fakes.hold
        self.service.startService()
        waiting = self.service.refresh("web")
        self.service.stopService()
        self.assertEqual(self.fakes.cancelled, self.fakes.pending[:1])
        self.failureResultOf(waiting, CancelledError)
        self.assertTrue(self.fakes.created[0].closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.golb.reload(parseConfig(poolsYAML("web", "api"), "test.yaml"))
        self.assertEqual(len(self.fakes.created), 1)


class DiscoveryServiceTests(TestCase):
    """
    Tests for L{DiscoveryService} with L{SRVDiscovery}, a real DNS server and
    a real golb.
    """

    def setUp(self):
        self.zone, _, self.dnsPort = listenDNS(self)
        self.zone.srv[SRV] = [(0, 0, 8080, "b1.test"), (0, 0, 8080, "b2.test")]
        self.zone.hosts = {"b1.test": ["10.0.0.1"], "b2.test": ["10.0.0.2"],
                           "b3.test": ["10.0.0.3"]}

    def yaml(self, extra=""):
        return (
            "listeners:\n  - name: web\n    address: '127.0.0.1:0'\n"
            "backend_pools:\n  - name: web\n"
            f"    discovery: {{dns_srv: {SRV}, nameservers: ['127.0.0.1:{self.dnsPort}'],"
            " refresh: 30s}\n" + extra
        )

    def start(self, golb):
        service = DiscoveryService(golb, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def golb(self):
        golb = Golb(parseConfig(self.yaml(), "test.yaml"), reactor=reactor)
        self.addCleanup(golb.close)
        return golb

    @defer.inlineCallbacks
    def test_addAndRemove(self):
        """
        A refresh picks up an added target, then a removed one; a backend that
        stays keeps its L{golb.pool.Backend} and its state.
        """
        golb = self.golb()
        service = self.start(golb)
        events = capture(service)
        yield service.refresh("web")
        pool = golb.pools["web"]
        self.assertEqual([b.id for b in pool.backends], ["b1.test:8080", "b2.test:8080"])
        b2 = pool.backends[1]
        self.assertEqual((b2.host, b2.address), ("b2.test", "10.0.0.2"))
        b2.requests = 7

        self.zone.srv[SRV].append((0, 0, 8080, "b3.test"))
        yield service.refresh("web")
        self.assertEqual([b.id for b in pool.backends],
                         ["b1.test:8080", "b2.test:8080", "b3.test:8080"])
        self.assertIs(pool.backends[1], b2)

        self.zone.srv[SRV] = [(0, 0, 8080, "b2.test"), (0, 0, 8080, "b3.test")]
        yield service.refresh("web")
        self.assertEqual([b.id for b in pool.backends], ["b2.test:8080", "b3.test:8080"])
        self.assertIs(pool.backends[0], b2)
        self.assertEqual(b2.requests, 7)
        self.assertIsNone(golb.backends.get("web", "http://b1.test:8080"))
        self.assertEqual(texts(events), [
            f"pool web: discovered 2 members via {SRV}: +b1.test:8080 +b2.test:8080",
            f"pool web: discovered 3 members via {SRV}: +b3.test:8080",
            f"pool web: discovered 2 members via {SRV}: -b1.test:8080",
        ])

    @defer.inlineCallbacks
    def test_failureKeepsMembers(self):
        """
        When the server answers SERVFAIL or NXDOMAIN the pool keeps its last
        members, and says so.
        """
        golb = self.golb()
        service = self.start(golb)
        yield service.refresh("web")
        events = capture(service)
        backends = list(golb.pools["web"].backends)

        self.zone.error = ServFail()
        yield self.assertFailure(service.refresh("web"), DiscoveryError)
        self.assertEqual(len(self.flushLoggedErrors(ServFail)), 1)
        self.zone.error = None
        self.zone.srv = {}
        yield self.assertFailure(service.refresh("web"), DiscoveryError)
        self.assertEqual(golb.pools["web"].backends, backends)
        self.assertEqual(texts(events), [
            f"pool web: DNS SRV lookup of {SRV} failed (SERVFAIL from 127.0.0.1:{self.dnsPort});"
            " keeping the last 2 members",
            f"pool web: DNS SRV lookup of {SRV} failed (NXDOMAIN: no such name);"
            " keeping the last 2 members",
        ])

    @defer.inlineCallbacks
    def test_endToEnd(self):
        """
        Requests through golb reach the backends found by SRV: golb connects
        to the addresses of the targets' A records and sends the target name
        as the Host.  Before the first lookup the pool answers 503.
        """
        port1, _ = listenBackend(self, name="b1")
        port2, _ = listenBackend(self, name="b2")
        self.zone.srv[SRV] = [(0, 0, port1.getHost().port, "b1.test."),
                              (0, 0, port2.getHost().port, "b2.test.")]
        self.zone.hosts = {"b1.test": ["127.0.0.1"], "b2.test": ["127.0.0.1"]}
        self.zone.additional = False
        golb, port, _ = listenGolb(self, self.yaml("    preserve_host: false\n"))
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        response = yield client.get(f"http://127.0.0.1:{port.getHost().port}/")
        yield response.content()
        self.assertEqual(response.code, 503)

        service = self.start(golb)
        yield service.refresh("web")
        seen = []
        for _ in range(4):
            response = yield client.get(f"http://127.0.0.1:{port.getHost().port}/")
            body = yield response.content()
            self.assertEqual(response.code, 200)
            name = response.headers.getRawHeaders(b"x-demo-backend")[0]
            seen.append(name)
            backendPort = (port1 if name == b"b1" else port2).getHost().port
            self.assertIn(f"host: {name.decode()}.test:{backendPort}".encode(), body.lower())
        self.assertEqual(sorted(seen), [b"b1", b"b1", b"b2", b"b2"])
