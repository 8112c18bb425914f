"""
The shared store of C{rate_limit}: token buckets kept in Redis, so that
every golb instance pointed at the same Redis counts against the same limit.

A small Redis client lives here too (RESP2 over a Twisted protocol): golb
needs four commands (C{EVALSHA}, C{EVAL}, C{AUTH}, C{SELECT}), and a client
of its own takes the injected reactor (so its timers and reconnection are
testable with L{twisted.internet.task.Clock}), bounds every call with a
timeout, fails at once while the server is known to be down instead of
queueing, and verifies the server's certificate for C{rediss://}.

Each check runs one Lua script atomically in Redis (L{BUCKET_SCRIPT}): a
token bucket in its GCRA form (one number per key, the "theoretical arrival
time"), timed by the Redis server's own C{TIME} so that the instances'
clocks do not matter, and stored with a C{PX} expiry at the moment the bucket
would be full again, so that Redis forgets idle keys by itself.
"""

import hashlib
from collections import deque
from typing import Deque, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

__all__ = [
    "BUCKET_SCRIPT",
    "RedisBuckets",
    "RedisClient",
    "RedisError",
    "RedisProtocol",
    "ReplyParser",
    "StoreUnavailable",
    "encodeCommand",
]


class RedisError(Exception):
    """
    An error reply from the Redis server; C{str()} is its text
    (C{"NOSCRIPT No matching script..."}).
    """


class StoreUnavailable(Exception):
    """
    The store could not be asked: not connected, no answer in time, or an
    error reply.  C{str()} says why.
    """


class ProtocolError(ValueError):
    """
    The server sent something that is not RESP.
    """


def encodeCommand(args) -> bytes:
    """
    Encode one command as a RESP array of bulk strings.

    @param args: the command name and its arguments: bytes, text (UTF-8) or
        integers.
    """
    parts = [b"*%d\r\n" % (len(args),)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % (arg,)
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


_INCOMPLETE = object()
_MAX_BULK = 64 * 1024 * 1024


class ReplyParser:
    """
    An incremental RESP2 reply parser.

    Simple strings and bulk strings become bytes, integers ints, nil
    L{None}, arrays lists, and error replies L{RedisError} instances (in the
    list of replies, not raised).
    """

    def __init__(self):
        self._buffer = b""

    def feed(self, data: bytes) -> list:
        """
        Add received bytes.

        @return: the replies completed by them, in order.
        @raise ProtocolError: if the data is not RESP.
        """
        buffer = self._buffer + data if self._buffer else data
        replies = []
        position = 0
        while position < len(buffer):
            reply, end = self._parse(buffer, position)
            if reply is _INCOMPLETE:
                break
            replies.append(reply)
            position = end
        self._buffer = buffer[position:]
        return replies

    def _parse(self, buffer: bytes, position: int):
        end = buffer.find(b"\r\n", position)
        if end < 0:
            if len(buffer) - position > 65536:
                raise ProtocolError("a reply line longer than 64KiB")
            return _INCOMPLETE, position
        kind = buffer[position:position + 1]
        line = buffer[position + 1:end]
        after = end + 2
        if kind == b"+":
            return line, after
        if kind == b"-":
            return RedisError(line.decode("utf-8", "replace")), after
        try:
            number = int(line)
        except ValueError:
            raise ProtocolError(f"not a RESP reply: {buffer[position:end][:80]!r}") from None
        if kind == b":":
            return number, after
        if kind == b"$":
            if number < 0:
                return None, after
            if number > _MAX_BULK:
                raise ProtocolError(f"a bulk reply of {number} bytes")
            if len(buffer) < after + number + 2:
                return _INCOMPLETE, position
            return buffer[after:after + number], after + number + 2
        if kind == b"*":
            if number < 0:
                return None, after
            items = []
            for _ in range(number):
                item, after = self._parse(buffer, after)
                if item is _INCOMPLETE:
                    return _INCOMPLETE, position
                items.append(item)
            return items, after
        raise ProtocolError(f"not a RESP reply: {buffer[position:end][:80]!r}")


class RedisProtocol(Protocol):
    """
    One connection to Redis: commands are pipelined, replies matched to them
    in order.
    """

    log = Logger()

    def __init__(self):
        self._parser = ReplyParser()
        self._waiting: Deque[Deferred] = deque()
        self._lostWaiters: List[Deferred] = []
        self.connected = False

    def connectionMade(self):
        self.connected = True

    def execute(self, *args) -> Deferred:
        """
        Send one command.

        @return: a L{Deferred} firing with its reply, or failing with
            L{RedisError} (an error reply) or L{StoreUnavailable} (the
            connection was lost first).
        """
        d = Deferred()
        self._waiting.append(d)
        self.transport.write(encodeCommand(args))
        return d

    def dataReceived(self, data: bytes):
        try:
            replies = self._parser.feed(data)
        except ProtocolError as e:
            self.log.error("Redis sent garbage, closing the connection: {error}", error=e)
            self.transport.abortConnection()
            return
        for reply in replies:
            if not self._waiting:
                self.log.error("Redis sent a reply nobody asked for; closing the connection")
                self.transport.abortConnection()
                return
            d = self._waiting.popleft()
            if isinstance(reply, RedisError):
                d.errback(reply)
            else:
                d.callback(reply)

    def whenLost(self) -> Deferred:
        """
        @return: a L{Deferred} firing when the connection is closed.
        """
        if not self.connected and self.transport is not None:
            return succeed(None)
        d = Deferred()
        self._lostWaiters.append(d)
        return d

    def connectionLost(self, reason=None):
        self.connected = False
        message = reason.getErrorMessage() if reason is not None else "closed"
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(StoreUnavailable(f"connection to Redis lost: {message}"))
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)


def parseRedisURL(url: str):
    """
    Split a C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]} or C{rediss://}
    URL.

    @return: C{(host, port, db, username, password, tls)}.
    """
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    path = parts.path.strip("/")
    db = int(path) if path.isdigit() else 0
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return host, port, db, username, password, parts.scheme == "rediss"


class RedisClient:
    """
    A client for one Redis server that connects when first needed and
    reconnects by itself.

    @ivar url: the server's URL without credentials (for messages).

    Every call is bounded by C{timeout} seconds, connecting included.  After
    a failed connection attempt, calls fail at once (no waiting) until the
    next attempt is due: C{minRetryDelay} seconds later, doubling up to
    C{maxRetryDelay} while the server stays away.  A call that gets no answer
    in time drops the connection (a server that does not answer is treated
    as gone).

    @ivar connected: whether a connection is ready now.
    """

    log = Logger()
    minRetryDelay = 0.1
    maxRetryDelay = 2.0

    def __init__(self, reactor, url: str, timeout: float = 1.0, endpoint=None):
        """
        @param url: the C{redis://} or C{rediss://} URL.
        @param timeout: seconds allowed for each call.
        @param endpoint: an C{IStreamClientEndpoint} to use instead of the
            URL's host and port (for tests).
        """
        self._reactor = reactor
        self.timeout = timeout
        host, port, self._db, self._username, self._password, tls = parseRedisURL(url)
        scheme = "rediss" if tls else "redis"
        hostText = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{hostText}:{port}/{self._db}"
        if endpoint is None:
            from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

            endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
            if tls:
                from twisted.internet.ssl import optionsForClientTLS

                endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        self._endpoint = endpoint
        self._protocol: Optional[RedisProtocol] = None
        self._connecting: Optional[Deferred] = None
        self._pending: List[Tuple[Deferred, tuple]] = []
        self._retryAt = 0.0
        self._retryDelay = 0.0
        self._lastError = "not connected yet"
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def execute(self, *args) -> Deferred:
        """
        Run one command.

        @return: a L{Deferred} firing with the reply, or failing with
            L{RedisError} for an error reply and L{StoreUnavailable} when the
            server cannot be reached or does not answer in time.
        """
        if self._closed:
            return fail(StoreUnavailable("the Redis client is closed"))
        protocol = self._protocol
        if protocol is not None:
            d = protocol.execute(*args)
        else:
            if self._connecting is None:
                if self._reactor.seconds() < self._retryAt:
                    return fail(StoreUnavailable(self._lastError))
                self._connect()
                if self._protocol is not None:
                    return self.execute(*args)
                if self._connecting is None:
                    return fail(StoreUnavailable(self._lastError))
            d = Deferred()
            self._pending.append((d, args))
        return d.addTimeout(self.timeout, self._reactor, self._timedOut)

    def _timedOut(self, result, timeout):
        self._lastError = f"Redis did not answer within {timeout:g}s"
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()
        raise StoreUnavailable(self._lastError)

    def _connect(self) -> None:
        attempt = self._connecting = self._endpoint.connect(Factory.forProtocol(RedisProtocol))
        attempt.addCallback(self._handshake)
        attempt.addTimeout(self.timeout, self._reactor)
        attempt.addCallbacks(self._ready, self._failed)
        attempt.addErrback(lambda f: self.log.failure("connecting to {url}", f, url=self.url))

    def _handshake(self, protocol: RedisProtocol):
        d = succeed(None)
        if self._password is not None:
            if self._username is not None:
                command = (b"AUTH", self._username, self._password)
            else:
                command = (b"AUTH", self._password)
            d.addCallback(lambda _: protocol.execute(*command))
        if self._db:
            d.addCallback(lambda _: protocol.execute(b"SELECT", self._db))

        def failed(reason):
            if protocol.transport is not None:
                protocol.transport.abortConnection()
            return reason

        d.addCallbacks(lambda _: protocol, failed)
        return d

    def _ready(self, protocol: RedisProtocol) -> None:
        self._connecting = None
        if self._closed or not protocol.connected:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            self._failPending(StoreUnavailable("the Redis client is closed"))
            return
        self._protocol = protocol
        self._retryDelay = 0.0
        protocol.whenLost().addCallback(self._lost, protocol)
        pending, self._pending = self._pending, []
        for d, args in pending:
            if not d.called:
                protocol.execute(*args).chainDeferred(d)

    def _failed(self, reason) -> None:
        self._connecting = None
        if reason.check(CancelledError, TimeoutError):
            self._lastError = f"connecting to Redis took more than {self.timeout:g}s"
        else:
            self._lastError = f"cannot connect to Redis: {reason.getErrorMessage()}"
        self._retryDelay = min(max(self._retryDelay * 2, self.minRetryDelay), self.maxRetryDelay)
        self._retryAt = self._reactor.seconds() + self._retryDelay
        self._failPending(StoreUnavailable(self._lastError))

    def _failPending(self, error: Exception) -> None:
        pending, self._pending = self._pending, []
        for d, _args in pending:
            if not d.called:
                d.errback(error)

    def _lost(self, _, protocol: RedisProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self._lastError = "the connection to Redis was lost"

    def close(self) -> Deferred:
        """
        Close the connection and stop reconnecting.

        @return: a L{Deferred} firing once the connection is closed.
        """
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self._failPending(StoreUnavailable("the Redis client is closed"))
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.transport is None:
            return succeed(None)
        lost = protocol.whenLost()
        protocol.transport.loseConnection()
        return lost


# KEYS[1]: the bucket; ARGV[1]: microseconds per token; ARGV[2]: the
# bucket's capacity in microseconds (burst * interval).
# Returns the excess in microseconds: <= 0 admitted (-excess // interval
# tokens are left), > 0 refused (a token is back in excess microseconds).
BUCKET_SCRIPT = b"""\
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new = tat + interval
local excess = new - now - capacity
if excess <= 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', new),
             'PX', string.format('%.0f', math.ceil((new - now) / 1000)))
end
return excess
"""
BUCKET_SHA = hashlib.sha1(BUCKET_SCRIPT).hexdigest().encode("ascii")


class RedisBuckets:
    """
    Token buckets kept in Redis and shared by every golb that uses the same
    URL and prefix.

    @ivar client: the L{RedisClient}.
    @ivar fallback: the local L{golb.policies.ratelimit.TokenBuckets} used
        while Redis is unavailable and the policy fails open.
    @ivar available: L{False} from the first failure of an outage until
        Redis answers again.
    """

    log = Logger()

    def __init__(self, client: RedisClient, interval: int, capacity: int, prefix: bytes,
                 fallback=None, meanwhile: str = "requests are refused"):
        """
        @param interval: microseconds per token.
        @param capacity: the bucket's size in microseconds (burst times
            C{interval}).
        @param prefix: prepended to every Redis key.
        @param meanwhile: what happens to requests during an outage, for
            the log.
        """
        self.client = client
        self.fallback = fallback
        self._meanwhile = meanwhile
        self.available = True
        self._args = (b"%d" % (interval,), b"%d" % (capacity,))
        self._prefix = prefix

    def redisKey(self, key) -> bytes:
        """
        The Redis key of a bucket key (text, bytes or a C{(kind, digest)}
        tuple, see L{golb.policies.ratelimit}).
        """
        if isinstance(key, str):
            return self._prefix + b"s:" + key.encode("utf-8", "surrogateescape")
        if isinstance(key, bytes):
            return self._prefix + b"b:" + key
        return self._prefix + b"d:" + key[1].hex().encode("ascii")

    def take(self, key) -> Deferred:
        """
        Take a token from C{key}'s bucket, in Redis.

        @return: a L{Deferred} firing with the excess in microseconds (see
            L{BUCKET_SCRIPT}), or failing with L{StoreUnavailable}.
        """
        redisKey = self.redisKey(key)
        interval, capacity = self._args
        d = self.client.execute(b"EVALSHA", BUCKET_SHA, b"1", redisKey, interval, capacity)
        d.addErrback(self._noScript, redisKey)
        d.addCallbacks(self._answered, self._failed)
        return d

    def _noScript(self, reason, redisKey: bytes):
        if reason.check(RedisError) and str(reason.value).startswith("NOSCRIPT"):
            interval, capacity = self._args
            return self.client.execute(b"EVAL", BUCKET_SCRIPT, b"1", redisKey, interval, capacity)
        return reason

    def _answered(self, excess):
        if not isinstance(excess, int):
            raise StoreUnavailable(f"the rate-limit script answered {excess!r}")
        if not self.available:
            self.available = True
            self.log.info("rate_limit store {url} answers again; shared limits apply",
                          url=self.client.url)
        return excess

    def _failed(self, reason):
        if reason.check(RedisError):
            error = StoreUnavailable(f"Redis answered: {reason.value}")
        elif reason.check(StoreUnavailable):
            error = reason.value
        else:
            error = StoreUnavailable(reason.getErrorMessage())
        if self.available:
            self.available = False
            self.log.warn("rate_limit store {url} is unavailable ({error}); {meanwhile}"
                          " until it answers again", url=self.client.url, error=error,
                          meanwhile=self._meanwhile)
        raise error

    def close(self) -> Deferred:
        """
        Close the connection to Redis.
        """
        return self.client.close()
