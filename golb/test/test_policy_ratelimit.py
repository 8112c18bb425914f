"""
Tests for L{golb.policies.ratelimit} and its shared store
L{golb.policies._redisstore}: token buckets on a L{Clock}, the policy on
small fake requests, a real golb listener in front of a real backend, and a
real C{redis-server} started by the tests.
"""

import os
import shutil

import treq
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from golb.config import parseConfig
from golb.errors import GolbError
from golb.policies import Context, Environment, IPolicy, States
from golb.policies._redisstore import (
    BUCKET_SCRIPT,
    RedisBuckets,
    RedisClient,
    RedisError,
    ReplyParser,
    StoreUnavailable,
    encodeCommand,
    parseRedisURL,
)
from golb.policies.ratelimit import RateLimit, TokenBuckets
from golb.test.support import freePort, listenBackend, listenGolb


def policyConfig(text):
    """
    The first global policy of a minimal config with C{policies: [text]}.
    """
    config = parseConfig(
        "server: {address: '127.0.0.1:0'}\n"
        "backend_pools: [{name: default, backends: [{url: 'http://127.0.0.1:1'}]}]\n"
        f"policies: [{text}]\n",
        "test.yaml",
    )
    return config.policies[0]


class FakeRequest:
    """
    The parts of a L{golb.listener.GolbRequest} that C{rate_limit} reads.
    """

    def __init__(self, client="10.0.0.1", headers=None):
        self.client = client
        self.requestHeaders = Headers(headers or {})
        self.responseHeaders = Headers()

    def clientAddress(self):
        return self.client


def policyOn(clock, text, states=None, scope="global"):
    """
    A L{RateLimit} built from C{text} on C{clock}.
    """
    env = Environment(clock, states or States(), scope)
    return RateLimit(policyConfig(text), env)


def context(route="api"):
    return Context(route, b"/")


def admitted(policy, requests, route="api"):
    """
    How many of C{requests} the policy passes on.
    """
    return sum(1 for request in requests if policy.onRequest(request, context(route)) is None)


class TokenBucketsTests(SynchronousTestCase):
    """
    L{TokenBuckets} admits C{burst} at once and C{rate} over time, exactly,
    and keeps its memory bounded.
    """

    def buckets(self, count=5, period=1.0, burst=5):
        self.clock = Clock()
        self.clock.advance(1700000000)
        return TokenBuckets(round(period * 1000000 / count), burst, self.clock.seconds)

    def test_exactBurst(self):
        """
        A 5/second limit with a burst of 5 admits exactly 5 of 20 requests
        arriving at the same instant.
        """
        buckets = self.buckets()
        results = [buckets.take("a") <= 0 for _ in range(20)]
        self.assertEqual(results, [True] * 5 + [False] * 15)

    def test_refill(self):
        """
        A token comes back every 1/rate seconds, and a bucket idle for
        burst/rate seconds is full again, not fuller.
        """
        buckets = self.buckets()
        for _ in range(5):
            buckets.take("a")
        self.clock.advance(0.199)
        self.assertGreater(buckets.take("a"), 0)
        self.clock.advance(0.001)
        self.assertLessEqual(buckets.take("a"), 0)
        self.assertGreater(buckets.take("a"), 0)
        self.clock.advance(60)
        self.assertEqual(sum(buckets.take("a") <= 0 for _ in range(20)), 5)

    def test_sustainedRate(self):
        """
        Over a long run the admitted count is burst plus rate times time.
        """
        buckets = self.buckets(count=10, period=1.0, burst=3)
        count = 0
        for _ in range(1000):
            count += buckets.take("a") <= 0
            self.clock.advance(0.01)
        self.assertEqual(count, 3 + 100 - 1)

    def test_excess(self):
        """
        The excess tells how long until the next token: C{take} of a refused
        request is the wait in microseconds.
        """
        buckets = self.buckets(count=100, period=60.0, burst=100)
        for _ in range(100):
            buckets.take("a")
        self.assertEqual(buckets.take("a"), 600000)
        self.clock.advance(0.25)
        self.assertEqual(buckets.take("a"), 350000)

    def test_keysIndependent(self):
        """
        Each key has its own bucket.
        """
        buckets = self.buckets(burst=2)
        self.assertEqual([buckets.take(k) <= 0 for k in "aabbab"],
                         [True, True, True, True, False, False])

    def test_idleKeysForgotten(self):
        """
        Keys idle long enough to be full again are dropped as new keys come:
        after a wave of 10,000 clients and a quiet spell, a second wave of
        10,000 other clients leaves no more than 10,000 keys in the table.
        """
        buckets = self.buckets()
        for n in range(10000):
            buckets.take(f"first-{n}")
        self.assertEqual(len(buckets), 10000)
        self.clock.advance(1.0)
        for n in range(10000):
            buckets.take(f"second-{n}")
        self.assertEqual(len(buckets), 10000)
        self.assertFalse(any(key.startswith("first") for key in buckets._tats))

    def test_activeKeysKept(self):
        """
        Keys whose bucket is not full yet stay (forgetting them would hand
        out a fresh burst).
        """
        buckets = self.buckets()
        for _ in range(5):
            buckets.take("busy")
        self.clock.advance(0.5)
        for n in range(100):
            buckets.take(f"other-{n}")
        self.assertEqual(sum(buckets.take("busy") <= 0 for _ in range(5)), 2)

    def test_hardCap(self):
        """
        However many distinct keys arrive at once (150,000 here), the table
        never holds more than L{TokenBuckets.maxKeys} (100,000) of them.
        """
        buckets = self.buckets()
        self.assertEqual(buckets.maxKeys, 100000)
        for n in range(150000):
            buckets.take(n)
            if n % 10000 == 0:
                self.assertLessEqual(len(buckets), 100000)
        self.assertEqual(len(buckets), 100000)

    def test_leastRecentlyUsedEvicted(self):
        """
        At the cap, the key used least recently goes first: a key in use
        keeps its (empty) bucket.
        """
        buckets = self.buckets(burst=1)
        buckets.maxKeys = 3
        buckets.take("busy")
        buckets.take("a")
        buckets.take("b")
        self.assertGreater(buckets.take("busy"), 0)
        buckets.take("c")
        buckets.take("d")
        self.assertEqual(set(buckets._tats), {"busy", "c", "d"})
        self.assertGreater(buckets.take("busy"), 0)


class RateLimitPolicyTests(SynchronousTestCase):
    """
    L{RateLimit} on fake requests: what clients see, and which requests
    share a bucket.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1700000000)

    def test_interface(self):
        """
        L{RateLimit} provides L{IPolicy}.
        """
        verifyObject(IPolicy, policyOn(self.clock, "{rate_limit: 5/second}"))

    def test_refusal(self):
        """
        Beyond the burst the answer is a 429 C{rate-limited} error with
        C{Retry-After} in whole seconds rounded up and the RateLimit header
        fields: limit, nothing remaining, seconds until full, the policy.
        """
        policy = policyOn(self.clock, "{rate_limit: 100/minute}")
        request = FakeRequest()
        for _ in range(100):
            self.assertIsNone(policy.onRequest(request, context()))
        error = policy.onRequest(FakeRequest(), context())
        self.assertIsInstance(error, GolbError)
        self.assertEqual((error.status, error.code), (429, "rate-limited"))
        self.assertIn("100/1m", error.message)
        self.assertEqual(dict(error.headers), {
            b"Retry-After": b"1",
            b"RateLimit-Limit": b"100",
            b"RateLimit-Remaining": b"0",
            b"RateLimit-Reset": b"60",
            b"RateLimit-Policy": b"100;w=60",
        })

    def test_retryAfterRoundsUp(self):
        """
        C{Retry-After} is the wait until the next token, rounded up to whole
        seconds: 12s for 1 per 12 seconds, then 2s when 10.5s have passed.
        """
        policy = policyOn(self.clock, "{rate_limit: {rate: 5/minute, burst: 1}}")
        policy.onRequest(FakeRequest(), context())
        error = policy.onRequest(FakeRequest(), context())
        self.assertEqual(dict(error.headers)[b"Retry-After"], b"12")
        self.assertEqual(dict(error.headers)[b"RateLimit-Policy"], b"5;w=60;burst=1")
        self.clock.advance(10.5)
        error = policy.onRequest(FakeRequest(), context())
        self.assertEqual(dict(error.headers)[b"Retry-After"], b"2")

    def test_passedHeaders(self):
        """
        An admitted request's response carries the RateLimit header fields,
        C{RateLimit-Remaining} counting down.
        """
        policy = policyOn(self.clock, "{rate_limit: {rate: 10/second, burst: 3}}")
        remaining = []
        for _ in range(3):
            request = FakeRequest()
            self.assertIsNone(policy.onRequest(request, context()))
            headers = request.responseHeaders
            remaining.append(headers.getRawHeaders(b"ratelimit-remaining")[0])
        self.assertEqual(remaining, [b"2", b"1", b"0"])
        self.assertEqual(headers.getRawHeaders(b"ratelimit-limit"), [b"3"])
        self.assertEqual(headers.getRawHeaders(b"ratelimit-reset"), [b"1"])
        self.assertEqual(headers.getRawHeaders(b"ratelimit-policy"), [b"10;w=1;burst=3"])

    def test_tighterPolicyShown(self):
        """
        With two rate limits on one request, the headers are those of the
        one with fewer requests remaining, whichever comes first.
        """
        for tightFirst in (False, True):
            loose = policyOn(self.clock, "{rate_limit: 100/second}")
            tight = policyOn(self.clock, "{rate_limit: {rate: 10/minute, burst: 2}}")
            request = FakeRequest()
            for policy in ((tight, loose) if tightFirst else (loose, tight)):
                policy.onRequest(request, context())
            self.assertEqual(request.responseHeaders.getRawHeaders(b"ratelimit-limit"), [b"2"])
            self.assertEqual(
                request.responseHeaders.getRawHeaders(b"ratelimit-remaining"), [b"1"])

    def test_refusalReplacesEarlierHeaders(self):
        """
        A 429 from a second rate limit carries only its own RateLimit
        header fields, not also those the first one set.
        """
        loose = policyOn(self.clock, "{rate_limit: 100/second}")
        tight = policyOn(self.clock, "{rate_limit: {rate: 10/minute, burst: 1}}")
        tight.onRequest(FakeRequest(), context())
        request = FakeRequest()
        self.assertIsNone(loose.onRequest(request, context()))
        error = tight.onRequest(request, context())
        self.assertEqual(error.status, 429)
        self.assertFalse(request.responseHeaders.hasHeader(b"ratelimit-limit"))

    def test_clientIPKey(self):
        """
        With C{key: client_ip} (the default) each client address has its own
        bucket.
        """
        policy = policyOn(self.clock, "{rate_limit: {rate: 10/minute, burst: 2}}")
        requests = [FakeRequest(client=ip) for ip in ["10.0.0.1"] * 3 + ["10.0.0.2"] * 3]
        self.assertEqual(admitted(policy, requests), 4)

    def test_ipv6Network(self):
        """
        IPv6 clients are counted by their /64 network: a client rotating
        through the addresses of its /64 shares one bucket; another /64 has
        its own.
        """
        policy = policyOn(self.clock, "{rate_limit: {rate: 10/minute, burst: 2}}")
        rotating = [FakeRequest(client=f"2001:db8:1:2::{n:x}") for n in range(1, 6)]
        self.assertEqual(admitted(policy, rotating), 2)
        other = [FakeRequest(client="2001:db8:1:3::1")] * 3
        self.assertEqual(admitted(policy, other), 2)

    def test_headerKey(self):
        """
        With C{key: header:NAME} each value of the header has its own bucket,
        whatever the client address.
        """
        policy = policyOn(self.clock,
                          "{rate_limit: {rate: 10/minute, burst: 2, key: 'header:X-Api-Key'}}")
        requests = [FakeRequest(client=f"10.0.0.{n}", headers={b"X-Api-Key": [b"k1"]})
                    for n in range(5)]
        self.assertEqual(admitted(policy, requests), 2)
        other = FakeRequest(client="10.0.0.1", headers={b"X-Api-Key": [b"k2"]})
        self.assertIsNone(policy.onRequest(other, context()))

    def test_headerKeyMissing(self):
        """
        A request without the header is counted by its client address: one
        client cannot escape the limit by leaving the header out, and
        clients without it do not share one bucket.
        """
        policy = policyOn(self.clock,
                          "{rate_limit: {rate: 10/minute, burst: 2, key: 'header:X-Api-Key'}}")
        self.assertEqual(admitted(policy, [FakeRequest(client="10.0.0.1")] * 5), 2)
        self.assertEqual(admitted(policy, [FakeRequest(client="10.0.0.2")] * 5), 2)
        named = FakeRequest(client="10.0.0.1", headers={b"X-Api-Key": [b"10.0.0.1"]})
        self.assertIsNone(policy.onRequest(named, context()))

    def test_longHeaderValues(self):
        """
        Long header values are keyed by their digest: they still get one
        bucket per value, and the table does not hold the values themselves.
        """
        policy = policyOn(self.clock,
                          "{rate_limit: {rate: 10/minute, burst: 1, key: 'header:X-Token'}}")
        long1 = FakeRequest(headers={b"X-Token": [b"a" * 5000]})
        long2 = FakeRequest(headers={b"X-Token": [b"a" * 4999 + b"b"]})
        self.assertEqual(admitted(policy, [long1, long1, long2, long2]), 2)
        self.assertTrue(all(len(repr(key)) < 200 for key in policy.buckets._tats))

    def test_routeKey(self):
        """
        A global policy with C{key: route} keeps one bucket per route,
        shared by every client of that route.
        """
        policy = policyOn(self.clock, "{rate_limit: {rate: 10/minute, burst: 2, key: route}}")
        requests = [FakeRequest(client=f"10.0.0.{n}") for n in range(4)]
        self.assertEqual(admitted(policy, requests, route="api"), 2)
        self.assertEqual(admitted(policy, requests, route="web"), 2)

    def test_stateKeptAcrossReload(self):
        """
        Rebuilding the policy from the same configuration (a reload that
        keeps it) keeps its buckets; a changed configuration starts afresh.
        """
        states = States()
        states.begin()
        first = policyOn(self.clock, "{rate_limit: {rate: 10/minute, burst: 1}}", states)
        states.commit()
        self.assertIsNone(first.onRequest(FakeRequest(), context()))
        states.begin()
        again = policyOn(self.clock, "{rate_limit: {rate: 10/minute, burst: 1}}", states)
        states.commit()
        self.assertIs(again.buckets, first.buckets)
        self.assertIsInstance(again.onRequest(FakeRequest(), context()), GolbError)
        states.begin()
        changed = policyOn(self.clock, "{rate_limit: {rate: 20/minute, burst: 1}}", states)
        states.commit()
        self.assertIsNone(changed.onRequest(FakeRequest(), context()))


class ReplyParserTests(SynchronousTestCase):
    """
    L{ReplyParser} reads RESP replies however they are split.
    """

    def test_kinds(self):
        """
        Simple strings, errors, integers, bulk strings, nil and nested arrays.
        """
        data = (b"+OK\r\n-NOSCRIPT No matching script\r\n:-42\r\n$5\r\nhe\r\no\r\n"
                b"$-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n")
        replies = ReplyParser().feed(data)
        self.assertEqual(replies[0], b"OK")
        self.assertIsInstance(replies[1], RedisError)
        self.assertEqual(str(replies[1]), "NOSCRIPT No matching script")
        self.assertEqual(replies[2:], [-42, b"he\r\no", None, [1, [b""]]])

    def test_byteByByte(self):
        """
        Replies split anywhere come out whole, once.
        """
        data = b"*2\r\n$3\r\nabc\r\n:7\r\n+PONG\r\n"
        parser = ReplyParser()
        replies = []
        for index in range(len(data)):
            replies.extend(parser.feed(data[index:index + 1]))
        self.assertEqual(replies, [[b"abc", 7], b"PONG"])

    def test_garbage(self):
        """
        Anything that is not RESP is an error.
        """
        self.assertRaises(ValueError, ReplyParser().feed, b"HTTP/1.1 200 OK\r\n")

    def test_encode(self):
        """
        Commands are arrays of bulk strings; text is UTF-8, integers decimal.
        """
        self.assertEqual(encodeCommand((b"SET", "k\u00e9", 12)),
                         b"*3\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n12\r\n")


class FakeEndpoint:
    """
    A client endpoint that connects to a L{StringTransport}, or fails.

    @ivar protocols: the protocols connected so far.
    """

    def __init__(self):
        self.protocols = []
        self.attempts = 0
        self.refuse = False
        self.pending = None

    def connect(self, factory):
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError())
        if self.pending is not None:
            return self.pending
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        return succeed(protocol)


def lose(protocol):
    """
    Close a fake connection the way the reactor does.
    """
    protocol.connectionLost(Failure(ConnectionDone()))


class RedisClientTests(SynchronousTestCase):
    """
    L{RedisClient} on a L{Clock}: bounded calls, failing fast while the
    server is away, reconnecting by itself.
    """

    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint()

    def client(self, url="redis://127.0.0.1:6379"):
        return RedisClient(self.clock, url, timeout=1.0, endpoint=self.endpoint)

    def test_urlWithoutSecrets(self):
        """
        The URL shown in messages has no credentials.
        """
        client = self.client("redis://user:s3cret@127.0.0.1:6380/4")
        self.assertEqual(client.url, "redis://127.0.0.1:6380/4")

    def test_parseURL(self):
        """
        The URL gives host, port, database, credentials and TLS.
        """
        self.assertEqual(parseRedisURL("redis://r.example:6380/3"),
                         ("r.example", 6380, 3, None, None, False))
        self.assertEqual(parseRedisURL("rediss://u:p%40ss@r.example"),
                         ("r.example", 6379, 0, "u", "p@ss", True))
        self.assertEqual(parseRedisURL("redis://:secret@127.0.0.1/"),
                         ("127.0.0.1", 6379, 0, None, "secret", False))

    def test_command(self):
        """
        A command is sent on the connection and its reply returned.
        """
        client = self.client()
        d = client.execute(b"PING")
        [protocol] = self.endpoint.protocols
        self.assertEqual(protocol.transport.value(), b"*1\r\n$4\r\nPING\r\n")
        protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), b"PONG")

    def test_handshake(self):
        """
        With a password and a database in the URL, C{AUTH} and C{SELECT} go
        first, and commands wait until both are answered.
        """
        client = self.client("redis://user:pw@127.0.0.1:6379/2")
        d = client.execute(b"PING")
        [protocol] = self.endpoint.protocols
        self.assertEqual(protocol.transport.value(), encodeCommand((b"AUTH", "user", "pw")))
        protocol.dataReceived(b"+OK\r\n")
        self.assertEqual(protocol.transport.value(),
                         encodeCommand((b"AUTH", "user", "pw")) + encodeCommand((b"SELECT", 2)))
        self.assertNoResult(d)
        protocol.dataReceived(b"+OK\r\n")
        protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), b"PONG")

    def test_authRefused(self):
        """
        A refused C{AUTH} fails the waiting commands and drops the
        connection.
        """
        client = self.client("redis://:wrong@127.0.0.1")
        d = client.execute(b"PING")
        [protocol] = self.endpoint.protocols
        protocol.dataReceived(b"-WRONGPASS invalid password\r\n")
        self.failureResultOf(d, StoreUnavailable)
        self.assertTrue(protocol.transport.disconnecting)
        self.assertFalse(client.connected)

    def test_errorReply(self):
        """
        An error reply fails the command with L{RedisError}; the connection
        stays.
        """
        client = self.client()
        d = client.execute(b"EVALSHA", b"x", 0)
        self.endpoint.protocols[0].dataReceived(b"-NOSCRIPT No matching script\r\n")
        self.failureResultOf(d, RedisError)
        self.assertTrue(client.connected)

    def test_timeout(self):
        """
        A command not answered within the timeout fails with
        L{StoreUnavailable} and drops the connection.
        """
        client = self.client()
        d = client.execute(b"PING")
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertIn("within 1s", str(failure.value))
        protocol = self.endpoint.protocols[0]
        self.assertTrue(protocol.transport.disconnecting)
        lose(protocol)
        self.assertFalse(client.connected)

    def test_connectTimeout(self):
        """
        A connection attempt that does not complete in time fails the
        waiting commands with L{StoreUnavailable}.
        """
        self.endpoint.pending = Deferred()
        client = self.client()
        d = client.execute(b"PING")
        self.clock.advance(1.0)
        self.failureResultOf(d, StoreUnavailable)

    def test_failFastThenRetry(self):
        """
        After a refused connection, calls fail at once (no new attempt)
        until the retry delay has passed; the delay doubles while the
        server stays away, up to a cap, and resets once connected.
        """
        self.endpoint.refuse = True
        client = self.client()
        self.failureResultOf(client.execute(b"PING"), StoreUnavailable)
        self.assertEqual(self.endpoint.attempts, 1)
        self.failureResultOf(client.execute(b"PING"), StoreUnavailable)
        self.assertEqual(self.endpoint.attempts, 1)
        for delay in [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]:
            attempts = self.endpoint.attempts
            self.clock.advance(delay - 0.01)
            self.failureResultOf(client.execute(b"PING"), StoreUnavailable)
            self.assertEqual(self.endpoint.attempts, attempts)
            self.clock.advance(0.011)
            self.failureResultOf(client.execute(b"PING"), StoreUnavailable)
            self.assertEqual(self.endpoint.attempts, attempts + 1)
        self.endpoint.refuse = False
        self.clock.advance(2.0)
        d = client.execute(b"PING")
        self.endpoint.protocols[0].dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), b"PONG")
        self.assertTrue(client.connected)

    def test_reconnectAfterLoss(self):
        """
        A lost connection fails the commands in flight and the next call
        connects again at once.
        """
        client = self.client()
        d = client.execute(b"PING")
        lose(self.endpoint.protocols[0])
        self.failureResultOf(d, StoreUnavailable)
        d = client.execute(b"PING")
        self.assertEqual(len(self.endpoint.protocols), 2)
        self.endpoint.protocols[1].dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), b"PONG")

    def test_close(self):
        """
        C{close()} closes the connection, fires once it is gone, and later
        calls fail without connecting.
        """
        client = self.client()
        pending = client.execute(b"PING")
        protocol = self.endpoint.protocols[0]
        closed = client.close()
        self.assertTrue(protocol.transport.disconnecting)
        self.assertNoResult(closed)
        lose(protocol)
        self.successResultOf(closed)
        self.failureResultOf(pending, StoreUnavailable)
        self.failureResultOf(client.execute(b"PING"), StoreUnavailable)
        self.assertEqual(self.endpoint.attempts, 1)


class RedisBucketsUnitTests(SynchronousTestCase):
    """
    L{RedisBuckets} with a fake connection: the script protocol and
    outage bookkeeping.
    """

    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        client = RedisClient(self.clock, "redis://127.0.0.1", endpoint=self.endpoint)
        self.buckets = RedisBuckets(client, 200000, 1000000, b"p:")

    def test_evalshaThenEval(self):
        """
        The script is run by its SHA1; when Redis does not know it
        (C{NOSCRIPT}), it is sent whole with C{EVAL}.
        """
        d = self.buckets.take("10.0.0.1")
        protocol = self.endpoint.protocols[0]
        self.assertIn(b"EVALSHA", protocol.transport.value())
        self.assertIn(b"p:s:10.0.0.1", protocol.transport.value())
        protocol.transport.clear()
        protocol.dataReceived(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
        self.assertEqual(protocol.transport.value(), encodeCommand(
            (b"EVAL", BUCKET_SCRIPT, b"1", b"p:s:10.0.0.1", b"200000", b"1000000")))
        protocol.dataReceived(b":-800000\r\n")
        self.assertEqual(self.successResultOf(d), -800000)

    def test_keys(self):
        """
        Text keys, byte keys and digests map to distinct Redis keys.
        """
        self.assertEqual(self.buckets.redisKey("1.2.3.4"), b"p:s:1.2.3.4")
        self.assertEqual(self.buckets.redisKey(b"1.2.3.4"), b"p:b:1.2.3.4")
        self.assertEqual(self.buckets.redisKey(("sha256", b"\x01\xff")), b"p:d:01ff")

    def test_outageLoggedOnce(self):
        """
        An outage is logged once when it starts, however many checks fail,
        and once when Redis answers again.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.endpoint.refuse = True
        for _ in range(5):
            self.failureResultOf(self.buckets.take("a"), StoreUnavailable)
        self.assertFalse(self.buckets.available)
        self.endpoint.refuse = False
        self.clock.advance(1)
        d = self.buckets.take("a")
        self.endpoint.protocols[0].dataReceived(b":-1\r\n")
        self.successResultOf(d)
        self.assertTrue(self.buckets.available)
        texts = [e["log_format"] for e in events if "rate_limit store" in e.get("log_format", "")]
        self.assertEqual(len(texts), 2)
        self.assertIn("unavailable", texts[0])
        self.assertIn("answers again", texts[1])


class RateLimitEndToEndTests(TestCase):
    """
    C{rate_limit} through a real golb listener in front of a real backend.
    """

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        port, _ = listenBackend(self)
        self.backendPort = port.getHost().port

    def yaml(self, policy, trusted=None):
        lines = ['listeners: [{name: web, address: "127.0.0.1:0"}]']
        if trusted:
            lines.append(f"trusted_proxies: [{trusted!r}]")
        lines += [
            "backend_pools:",
            "  - name: default",
            f"    backends: [{{url: 'http://127.0.0.1:{self.backendPort}'}}]",
            f"policies: [{policy}]",
        ]
        return "\n".join(lines) + "\n"

    def start(self, policy, trusted=None):
        golb, port, site = listenGolb(self, self.yaml(policy, trusted))
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        return golb

    @defer.inlineCallbacks
    def get(self, headers=None, base=None):
        response = yield self.client.get((base or self.base) + "/", headers=headers)
        body = yield response.content()
        return response, body

    @defer.inlineCallbacks
    def statuses(self, count, headers=None):
        codes = []
        for n in range(count):
            response, _ = yield self.get(headers(n) if headers else None)
            codes.append(response.code)
        return codes

    def clock(self, golb):
        """
        Put the buckets of golb's (first) policy on a L{Clock}.
        """
        clock = Clock()
        clock.advance(1700000000)
        golb.runtime.router.default.chain.policies[0].buckets.seconds = clock.seconds
        return clock

    @defer.inlineCallbacks
    def test_exactAndRefill(self):
        """
        With 5/second and a burst of 5, exactly 5 of 20 quick requests pass;
        the others get 429 with C{Retry-After: 1}, X-Golb-Error and the
        RateLimit fields; 200ms later one more passes.
        """
        golb = self.start("{rate_limit: {rate: 5/second, burst: 5}}")
        clock = self.clock(golb)
        codes = []
        for _ in range(20):
            response, body = yield self.get()
            codes.append(response.code)
        self.assertEqual(codes, [200] * 5 + [429] * 15)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"rate-limited"])
        self.assertEqual(response.headers.getRawHeaders(b"ratelimit-remaining"), [b"0"])
        self.assertEqual(response.headers.getRawHeaders(b"ratelimit-policy"), [b"5;w=1"])
        self.assertIn(b"Too many requests: the limit is 5/1s with bursts of 5", body)
        clock.advance(0.2)
        self.assertEqual((yield self.statuses(3)), [200, 429, 429])
        clock.advance(1.0)
        self.assertEqual((yield self.statuses(6)), [200] * 5 + [429])

    @defer.inlineCallbacks
    def test_passedResponsesCarryFields(self):
        """
        Responses from the backend carry C{RateLimit-Remaining} counting
        down, beside the backend's own headers.
        """
        self.start("{rate_limit: {rate: 10/minute, burst: 3}}")
        remaining = []
        for _ in range(3):
            response, body = yield self.get()
            self.assertEqual(response.code, 200)
            self.assertEqual(response.headers.getRawHeaders(b"x-demo-backend"), [b"b1"])
            remaining.append(response.headers.getRawHeaders(b"ratelimit-remaining")[0])
        self.assertEqual(remaining, [b"2", b"1", b"0"])
        self.assertEqual(response.headers.getRawHeaders(b"ratelimit-limit"), [b"3"])

    @defer.inlineCallbacks
    def test_seedExample(self):
        """
        The seed's C{rate_limit: "100/minute"} admits 100 requests from one
        client within a minute and refuses the 101st.
        """
        self.clock(self.start('{rate_limit: "100/minute"}'))
        codes = yield self.statuses(101)
        self.assertEqual(codes, [200] * 100 + [429])

    @defer.inlineCallbacks
    def test_spoofedForwardedForIgnored(self):
        """
        A client that is not a trusted proxy gains nothing by sending a
        different X-Forwarded-For (and Forwarded) with each request: it is
        limited by its own address.
        """
        self.start("{rate_limit: {rate: 10/minute, burst: 3}}", trusted="10.0.0.0/8")
        codes = yield self.statuses(8, headers=lambda n: {
            "X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=198.51.100.{n}"})
        self.assertEqual(codes, [200] * 3 + [429] * 5)

    @defer.inlineCallbacks
    def test_trustedProxyClients(self):
        """
        Behind a trusted proxy, each client named by X-Forwarded-For has its
        own bucket.
        """
        self.start("{rate_limit: {rate: 10/minute, burst: 2}}", trusted="127.0.0.1/32")
        codes = yield self.statuses(6, headers=lambda n: {"X-Forwarded-For": f"203.0.113.{n // 3}"})
        self.assertEqual(codes, [200, 200, 429, 200, 200, 429])

    @defer.inlineCallbacks
    def test_reloadKeepsBuckets(self):
        """
        A reload that keeps the policy keeps the counts (an exhausted client
        stays limited); a reload that changes it starts afresh.
        """
        golb = self.start("{rate_limit: {rate: 10/minute, burst: 2}}")
        self.assertEqual((yield self.statuses(3)), [200, 200, 429])
        golb.reload(parseConfig(self.yaml("{rate_limit: {rate: 10/minute, burst: 2}}"),
                                "test.yaml"))
        self.assertEqual((yield self.statuses(1)), [429])
        golb.reload(parseConfig(self.yaml("{rate_limit: {rate: 10/minute, burst: 4}}"),
                                "test.yaml"))
        self.assertEqual((yield self.statuses(5)), [200] * 4 + [429])


class RedisServer(ProcessProtocol):
    """
    A C{redis-server} child process on a given port.
    """

    def __init__(self):
        self.output = b""
        self.ended = Deferred()
        self.running = True

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.running = False
        self.ended.callback(None)


class RedisTestCase(TestCase):
    """
    Tests with real C{redis-server} processes, started and stopped by the
    tests; they fail (not skip) when C{redis-server} is not installed.
    """

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        port, _ = listenBackend(self)
        self.backendPort = port.getHost().port
        self.redisPort = freePort()
        self.redisURL = f"redis://127.0.0.1:{self.redisPort}/0"

    @defer.inlineCallbacks
    def startRedis(self):
        """
        Start C{redis-server} on C{self.redisPort} and wait until it answers
        PING; it is stopped at cleanup.
        """
        path = shutil.which("redis-server")
        if path is None:
            self.fail("redis-server is not installed; install the Debian package redis-server"
                      " (the shared rate-limit store tests need it)")
        directory = self.mktemp()
        os.makedirs(directory)
        server = RedisServer()
        reactor.spawnProcess(server, path, [
            path, "--port", str(self.redisPort), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", directory, "--daemonize", "no",
        ], env=os.environ)
        self.addCleanup(self.stopRedis, server)
        deadline = reactor.seconds() + 10
        while True:
            client = RedisClient(reactor, self.redisURL)
            try:
                answer = yield client.execute(b"PING")
            except StoreUnavailable:
                answer = None
            yield client.close()
            if answer == b"PONG":
                break
            if not server.running or reactor.seconds() > deadline:
                self.fail(f"redis-server did not answer PING: {server.output.decode()!r}")
            yield deferLater(reactor, 0.02, lambda: None)
        self.redis = server
        return server

    def stopRedis(self, server):
        if server.running:
            server.transport.signalProcess("KILL")
        return server.ended

    @defer.inlineCallbacks
    def redisCommand(self, *args):
        client = RedisClient(reactor, self.redisURL)
        try:
            answer = yield client.execute(*args)
        finally:
            yield client.close()
        return answer

    def yaml(self, policy):
        return (
            'listeners: [{name: web, address: "127.0.0.1:0"}]\n'
            "backend_pools:\n"
            "  - name: default\n"
            f"    backends: [{{url: 'http://127.0.0.1:{self.backendPort}'}}]\n"
            f"policies: [{policy}]\n"
        )

    def startGolb(self, policy):
        golb, port, site = listenGolb(self, self.yaml(policy))
        return golb, f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def status(self, base):
        response = yield self.client.get(base + "/")
        body = yield response.content()
        return response.code, response.headers, body

    @defer.inlineCallbacks
    def statuses(self, base, count):
        codes = []
        for _ in range(count):
            code, _, _ = yield self.status(base)
            codes.append(code)
        return codes

    def logEvents(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events


class RedisStoreTests(RedisTestCase):
    """
    C{store: redis://...} shares each bucket among every golb using that
    Redis, and fails open or closed as configured when Redis is away.
    """

    @defer.inlineCallbacks
    def test_sharedAcrossInstances(self):
        """
        Two independent golbs using the same Redis admit together no more
        than the limit: of 30 requests alternating between them, exactly
        10 pass with 10/minute and a burst of 10, 5 through each.
        """
        yield self.startRedis()
        policy = f"{{rate_limit: {{rate: 10/minute, burst: 10, store: '{self.redisURL}'}}}}"
        _, base1 = self.startGolb(policy)
        _, base2 = self.startGolb(policy)
        admitted = {base1: 0, base2: 0}
        codes = []
        for n in range(30):
            base = base1 if n % 2 == 0 else base2
            code, headers, _ = yield self.status(base)
            codes.append(code)
            admitted[base] += code == 200
        self.assertEqual(codes.count(200), 10)
        self.assertEqual(codes[:10], [200] * 10)
        self.assertEqual(sorted(admitted.values()), [5, 5])
        self.assertEqual(headers.getRawHeaders(b"x-golb-error"), [b"rate-limited"])
        [retryAfter] = headers.getRawHeaders(b"retry-after")
        self.assertIn(int(retryAfter), range(1, 7))

    @defer.inlineCallbacks
    def test_keysExpire(self):
        """
        Each bucket is one Redis key that expires when the bucket would be
        full again, so Redis forgets idle clients by itself.
        """
        yield self.startRedis()
        _, base = self.startGolb(
            f"{{rate_limit: {{rate: 10/minute, burst: 5, store: '{self.redisURL}'}}}}")
        yield self.statuses(base, 3)
        [key] = yield self.redisCommand(b"KEYS", b"*")
        self.assertEqual(key, b"golb:ratelimit:global:client_ip:10/1m:5:s:127.0.0.1")
        ttl = yield self.redisCommand(b"PTTL", key)
        self.assertTrue(12000 < ttl <= 18000, ttl)

    @defer.inlineCallbacks
    def test_scriptFlushed(self):
        """
        When Redis forgets the script (C{SCRIPT FLUSH}, a restart, a
        failover), the next check sends it again and counting goes on.
        """
        yield self.startRedis()
        _, base = self.startGolb(
            f"{{rate_limit: {{rate: 10/minute, burst: 4, store: '{self.redisURL}'}}}}")
        self.assertEqual((yield self.statuses(base, 2)), [200, 200])
        self.assertEqual((yield self.redisCommand(b"SCRIPT", b"FLUSH")), b"OK")
        self.assertEqual((yield self.statuses(base, 3)), [200, 200, 429])

    @defer.inlineCallbacks
    def test_downOpen(self):
        """
        With C{on_store_error: open} and Redis unreachable, requests pass,
        each golb limiting them with a local bucket of the same size
        meanwhile; the outage is logged once, not per request.
        """
        events = self.logEvents()
        _, base = self.startGolb(
            f"{{rate_limit: {{rate: 10/minute, burst: 4, store: '{self.redisURL}',"
            f" on_store_error: open}}}}")
        self.assertEqual((yield self.statuses(base, 6)), [200] * 4 + [429] * 2)
        warnings = [e for e in events if "is unavailable" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)

    @defer.inlineCallbacks
    def test_downClosed(self):
        """
        With C{on_store_error: closed} and Redis unreachable, every request
        is refused with 429 and a message naming the store.
        """
        _, base = self.startGolb(
            f"{{rate_limit: {{rate: 10/minute, burst: 4, store: '{self.redisURL}',"
            f" on_store_error: closed}}}}")
        code, headers, body = yield self.status(base)
        self.assertEqual(code, 429)
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertIn(b"rate-limit store is unavailable", body)
        self.assertEqual((yield self.statuses(base, 3)), [429] * 3)

    @defer.inlineCallbacks
    def test_backAgain(self):
        """
        When Redis goes away the local fallback takes over, and when it
        comes back golb reconnects by itself and the shared limit applies
        again.
        """
        events = self.logEvents()
        yield self.startRedis()
        golb, base = self.startGolb(
            f"{{rate_limit: {{rate: 10/minute, burst: 3, store: '{self.redisURL}'}}}}")
        self.assertEqual((yield self.statuses(base, 4)), [200] * 3 + [429])
        yield self.stopRedis(self.redis)
        self.assertEqual((yield self.statuses(base, 4)), [200] * 3 + [429])
        yield self.startRedis()
        codes = []
        deadline = reactor.seconds() + 10
        while 200 not in codes:
            self.assertLess(reactor.seconds(), deadline, "golb did not reconnect to Redis")
            codes = yield self.statuses(base, 1)
            if 200 not in codes:
                yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((yield self.statuses(base, 3)), [200, 200, 429])
        store = golb.runtime.router.default.chain.policies[0].store
        self.assertTrue(store.available)
        texts = [e["log_format"] for e in events if "rate_limit store" in e.get("log_format", "")]
        self.assertEqual(len(texts), 2)

    @defer.inlineCallbacks
    def test_closedWithGolb(self):
        """
        The store's connection closes when the policy leaves the
        configuration (and when golb closes).
        """
        yield self.startRedis()
        golb, base = self.startGolb(
            f"{{rate_limit: {{rate: 10/minute, store: '{self.redisURL}'}}}}")
        yield self.statuses(base, 1)
        store = golb.runtime.router.default.chain.policies[0].store
        self.assertTrue(store.client.connected)
        golb.reload(parseConfig(self.yaml("{max_body: 1KiB}"), "test.yaml"))
        self.assertFalse(store.client.connected)
        clients = yield self.redisCommand(b"CLIENT", b"LIST")
        deadline = reactor.seconds() + 5
        while clients.count(b"\n") > 1 and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.02, lambda: None)
            clients = yield self.redisCommand(b"CLIENT", b"LIST")
        self.assertEqual(clients.count(b"cmd=client"), 1, clients)
        self.assertEqual(clients.count(b"\n"), 1, clients)
