"""
Parsing of the small value languages in golb's configuration: durations,
sizes, rates, percentages, addresses, networks and status ranges.

Every parser takes what YAML produced (a string or a number) and either
returns a normalized value or raises L{UnitError} whose message says what was
wrong in words a person can act on.  Nothing here knows about files or paths;
L{golb.config} adds those.
"""

import ipaddress
import math
import re
from typing import Tuple, Union

import attr

__all__ = [
    "Address",
    "Network",
    "Rate",
    "UnitError",
    "formatDuration",
    "formatSize",
    "parseAddress",
    "parseDuration",
    "parseNetwork",
    "parseNetworks",
    "parsePercent",
    "parseRate",
    "parseSize",
    "parseStatusRanges",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class UnitError(ValueError):
    """
    A value is not in the form its key expects; C{str()} is the explanation.
    """


def _isNumber(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: float, text: object) -> float:
    if math.isnan(value) or math.isinf(value):
        raise UnitError(f"{text!r} is not a finite number")
    return value


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_HELP = "like 250ms, 5s, 1.5m, 2h or a number of seconds"


def parseDuration(value: object) -> float:
    """
    Parse a duration: C{250ms}, C{5s}, C{1m}, C{2h}, C{1d}, C{1.5s} or a bare
    number of seconds.

    @param value: a string or a number from YAML.
    @return: seconds, C{>= 0}.
    @raise UnitError: for anything else, including negative durations.
    """
    if _isNumber(value):
        seconds = _finite(float(value), value)
        if seconds < 0:
            raise UnitError(f"{value!r} is negative; a duration must be 0 or more")
        return seconds
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a duration ({_DURATION_HELP})")
    if value.strip().startswith("-"):
        raise UnitError(f"{value!r} is negative; a duration must be 0 or more")
    match = _DURATION.match(value)
    if match is None:
        raise UnitError(f"{value!r} is not a duration ({_DURATION_HELP})")
    number, unit = match.groups()
    if unit == "ms":
        return float(number) / 1000
    return float(number) * _DURATION_UNITS[unit or "s"]


def formatDuration(seconds: float) -> str:
    """
    Format seconds the way a person writes them in the configuration, so that
    C{parseDuration(formatDuration(s)) == s} for whole milliseconds.

    @param seconds: a duration C{>= 0}.
    """
    milliseconds = round(seconds * 1000)
    if milliseconds != seconds * 1000:
        return repr(float(seconds))
    for unit, factor in (("h", 3600000), ("m", 60000), ("s", 1000)):
        if milliseconds and milliseconds % factor == 0:
            return f"{milliseconds // factor}{unit}"
    return f"{milliseconds}ms"


_SIZE_UNITS = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]+)?\s*$")
_SIZE_HELP = "like 512, 64KiB, 10MiB or 1GiB"


def parseSize(value: object) -> int:
    """
    Parse a size in bytes: a bare integer, or a number with one of the units
    C{B}, C{KiB}, C{MiB}, C{GiB}, C{TiB} (powers of 1024) or C{KB}, C{MB},
    C{GB}, C{TB} (powers of 1000).  Units are not case sensitive.

    @return: bytes, C{>= 0}, rounded down to a whole byte.
    @raise UnitError: for anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UnitError(f"{value!r} is negative; a size must be 0 or more")
        return value
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a size ({_SIZE_HELP})")
    match = _SIZE.match(value)
    if match is None:
        if value.strip().startswith("-"):
            raise UnitError(f"{value!r} is negative; a size must be 0 or more")
        raise UnitError(f"{value!r} is not a size ({_SIZE_HELP})")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get((unit or "b").lower())
    if factor is None:
        raise UnitError(
            f"{value!r} has an unknown unit {unit!r}; use B, KiB, MiB, GiB, TiB, KB, MB or GB"
        )
    if "." in number:
        return int(float(number) * factor)
    return int(number) * factor


def formatSize(size: int) -> str:
    """
    Format bytes with the largest binary unit that divides them exactly.
    """
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit.lower()]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


@attr.s(frozen=True, auto_attribs=True)
class Rate:
    """
    A number of events allowed per period.

    @ivar count: events, C{> 0}.
    @ivar period: seconds, C{> 0}.
    """

    count: int
    period: float

    @property
    def perSecond(self) -> float:
        """
        The sustained rate in events per second.
        """
        return self.count / self.period

    def __str__(self) -> str:
        return f"{self.count}/{formatDuration(self.period)}"


_RATE_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE = re.compile(r"^\s*([0-9]+)\s*/\s*(\S+)\s*$")
_RATE_HELP = "like 100/second, 100/minute, 5000/hour, 100/s or 10/5s"


def parseRate(value: object) -> Rate:
    """
    Parse a rate: C{COUNT/UNIT} with UNIT one of C{second}, C{minute},
    C{hour}, C{day} (or C{s}, C{m}, C{h}, C{d}, C{sec}, C{min}), or
    C{COUNT/DURATION} such as C{10/5s}.

    @raise UnitError: if it is malformed, the count is 0 or the period is 0.
    """
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a rate ({_RATE_HELP})")
    match = _RATE.match(value)
    if match is None:
        raise UnitError(f"{value!r} is not a rate ({_RATE_HELP})")
    count = int(match.group(1))
    unit = match.group(2).lower()
    period = _RATE_PERIODS.get(unit[:-1] if unit.endswith("s") and len(unit) > 3 else unit)
    if period is None:
        try:
            period = parseDuration(unit)
        except UnitError:
            raise UnitError(f"{value!r} is not a rate ({_RATE_HELP})") from None
    if count <= 0:
        raise UnitError(f"{value!r} allows nothing; the count must be at least 1")
    if period <= 0:
        raise UnitError(f"{value!r} has an empty period")
    return Rate(count, period)


_PERCENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*%\s*$")


def parsePercent(value: object) -> float:
    """
    Parse a percentage, C{50%} or a number from 0 to 100, into a fraction.

    A bare number strictly between 0 and 1 (C{0.2}) is refused as ambiguous:
    it is too easily meant as a fraction rather than a percentage.  Write
    C{20%} or C{0.2%}.

    @return: a fraction from 0.0 to 1.0.
    @raise UnitError: for anything else or a value above 100%.
    """
    if _isNumber(value):
        number = _finite(float(value), value)
        if 0 < number < 1:
            raise UnitError(f"{value!r} is ambiguous; write '{number * 100:g}%' or '{number:g}%'")
    elif isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            raise UnitError(f"{value!r} is not a percentage (like 50% or 50)")
        number = float(match.group(1))
    else:
        raise UnitError(f"{value!r} is not a percentage (like 50% or 50)")
    if not 0 <= number <= 100:
        raise UnitError(f"{value!r} is out of range; a percentage is from 0 to 100")
    return number / 100.0


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)
_ADDRESS_HELP = "like ':8080', '127.0.0.1:8081' or '[::1]:8080'"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


@attr.s(frozen=True, auto_attribs=True)
class Address:
    """
    A host and port to listen on or connect to.

    @ivar host: an IPv4 or IPv6 literal (without brackets), a host name, or
        C{""} for every interface.
    @ivar port: 0 to 65535; 0 asks the system for any free port.
    """

    host: str
    port: int

    def endpointDescription(self) -> str:
        """
        The Twisted server endpoint string that listens on this address, for
        example C{tcp:port=8080}, C{tcp:port=8081:interface=127.0.0.1} or
        C{tcp6:port=8080:interface=\\:\\:1}.
        """
        if not self.host:
            return f"tcp:port={self.port}"
        kind = "tcp6" if ":" in self.host else "tcp"
        return f"{kind}:port={self.port}:interface={_escape(self.host)}"

    def isLoopback(self) -> bool:
        """
        Whether only this machine can reach this address (C{localhost},
        127.0.0.0/8 or C{::1}).  The empty host (every interface) is not.
        """
        if self.host.lower().rstrip(".") == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _parsePort(text: str, original: object) -> int:
    if not text.isdigit() or not text.isascii():
        raise UnitError(f"{original!r} has no valid port ({_ADDRESS_HELP})")
    port = int(text)
    if port > 65535:
        raise UnitError(f"{original!r} has port {port}, above 65535")
    return port


def parseAddress(value: object, defaultPort: Union[int, None] = None) -> Address:
    """
    Parse C{HOST:PORT}, C{:PORT} (every interface), C{[IPv6]:PORT}, or a bare
    port number.  With C{defaultPort}, a bare host is accepted too.

    @raise UnitError: for anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 65535:
            raise UnitError(f"{value!r} is not a port number (0 to 65535)")
        return Address("", value)
    if not isinstance(value, str) or not value.strip():
        raise UnitError(f"{value!r} is not an address ({_ADDRESS_HELP})")
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise UnitError(f"{value!r} is missing ']' after the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UnitError(f"{value!r}: {host!r} is not an IPv6 address") from None
        if not rest and defaultPort is not None:
            return Address(host, defaultPort)
        if not rest.startswith(":"):
            raise UnitError(f"{value!r} has no port ({_ADDRESS_HELP})")
        return Address(host, _parsePort(rest[1:], value))
    if text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise UnitError(f"{value!r} is not an address ({_ADDRESS_HELP})") from None
        if defaultPort is None:
            raise UnitError(f"{value!r}: put an IPv6 address in brackets, like '[::1]:8080'")
        return Address(text, defaultPort)
    host, sep, portText = text.rpartition(":")
    if not sep:
        if defaultPort is None:
            raise UnitError(f"{value!r} has no port ({_ADDRESS_HELP})")
        host, port = text, defaultPort
    else:
        port = _parsePort(portText, value)
    if host and not _HOSTNAME.match(host):
        raise UnitError(f"{value!r}: {host!r} is not a host name or IP address")
    return Address(host, port)


def parseNetwork(value: object) -> Network:
    """
    Parse an IPv4 or IPv6 network in CIDR form; a bare address is a network
    of one address (C{/32} or C{/128}).  Host bits are allowed and cleared.

    @raise UnitError: for anything else.
    """
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not an IP address or CIDR network (like 10.0.0.0/8)")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise UnitError(
            f"{value!r} is not an IP address or CIDR network (like 10.0.0.0/8)"
        ) from None


def parseNetworks(value: object) -> Tuple[Network, ...]:
    """
    Parse a list of networks (see L{parseNetwork}); a single string is a list
    of one.

    @raise UnitError: for the first bad entry.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise UnitError(f"{value!r} is not a list of networks")
    return tuple(parseNetwork(item) for item in value)


_STATUS_RANGE = re.compile(r"^([1-5])xx$|^([0-9]{3})(?:-([0-9]{3}))?$")


def parseStatusRanges(value: object) -> Tuple[Tuple[int, int], ...]:
    """
    Parse expected HTTP statuses: C{200}, C{"200-399"}, C{"2xx"} or a comma
    separated list of those (C{"200,301-302"}), or a YAML list of them.

    @return: inclusive C{(low, high)} ranges.
    @raise UnitError: for anything else or a status outside 100..599.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        items = [str(value)]
    elif isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list):
        items = [str(item) for item in value]
    else:
        raise UnitError(f"{value!r} is not a status list (like '200-399' or '200,204')")
    ranges = []
    for item in items:
        match = _STATUS_RANGE.match(item.strip().lower())
        if match is None:
            raise UnitError(f"{value!r} is not a status list (like '200-399' or '200,204')")
        klass, low, high = match.groups()
        if klass:
            lo, hi = int(klass) * 100, int(klass) * 100 + 99
        else:
            lo, hi = int(low), int(high or low)
        if not (100 <= lo <= hi <= 599):
            raise UnitError(f"{item.strip()!r} is not a range of HTTP statuses (100 to 599)")
        ranges.append((lo, hi))
    return tuple(ranges)
