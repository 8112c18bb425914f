"""
C{acl}: allow and deny lists of client networks.

The client is L{golb.listener.GolbRequest.clientAddress}: the peer, or the
address a trusted proxy reports in C{X-Forwarded-For} / C{Forwarded}
(C{trusted_proxies}); a header from anyone else is never believed.

Networks are compiled once into sorted, merged integer ranges per address
family, so that a lookup is one address parse and one binary search however
long the lists are (10,000 entries cost the same as 10).
"""

import ipaddress
from bisect import bisect_right
from socket import AF_INET, AF_INET6, inet_pton
from typing import Iterable, List, Optional, Tuple, Union

from golb._units import Network
from golb.errors import GolbError
from golb.policies import Policy

__all__ = ["Acl", "NetworkSet", "clientIP", "parseClientIP"]

_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# IPv6 addresses that carry an IPv4 address (::ffff:a.b.c.d)
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def clientIP(text: str) -> Optional[_IPAddress]:
    """
    Parse a client address as given by C{clientAddress()}; an IPv4-mapped
    IPv6 address (C{::ffff:10.0.0.1}) becomes the IPv4 address it carries.

    @return: the address, or L{None} when C{text} is not an IP address.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


def parseClientIP(text: str) -> Optional[Tuple[int, int]]:
    """
    Like L{clientIP}, but faster (C{inet_pton}), for the request path.

    @return: C{(version, address as an integer)}, or L{None} when C{text}
        is not an IP address.
    """
    try:
        return 4, int.from_bytes(inet_pton(AF_INET, text), "big")
    except (OSError, ValueError, TypeError):
        pass
    try:
        packed = inet_pton(AF_INET6, text)
    except (OSError, ValueError, TypeError):
        # what inet_pton does not take, such as a scope (fe80::1%eth0)
        address = clientIP(text)
        if address is None:
            return None
        return address.version, int(address)
    if packed[:12] == _MAPPED_PREFIX:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def _normalize(network: Network) -> Network:
    """
    An IPv6 network inside C{::ffff:0:0/96} as the IPv4 network it maps, so
    that it matches the IPv4 clients it was written for.
    """
    if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(_V4_MAPPED):
        return ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
        )
    return network


def _merge(ranges: List[Tuple[int, int]]) -> Tuple[List[int], List[int]]:
    """
    Sort and merge overlapping or adjacent inclusive C{(first, last)} ranges.

    @return: C{(firsts, lasts)}, both ascending, ranges disjoint.
    """
    firsts: List[int] = []
    lasts: List[int] = []
    for first, last in sorted(ranges):
        if lasts and first <= lasts[-1] + 1:
            if last > lasts[-1]:
                lasts[-1] = last
        else:
            firsts.append(first)
            lasts.append(last)
    return firsts, lasts


class NetworkSet:
    """
    A set of IPv4 and IPv6 networks that answers C{address in networks} in
    O(log n): the networks become disjoint integer ranges per family,
    searched with L{bisect}.  IPv4-mapped IPv6 networks count as IPv4 ones.

    @ivar ranges: how many disjoint ranges the networks merged into.
    """

    def __init__(self, networks: Iterable[Network]):
        byVersion = {4: [], 6: []}
        for network in networks:
            network = _normalize(network)
            byVersion[network.version].append(
                (int(network.network_address), int(network.broadcast_address))
            )
        self._v4 = _merge(byVersion[4])
        self._v6 = _merge(byVersion[6])
        self.ranges = len(self._v4[0]) + len(self._v6[0])

    def __bool__(self) -> bool:
        return self.ranges > 0

    def __contains__(self, address: _IPAddress) -> bool:
        """
        Whether C{address} is in one of the networks.  Give IPv4-mapped
        addresses as IPv4 ones (see L{clientIP}).
        """
        return self.containsValue(address.version, int(address))

    def containsValue(self, version: int, value: int) -> bool:
        """
        Whether the address C{value} of IP C{version} (4 or 6) is in one of
        the networks (see L{parseClientIP}).
        """
        firsts, lasts = self._v4 if version == 4 else self._v6
        index = bisect_right(firsts, value) - 1
        return index >= 0 and value <= lasts[index]


class Acl(Policy):
    """
    Answer 403 to clients in C{deny}, and, when C{allow} is not empty, to
    clients outside it: deny wins over allow; an empty C{allow} allows
    every client that is not denied.

    A client whose address is not an IP address (none of golb's TCP
    listeners produce one) is refused whenever the lists are not both
    empty.

    @ivar allow: the allowed networks, a L{NetworkSet}.
    @ivar deny: the denied networks, a L{NetworkSet}.
    """

    def __init__(self, config, env):
        Policy.__init__(self, config, env)
        self.allow = NetworkSet(config.allow)
        self.deny = NetworkSet(config.deny)
        self._open = not self.allow and not self.deny
        self.error = GolbError("forbidden", "Access from your address is not allowed.")

    def permits(self, address: str) -> bool:
        """
        Whether a client at C{address} may pass.

        @param address: the client's address as text.
        """
        if self._open:
            return True
        parsed = parseClientIP(address)
        if parsed is None:
            return False
        version, value = parsed
        if self.deny.containsValue(version, value):
            return False
        return not self.allow or self.allow.containsValue(version, value)

    def onRequest(self, request, context):
        if self.permits(request.clientAddress()):
            return None
        return self.error
