"""
Pool members from DNS SRV records (twisted.names), refreshed periodically.

A pool configured with C{discovery} instead of C{backends} gets its members
from an SRV name, such as the one a Kubernetes headless Service publishes.
L{SRVDiscovery} turns one SRV answer into a L{golb.pool.Members};
L{DiscoveryService} asks again every C{refresh} and hands changes to
L{golb.app.Golb.setMembers}, keeping the last good set when a lookup fails.

How SRV records map to backends (see also C{docs/discovery.md}):
  - the lowest priority present is the primaries; every higher priority is
    C{backup: true};
  - SRV weights become golb weights with L{golbWeights}, per priority;
  - each target name is resolved to the IP golb connects to (A records, else
    AAAA), taken from the answer's additional section when it is there; the
    name itself stays the backend's host (C{Host} header, TLS name);
  - a target of C{.} ("no service here") is ignored.
"""

import ipaddress
import math
import re
import socket
from functools import reduce
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names import error as dnserror
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from golb._configpools import BackendConfig, splitBackendURL
from golb._units import Address, UnitError, formatDuration
from golb.pool import Members

__all__ = [
    "LOOKUP_TIMEOUT",
    "DiscoveryError",
    "DiscoveryService",
    "IDiscovery",
    "SRVDiscovery",
    "golbWeights",
    "lookupTimeout",
    "systemNameservers",
]

LOOKUP_TIMEOUT = 10.0
MAX_WEIGHT = 256
RESOLV_CONF = "/etc/resolv.conf"
_HOST_NAME = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")


class IDiscovery(Interface):
    """
    A source of pool members.
    """

    def members() -> Deferred:
        """
        Look the members up now.

        @return: a L{Deferred} firing with a L{golb.pool.Members}, or failing
            (L{DiscoveryError} when the source answered badly or not at all).
            Cancelling it abandons the lookup.
        """


class DiscoveryError(Exception):
    """
    A discovery lookup gave no usable answer; C{str()} says why, for people.
    """


def golbWeights(srvWeights: Sequence[int]) -> List[int]:
    """
    Map the SRV weights of one priority level (0..65535) to golb weights
    (1..256), keeping their ratios.

      - all equal (including all 0): 1 each;
      - otherwise the weights are scaled down so the largest is 256 when
        any is above 256, a 0 becomes 1 (the smallest share, as RFC 2782
        asks: "a very small chance"), and all are divided by their greatest
        common divisor: C{33, 33, 34} stays, C{10, 20} is C{1, 2},
        C{60000, 30000, 0} is C{256, 128, 1}.
    """
    weights = list(srvWeights)
    if not weights or len(set(weights)) == 1:
        return [1] * len(weights)
    top = max(weights)
    if top > MAX_WEIGHT:
        weights = [int(round(weight * MAX_WEIGHT / top)) for weight in weights]
    weights = [max(1, weight) for weight in weights]
    divisor = reduce(math.gcd, weights)
    return [weight // divisor for weight in weights]


def systemNameservers(path: str = RESOLV_CONF) -> List[Tuple[str, int]]:
    """
    The nameservers of a C{resolv.conf(5)} file, as C{(address, 53)}; like
    the C library, C{127.0.0.1} when it names none or cannot be read.
    """
    servers = []
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == b"nameserver":
            servers.append((words[1].decode("ascii", "replace"), dns.PORT))
    return servers or [("127.0.0.1", dns.PORT)]


def _hostName(name) -> str:
    """
    A DNS name (L{dns.Name}, bytes or str) as lower-case text without the
    trailing dot.
    """
    if isinstance(name, dns.Name):
        name = name.name
    if isinstance(name, bytes):
        name = name.decode("ascii")
    return name.rstrip(".").lower()


def _ipLiteral(text: str) -> Optional[str]:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _addressOf(record) -> Optional[str]:
    """
    The IP address of an A or AAAA resource record, else L{None}.
    """
    if record.type == dns.A:
        return record.payload.dottedQuad()
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, record.payload.address)
    return None


def _describeDNSFailure(reason: Failure, servers: str) -> str:
    """
    Words for why a DNS query failed.
    """
    if reason.check(dnserror.DNSServerError):
        return f"SERVFAIL from {servers}"
    if reason.check(dnserror.DNSQueryRefusedError):
        return f"REFUSED by {servers}"
    if reason.check(dnserror.DNSFormatError):
        return f"FORMERR from {servers}"
    if reason.check(dnserror.DNSNotImplementedError):
        return f"NOTIMP from {servers}"
    if reason.check(dnserror.DNSUnknownError):
        return f"an unknown error code from {servers}"
    if reason.check(dnserror.DNSNameError, dnserror.DomainError,
                    dnserror.AuthoritativeDomainError):
        return "NXDOMAIN: no such name"
    if reason.check(defer.TimeoutError, dnserror.DNSQueryTimeoutError):
        return f"no answer from {servers}"
    return f"{reason.type.__name__}: {reason.getErrorMessage()}"


@attr.s(frozen=True, auto_attribs=True)
class _Target:
    """
    One usable SRV record.
    """

    host: str
    port: int
    priority: int
    weight: int


@implementer(IDiscovery)
class SRVDiscovery:
    """
    Members from one DNS SRV name (a L{golb.config.DiscoveryConfig}).

    A target whose address lookup fails keeps the address it had at the
    previous successful lookup; a new one is left out until it resolves.

    @ivar config: the L{golb.config.DiscoveryConfig}.
    @ivar resolver: the L{twisted.internet.interfaces.IResolver} used for
        the SRV query and for the targets' addresses.
    @ivar servers: the nameservers, for messages.
    @ivar queryTimeouts: per-query retransmission timeouts in seconds, passed
        to the resolver; the last one expiring fails the query.
    """

    log = Logger()
    queryTimeouts: Tuple[float, ...] = (1, 3)

    def __init__(self, config, reactor=None, resolver=None,
                 resolvConf: str = RESOLV_CONF):
        """
        @param resolver: an C{IResolver} to use; L{None}: a
            L{twisted.names.client.Resolver} on C{config.nameservers}, or on
            those of C{resolvConf} (read now) when that is L{None}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self._ownResolver = resolver is None
        if config.nameservers is not None:
            servers = [(address.host, address.port) for address in config.nameservers]
        elif resolver is None:
            servers = systemNameservers(resolvConf)
        else:
            servers = []
        if resolver is None:
            resolver = client.Resolver(
                servers=servers, timeout=self.queryTimeouts, reactor=reactor
            )
        self.resolver = resolver
        self.servers = ", ".join(
            str(Address(host, port)) for host, port in servers
        ) or "the nameservers"
        self._addresses: Dict[str, str] = {}

    def close(self) -> None:
        """
        Close the connections the resolver keeps (TCP, used for answers too
        big for UDP).  An injected resolver is left alone.
        """
        if not self._ownResolver:
            return
        for protocol in list(getattr(self.resolver, "connections", ())):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.loseConnection()

    @defer.inlineCallbacks
    def members(self):
        """
        Query the SRV name, then the address of every target the answer does
        not resolve itself.

        @return: a L{Deferred} firing with the L{Members} in order (primaries
            then backups, each by name), or failing with L{DiscoveryError}.
        """
        name = self.config.dns_srv
        try:
            answers, _authority, additional = yield self.resolver.lookupService(
                name, timeout=self.queryTimeouts
            )
        except CancelledError:
            raise
        except Exception:
            reason = _describeDNSFailure(Failure(), self.servers)
            raise DiscoveryError(reason) from None
        targets = self._targets(answers)
        known: Dict[str, List[str]] = {}
        for record in additional:
            address = _addressOf(record)
            if address is not None:
                try:
                    host = _hostName(record.name)
                except UnicodeDecodeError:
                    continue
                known.setdefault(host, []).append(address)
        addresses = yield self._resolve(
            sorted({target.host for target in targets}), known
        )
        return self._members(targets, addresses)

    def _targets(self, answers) -> List[_Target]:
        """
        The usable SRV records of an answer, one per (host, port): the one
        with the lowest priority, then the highest weight.

        @raise DiscoveryError: when there are none.
        """
        records = [record for record in answers if record.type == dns.SRV]
        if not records:
            raise DiscoveryError("no SRV records in the answer")
        byKey: Dict[Tuple[str, int], _Target] = {}
        for record in records:
            payload = record.payload
            try:
                host = _hostName(payload.target)
            except UnicodeDecodeError:
                host = None
            if host == "":
                continue
            if host is None or not (_HOST_NAME.match(host) or _ipLiteral(host)):
                self.log.warn("{srv}: ignoring SRV target {target!r}: not a host name",
                              srv=self.config.dns_srv, target=payload.target.name)
                continue
            target = _Target(host, payload.port, payload.priority, payload.weight)
            current = byKey.get((host, payload.port))
            if current is None or (target.priority, -target.weight) < (
                current.priority, -current.weight
            ):
                byKey[(host, payload.port)] = target
        if not byKey:
            raise DiscoveryError(
                "the SRV records say the service is not available here (target '.')"
            )
        return list(byKey.values())

    @defer.inlineCallbacks
    def _resolve(self, hosts: List[str], known: Dict[str, List[str]]):
        """
        The address of each host: an IP literal itself, else from C{known}
        (the additional section), else looked up; on failure its previous
        address, else none.

        @return: a L{Deferred} firing with a C{{host: address}}; hosts with
            no address are missing.
        """
        addresses: Dict[str, str] = {}
        lookups = []
        for host in hosts:
            literal = _ipLiteral(host)
            if literal is not None:
                addresses[host] = literal
            elif host in known:
                addresses[host] = self._pick(known[host])
            else:
                lookups.append(host)
        results = yield defer.DeferredList(
            [self._lookupAddress(host) for host in lookups], consumeErrors=True
        )
        for host, (ok, result) in zip(lookups, results):
            if not ok:
                result.raiseException()  # only CancelledError gets here
            address, reason = result
            if address is not None:
                addresses[host] = address
            elif host in self._addresses:
                addresses[host] = self._addresses[host]
                self.log.warn(
                    "{srv}: address lookup of {host} failed ({reason}); keeping {address}",
                    srv=self.config.dns_srv, host=host, reason=reason,
                    address=addresses[host],
                )
            else:
                self.log.warn(
                    "{srv}: address lookup of {host} failed ({reason}); leaving it out",
                    srv=self.config.dns_srv, host=host, reason=reason,
                )
        self._addresses = {
            host: address for host, address in addresses.items() if _ipLiteral(host) is None
        }
        return addresses

    @staticmethod
    def _pick(addresses: List[str]) -> str:
        """
        One address out of several, the same each time: the lowest IPv4 one,
        else the lowest IPv6 one.
        """
        parsed = sorted(ipaddress.ip_address(address) for address in set(addresses))
        return str(parsed[0])

    @defer.inlineCallbacks
    def _lookupAddress(self, host: str):
        """
        Look up the A records of C{host}, else its AAAA records.

        @return: a L{Deferred} firing with C{(address, None)} or C{(None,
            reason)}; it fails only when cancelled.
        """
        reason = "no A or AAAA records"
        for lookup in (self.resolver.lookupAddress, self.resolver.lookupIPV6Address):
            try:
                answers, _authority, _additional = yield lookup(
                    host, timeout=self.queryTimeouts
                )
            except CancelledError:
                raise
            except Exception:
                return None, _describeDNSFailure(Failure(), self.servers)
            found = [address for address in map(_addressOf, answers) if address is not None]
            if found:
                return self._pick(found), None
        return None, reason

    def _members(self, targets: List[_Target], addresses: Dict[str, str]) -> Members:
        """
        The L{Members} for the targets that have an address.

        @raise DiscoveryError: when none has.
        """
        usable = [target for target in targets if target.host in addresses]
        if not usable:
            raise DiscoveryError(
                f"none of the {len(targets)} SRV targets could be resolved to an address"
            )
        lowest = min(target.priority for target in usable)
        weights: Dict[_Target, int] = {}
        for priority in sorted({target.priority for target in usable}):
            level = sorted(
                (target for target in usable if target.priority == priority),
                key=lambda target: (target.host, target.port),
            )
            weights.update(zip(level, golbWeights([target.weight for target in level])))
        backends = []
        found = {}
        scheme = self.config.scheme
        for target in sorted(
            usable, key=lambda target: (target.priority != lowest, target.host, target.port)
        ):
            location = str(Address(target.host, target.port))
            url = f"{scheme}://{location}"
            try:
                splitBackendURL(url)
            except UnitError as e:
                self.log.warn("{srv}: ignoring SRV target {target}: {error}",
                              srv=self.config.dns_srv, target=location, error=e)
                continue
            backends.append(BackendConfig(
                url=url,
                name=location,
                weight=weights[target],
                backup=target.priority != lowest,
            ))
            if _ipLiteral(target.host) is None:
                found[url] = addresses[target.host]
        if not backends:
            raise DiscoveryError("no SRV target makes a usable backend URL")
        return Members(backends, found)


def lookupTimeout(config) -> float:
    """
    How long one discovery lookup may take: its C{refresh}, but at least 1s
    and at most L{LOOKUP_TIMEOUT}.
    """
    return min(LOOKUP_TIMEOUT, max(1.0, config.refresh))


@attr.s(eq=False)
class _Watch:
    """
    The discovery of one pool (mutable).

    @ivar config: the pool's L{golb.config.DiscoveryConfig}.
    @ivar discovery: its L{IDiscovery}.
    @ivar loop: its refresh loop, while the service runs.
    @ivar lookup: the lookup in flight, if any.
    @ivar waiters: the L{Deferred}s of L{DiscoveryService.refresh} calls
        waiting for that lookup.
    """

    config: object = attr.ib()
    discovery: IDiscovery = attr.ib()
    loop: Optional[task.LoopingCall] = attr.ib(default=None)
    lookup: Optional[Deferred] = attr.ib(default=None)
    waiters: List[Deferred] = attr.ib(factory=list)
    stopped: bool = attr.ib(default=False)


def _changes(old: Optional[Members], new: Members, limit: int = 10) -> str:
    """
    A short description of how C{new} differs from C{old}: C{+name} added,
    C{-name} removed, C{~name} changed (weight, backup or address).
    """
    before = {} if old is None else {backend.name: backend for backend in old.backends}
    after = {backend.name: backend for backend in new.backends}
    oldAddresses = {} if old is None else old.addresses
    words = [f"+{name}" for name in after if name not in before]
    words += [f"-{name}" for name in sorted(before) if name not in after]
    words += [
        f"~{name}" for name, backend in after.items()
        if name in before and (
            backend != before[name]
            or new.addresses.get(backend.url) != oldAddresses.get(backend.url)
        )
    ]
    if len(words) > limit:
        words = words[:limit] + [f"and {len(words) - limit} more"]
    return " ".join(words)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


class DiscoveryService(service.Service):
    """
    Refreshes the members of every pool with C{discovery}, every C{refresh}
    seconds (the first time at start), following reloads: a new discovered
    pool gets a loop, a gone one loses it, one whose C{discovery} changed
    starts over.

    A lookup that fails or times out changes nothing: the pool keeps its last
    members and the failure is logged.  There is never more than one lookup
    per pool in flight.

    @ivar golb: the L{golb.app.Golb}.
    @ivar discoveryFactory: makes the L{IDiscovery} of a pool from its
        C{DiscoveryConfig} and the reactor (L{SRVDiscovery} by default).
    """

    name = "discovery"
    log = Logger()

    def __init__(self, golb, reactor=None,
                 discoveryFactory: Callable[..., IDiscovery] = SRVDiscovery):
        if reactor is None:
            from twisted.internet import reactor
        self.golb = golb
        self.reactor = reactor
        self.discoveryFactory = discoveryFactory
        self._watches: Dict[str, _Watch] = {}
        self._unobserve: Optional[Callable[[], None]] = None

    def startService(self) -> None:
        super().startService()
        self._unobserve = self.golb.observe(self.sync)
        self.sync()

    def stopService(self):
        super().stopService()
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        for poolName in list(self._watches):
            self._unwatch(poolName)

    def discoveredPools(self) -> Dict[str, object]:
        """
        The C{DiscoveryConfig} of every current pool that has one, by name.
        """
        return {
            name: pool.config.discovery
            for name, pool in self.golb.runtime.pools.items()
            if pool.config.discovery is not None
        }

    def sync(self) -> None:
        """
        Match the refresh loops to the current pools (called at start and
        after every reload or member change).
        """
        wanted = self.discoveredPools()
        for poolName in list(self._watches):
            if poolName not in wanted:
                self._unwatch(poolName)
        if not self.running:
            return
        for poolName in sorted(wanted):
            try:
                watch = self._watch(poolName)
            except Exception:
                self.log.failure("pool {pool}: cannot set up discovery", pool=poolName)
                continue
            if watch.loop is None:
                watch.loop = task.LoopingCall(self._tick, poolName)
                watch.loop.clock = self.reactor
                watch.loop.start(watch.config.refresh, now=True)

    def _watch(self, poolName: str) -> _Watch:
        """
        The L{_Watch} of a discovered pool, set up (again when its
        configuration changed) if needed.

        @raise KeyError: when there is no such discovered pool.
        """
        config = self.discoveredPools()[poolName]
        watch = self._watches.get(poolName)
        if watch is not None and watch.config != config:
            self._unwatch(poolName)
            watch = None
        if watch is None:
            watch = _Watch(config, self.discoveryFactory(config, self.reactor))
            self._watches[poolName] = watch
        return watch

    def _unwatch(self, poolName: str) -> None:
        """
        Stop the discovery of a pool: its loop, its lookup in flight, its
        resolver's connections.
        """
        watch = self._watches.pop(poolName)
        watch.stopped = True
        if watch.loop is not None and watch.loop.running:
            watch.loop.stop()
        if watch.lookup is not None:
            watch.lookup.cancel()
        close = getattr(watch.discovery, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                self.log.failure("pool {pool}: closing its discovery failed", pool=poolName)

    def refresh(self, poolName: str) -> Deferred:
        """
        Look the members of a discovered pool up now (or join the lookup in
        flight), and apply them if they changed.  Works whether or not the
        service is running.

        @return: a L{Deferred} firing with the L{Members} found, or failing
            with the reason (already logged; L{KeyError} for a pool without
            discovery).
        """
        try:
            watch = self._watch(poolName)
        except KeyError:
            return defer.fail(KeyError(f"pool {poolName!r} has no discovery"))
        except Exception:
            self.log.failure("pool {pool}: cannot set up discovery", pool=poolName)
            return defer.fail()

        def forget(waiter):
            if waiter in watch.waiters:
                watch.waiters.remove(waiter)

        waiter = Deferred(forget)
        watch.waiters.append(waiter)
        if watch.lookup is None:
            self._lookup(poolName, watch)
        return waiter

    def _tick(self, poolName: str) -> Optional[Deferred]:
        """
        The body of a pool's loop: never raises and never fails, so the loop
        goes on whatever a lookup does.
        """
        try:
            d = self.refresh(poolName)
        except Exception:
            self.log.failure("pool {pool}: discovery refresh failed", pool=poolName)
            return None
        return d.addErrback(lambda reason: None)

    def _lookup(self, poolName: str, watch: _Watch) -> None:
        """
        Start a lookup for C{watch}; its outcome goes to every waiter.
        """
        timeout = lookupTimeout(watch.config)
        d = watch.lookup = defer.maybeDeferred(watch.discovery.members)
        d.addTimeout(timeout, self.reactor)
        d.addCallback(self._found, poolName, watch)
        d.addErrback(self._failed, poolName, watch, timeout)

        def done(result):
            if watch.lookup is d:
                watch.lookup = None
            waiters, watch.waiters = watch.waiters, []
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        d.addBoth(done)

    def _found(self, members, poolName: str, watch: _Watch):
        """
        A lookup succeeded: apply its members if they changed.
        """
        if watch.stopped:
            raise CancelledError()
        if not isinstance(members, Members):
            raise TypeError(f"discovery gave {members!r}, not Members")
        previous = self.golb.members.get(poolName)
        if members != previous:
            self.golb.setMembers(poolName, members)
            self.log.info(
                "pool {pool}: discovered {count} via {srv}: {changes}",
                pool=poolName, count=_count(len(members.backends), "member"),
                srv=watch.config.dns_srv, changes=_changes(previous, members),
            )
        return members

    def _failed(self, reason: Failure, poolName: str, watch: _Watch, timeout: float):
        """
        A lookup failed (or applying it did): log why, keep the members.
        """
        if watch.stopped and reason.check(CancelledError):
            return reason
        previous = self.golb.members.get(poolName)
        if previous is None or not previous.backends:
            keeping = "the pool stays empty"
        else:
            keeping = "keeping the last " + _count(len(previous.backends), "member")
        if reason.check(DiscoveryError):
            why = reason.getErrorMessage()
        elif reason.check(defer.TimeoutError):
            why = f"no answer within {formatDuration(timeout)}"
        else:
            self.log.failure(
                "pool {pool}: discovery via {srv} raised; {keeping}", reason,
                pool=poolName, srv=watch.config.dns_srv, keeping=keeping,
            )
            return reason
        self.log.warn(
            "pool {pool}: DNS SRV lookup of {srv} failed ({why}); {keeping}",
            pool=poolName, srv=watch.config.dns_srv, why=why, keeping=keeping,
        )
        return reason
