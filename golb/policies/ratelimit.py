"""
C{rate_limit}: a token bucket per client IP, header value or route; 429
with C{Retry-After} beyond it.

Buckets hold C{burst} tokens and refill at C{rate}; each request takes one.
They are kept in the GCRA form: one number per key, the time at which the
bucket will be full again (its "theoretical arrival time", in integer
microseconds so that counting is exact).  A key whose time has passed is a
full bucket, the same as a key never seen, so it can be forgotten: the local
table drops such keys as new ones arrive and never holds more than
L{TokenBuckets.maxKeys} keys (least recently used out first).

With C{store: redis://...} the buckets live in Redis and are shared by every
golb using that Redis (L{golb.policies._redisstore}).

Responses carry the RateLimit header fields of
draft-ietf-httpapi-ratelimit-headers-06: C{RateLimit-Limit} (the burst),
C{RateLimit-Remaining} (requests that would be admitted right now),
C{RateLimit-Reset} (seconds until the bucket is full again) and
C{RateLimit-Policy} (C{COUNT;w=SECONDS}, with C{;burst=N} when the burst
differs from the count).  A refusal adds C{Retry-After}: whole seconds,
rounded up, until the next request would be admitted.
"""

import functools
import hashlib
import ipaddress
import math
from typing import Dict, Hashable

from golb.errors import GolbError
from golb.policies import Policy

__all__ = ["RateLimit", "TokenBuckets", "bucketKeyFunction", "clientKey"]

_MICRO = 1000000
_LIMIT = b"RateLimit-Limit"
_REMAINING = b"RateLimit-Remaining"
_RESET = b"RateLimit-Reset"
_POLICY = b"RateLimit-Policy"
_RETRY_AFTER = b"Retry-After"
_MAX_KEY_BYTES = 64


class TokenBuckets:
    """
    Token buckets by key, in this process's memory.

    @ivar interval: microseconds per token (one token comes back each
        C{interval}).
    @ivar capacity: the bucket's size in microseconds: C{burst * interval}.
    @ivar maxKeys: the most keys kept at once; beyond it the least recently
        used key is forgotten (it starts afresh, full, if it comes back).
    @ivar seconds: the clock, a callable returning seconds as a float.
    """

    maxKeys = 100000
    _sweep = 4

    def __init__(self, interval: int, burst: int, seconds):
        """
        @param interval: microseconds per token.
        @param burst: tokens in a full bucket.
        @param seconds: the clock (C{reactor.seconds}).
        """
        self.interval = interval
        self.capacity = burst * interval
        self.seconds = seconds
        self._tats: Dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._tats)

    def take(self, key: Hashable) -> int:
        """
        Take one token from C{key}'s bucket if it has one.

        @return: the excess in microseconds: C{<= 0} when the request is
            admitted (then C{-excess // interval} tokens are left and the
            bucket is full again in C{excess + capacity}), C{> 0} when it is
            refused (then a token is back in C{excess} microseconds and the
            bucket is full in C{excess + capacity - interval}).
        """
        now = int(self.seconds() * _MICRO + 0.5)
        tats = self._tats
        tat = tats.pop(key, None)
        if tat is None:
            self._forget(now)
            tat = now
        elif tat < now:
            tat = now
        new = tat + self.interval
        excess = new - now - self.capacity
        tats[key] = new if excess <= 0 else tat
        return excess

    def _forget(self, now: int) -> None:
        """
        Make room for a new key: drop a few of the least recently used keys
        whose buckets are full again, and the least recently used one
        whatever its state when the table is at L{maxKeys}.
        """
        tats = self._tats
        for _ in range(self._sweep):
            if not tats:
                return
            oldest = next(iter(tats))
            if tats[oldest] > now and len(tats) < self.maxKeys:
                return
            del tats[oldest]
        while len(tats) >= self.maxKeys:
            del tats[next(iter(tats))]


def _longKey(value: bytes):
    if len(value) > _MAX_KEY_BYTES:
        return ("sha256", hashlib.sha256(value).digest())
    return value


@functools.lru_cache(maxsize=4096)
def _ipv6Network(address: str) -> str:
    try:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    except ValueError:
        return address


def clientKey(request, context) -> str:
    """
    The client's bucket key: its IP address as text (see
    L{golb.listener.GolbRequest.clientAddress}); for IPv6, its /64 network,
    since one subscriber usually holds a whole /64 and could otherwise take
    a fresh bucket with every address in it.
    """
    address = request.clientAddress()
    if ":" in address:
        return _ipv6Network(address)
    return address


def bucketKeyFunction(key: str):
    """
    The function that gives a request's bucket key for the C{key} setting.

    @param key: C{client_ip}, C{route} or C{header:NAME}.
    @return: a callable C{(request, context) -> key}: the client IP as text
        (L{clientKey}); the route's name as text; the header's value as bytes
        (all its values joined by commas, replaced by a C{("sha256",
        digest)} tuple beyond 64 bytes), or the client key when the request
        lacks the header.
    """
    if key == "client_ip":
        return clientKey
    if key == "route":
        return lambda request, context: context.route
    name = key.partition(":")[2].lower().encode("ascii")

    def headerKey(request, context):
        values = request.requestHeaders.getRawHeaders(name)
        if not values:
            return clientKey(request, context)
        return _longKey(values[0] if len(values) == 1 else b",".join(values))

    return headerKey


def _ceilSeconds(microseconds: int) -> int:
    return -(-microseconds // _MICRO)


class RateLimit(Policy):
    """
    Admit at most C{burst} requests at once and C{rate} in the long run per
    key; answer 429 with C{Retry-After} beyond that.

    @ivar buckets: the local L{TokenBuckets} (with a shared store, those
        used while the store is unavailable and the policy fails open).
    @ivar store: the shared L{golb.policies._redisstore.RedisBuckets}, or
        L{None} for C{store: local}.
    """

    def __init__(self, config, env):
        Policy.__init__(self, config, env)
        rate = config.rate
        burst = config.burst or rate.count
        self.interval = interval = max(1, round(rate.period * _MICRO / rate.count))
        self.capacity = burst * interval
        self.keyOf = bucketKeyFunction(config.key)
        self.failOpen = config.on_store_error != "closed"
        seconds = env.reactor.seconds
        if config.store == "local":
            self.buckets = env.keep(("rate_limit", config),
                                    lambda: TokenBuckets(interval, burst, seconds))
            self.store = None
        else:
            self.store = env.keep(("rate_limit", config),
                                  lambda: _redisBuckets(config, env, interval, burst))
            self.buckets = self.store.fallback
        window = rate.period
        policy = b"%d;w=%d" % (rate.count, math.ceil(window))
        if burst != rate.count:
            policy += b";burst=%d" % (burst,)
        self._limitValue = [b"%d" % (burst,)]
        self._policyValue = [policy]
        self._message = f"Too many requests: the limit is {rate} with bursts of {burst}"

    def onRequest(self, request, context):
        key = self.keyOf(request, context)
        if self.store is None:
            return self._decide(self.buckets.take(key), request)
        d = self.store.take(key)
        d.addCallbacks(self._decide, self._storeFailed, callbackArgs=(request,),
                       errbackArgs=(request, key))
        return d

    def _decide(self, excess: int, request):
        if excess > 0:
            return self._refuse(excess, request)
        remaining = -excess // self.interval
        headers = request.responseHeaders
        previous = headers.getRawHeaders(_REMAINING)
        if previous is not None:
            # another rate_limit of this chain passed it too: show the
            # tighter of the two
            try:
                if int(previous[0]) <= remaining:
                    return None
            except ValueError:
                pass
        headers.setRawHeaders(_LIMIT, self._limitValue)
        headers.setRawHeaders(_REMAINING, [b"%d" % (remaining,)])
        headers.setRawHeaders(_RESET, [b"%d" % (_ceilSeconds(excess + self.capacity),)])
        headers.setRawHeaders(_POLICY, self._policyValue)
        return None

    def _refuse(self, excess: int, request) -> GolbError:
        retryAfter = _ceilSeconds(excess)
        reset = _ceilSeconds(excess + self.capacity - self.interval)
        headers = request.responseHeaders
        for name in (_LIMIT, _REMAINING, _RESET, _POLICY):
            headers.removeHeader(name)
        return GolbError(
            "rate-limited",
            f"{self._message}; retry in {retryAfter}s.",
            headers=[
                (_RETRY_AFTER, b"%d" % (retryAfter,)),
                (_LIMIT, self._limitValue[0]),
                (_REMAINING, b"0"),
                (_RESET, b"%d" % (reset,)),
                (_POLICY, self._policyValue[0]),
            ],
        )

    def _storeFailed(self, reason, request, key):
        if self.failOpen:
            return self._decide(self.buckets.take(key), request)
        return GolbError(
            "rate-limited",
            "The rate-limit store is unavailable; retry shortly.",
            headers=[(_RETRY_AFTER, b"1")],
        )


def _redisBuckets(config, env, interval: int, burst: int):
    from golb.policies._redisstore import RedisBuckets, RedisClient

    client = RedisClient(env.reactor, config.store)
    prefix = f"golb:ratelimit:{env.scope}:{config.key}:{config.rate}:{burst}:".encode("utf-8")
    fallback = TokenBuckets(interval, burst, env.reactor.seconds)
    if config.on_store_error == "closed":
        meanwhile = "requests are refused (on_store_error: closed)"
    else:
        meanwhile = "each golb limits requests by itself (on_store_error: open)"
    return RedisBuckets(client, interval, interval * burst, prefix, fallback, meanwhile)
