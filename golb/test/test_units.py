"""
Tests for L{golb._units}: durations, sizes, rates, percentages, addresses,
networks and status ranges.
"""

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import _parseServer
from twisted.trial.unittest import SynchronousTestCase

from golb._units import (
    Address,
    Rate,
    UnitError,
    formatDuration,
    formatSize,
    parseAddress,
    parseDuration,
    parseNetwork,
    parseNetworks,
    parsePercent,
    parseRate,
    parseSize,
    parseStatusRanges,
)

garbage = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


class DurationTests(SynchronousTestCase):
    """
    Tests for L{parseDuration} and L{formatDuration}.
    """

    def test_units(self):
        """
        C{ms}, C{s}, C{m}, C{h} and C{d} scale to seconds; a bare number is
        seconds.
        """
        self.assertEqual(parseDuration("250ms"), 0.25)
        self.assertEqual(parseDuration("5s"), 5.0)
        self.assertEqual(parseDuration("1.5s"), 1.5)
        self.assertEqual(parseDuration("1m"), 60.0)
        self.assertEqual(parseDuration("2h"), 7200.0)
        self.assertEqual(parseDuration("1d"), 86400.0)
        self.assertEqual(parseDuration("0s"), 0.0)
        self.assertEqual(parseDuration(0), 0.0)
        self.assertEqual(parseDuration(30), 30.0)
        self.assertEqual(parseDuration(0.5), 0.5)
        self.assertEqual(parseDuration("10"), 10.0)

    def test_negative(self):
        """
        A negative duration is refused and the message says so.
        """
        for value in ("-5s", -1, -0.5):
            e = self.assertRaises(UnitError, parseDuration, value)
            self.assertIn("negative", str(e))

    def test_garbage(self):
        """
        Unknown units, booleans and other types are refused with a hint.
        """
        for value in ("5x", "s", "", "5 seconds", True, None, [1], "1:30"):
            e = self.assertRaises(UnitError, parseDuration, value)
            self.assertIn("is not a duration (like 250ms", str(e))

    @given(st.integers(min_value=0, max_value=10**9))
    def test_roundTripMilliseconds(self, milliseconds):
        """
        Formatting whole milliseconds and parsing the text gives them back.
        """
        self.assertAlmostEqual(
            parseDuration(formatDuration(milliseconds / 1000)), milliseconds / 1000
        )
        self.assertEqual(parseDuration(f"{milliseconds}ms"), milliseconds / 1000)

    @given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["s", "m", "h"]))
    def test_roundTripUnits(self, number, unit):
        """
        C{N<unit>} is N times the unit's seconds.
        """
        factor = {"s": 1, "m": 60, "h": 3600}[unit]
        self.assertEqual(parseDuration(f"{number}{unit}"), number * factor)

    @given(garbage)
    def test_neverCrashes(self, value):
        """
        Whatever the value, the result is a non-negative float or L{UnitError}.
        """
        try:
            result = parseDuration(value)
        except UnitError:
            return
        self.assertIsInstance(result, float)
        self.assertGreaterEqual(result, 0)


class SizeTests(SynchronousTestCase):
    """
    Tests for L{parseSize} and L{formatSize}.
    """

    def test_units(self):
        """
        Binary units are powers of 1024, decimal ones powers of 1000, in any
        letter case; a bare integer is bytes.
        """
        self.assertEqual(parseSize(512), 512)
        self.assertEqual(parseSize("512"), 512)
        self.assertEqual(parseSize("512B"), 512)
        self.assertEqual(parseSize("64KiB"), 65536)
        self.assertEqual(parseSize("64kib"), 65536)
        self.assertEqual(parseSize("10MiB"), 10 * 1024**2)
        self.assertEqual(parseSize("1GiB"), 1024**3)
        self.assertEqual(parseSize("1TiB"), 1024**4)
        self.assertEqual(parseSize("1KB"), 1000)
        self.assertEqual(parseSize("2MB"), 2000000)
        self.assertEqual(parseSize("1GB"), 10**9)
        self.assertEqual(parseSize("1.5KiB"), 1536)

    def test_badUnit(self):
        """
        An unknown unit is named in the message with the accepted ones.
        """
        e = self.assertRaises(UnitError, parseSize, "10XB")
        self.assertEqual(
            str(e), "'10XB' has an unknown unit 'XB'; use B, KiB, MiB, GiB, TiB, KB, MB or GB"
        )

    def test_garbage(self):
        """
        Negative sizes, floats without a unit and other types are refused.
        """
        for value in (-1, "-1KiB", 1.5, True, None, "KiB", ""):
            self.assertRaises(UnitError, parseSize, value)

    @given(st.integers(min_value=0, max_value=2**50))
    def test_roundTrip(self, size):
        """
        Formatting a size and parsing the text gives it back.
        """
        self.assertEqual(parseSize(formatSize(size)), size)

    @given(st.integers(min_value=0, max_value=10**6),
           st.sampled_from(["KiB", "MiB", "GiB", "KB", "MB", "GB"]))
    def test_multiples(self, number, unit):
        """
        C{N<unit>} is exactly N times the unit.
        """
        factor = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 10**6,
                  "GB": 10**9}[unit]
        self.assertEqual(parseSize(f"{number}{unit}"), number * factor)

    @given(garbage)
    def test_neverCrashes(self, value):
        """
        Whatever the value, the result is a non-negative int or L{UnitError}.
        """
        try:
            result = parseSize(value)
        except UnitError:
            return
        self.assertIsInstance(result, int)
        self.assertGreaterEqual(result, 0)


class RateTests(SynchronousTestCase):
    """
    Tests for L{parseRate} and L{Rate}.
    """

    def test_forms(self):
        """
        Long and short period names, and a duration as the period, are read.
        """
        self.assertEqual(parseRate("100/second"), Rate(100, 1.0))
        self.assertEqual(parseRate("100/minute"), Rate(100, 60.0))
        self.assertEqual(parseRate("5000/hour"), Rate(5000, 3600.0))
        self.assertEqual(parseRate("100/s"), Rate(100, 1.0))
        self.assertEqual(parseRate("100/m"), Rate(100, 60.0))
        self.assertEqual(parseRate("100/h"), Rate(100, 3600.0))
        self.assertEqual(parseRate("10/5s"), Rate(10, 5.0))
        self.assertEqual(parseRate("3 / minutes"), Rate(3, 60.0))

    def test_perSecond(self):
        """
        L{Rate.perSecond} is the sustained rate.
        """
        self.assertEqual(parseRate("120/minute").perSecond, 2.0)

    def test_zero(self):
        """
        A rate that allows nothing, or has an empty period, is refused.
        """
        e = self.assertRaises(UnitError, parseRate, "0/second")
        self.assertEqual(str(e), "'0/second' allows nothing; the count must be at least 1")
        self.assertRaises(UnitError, parseRate, "10/0s")

    def test_garbage(self):
        """
        Other forms are refused with examples of the right ones.
        """
        for value in ("100", "100/fortnight", "/s", "-1/s", 100, None, "1.5/s"):
            e = self.assertRaises(UnitError, parseRate, value)
            self.assertIn("100/second", str(e))

    @given(st.integers(min_value=1, max_value=10**9),
           st.sampled_from(["second", "minute", "hour", "s", "m", "h"]))
    def test_roundTrip(self, count, unit):
        """
        Every C{COUNT/UNIT} parses to that count and period, and L{str} of a
        rate parses back to the same rate.
        """
        period = {"s": 1.0, "m": 60.0, "h": 3600.0}[unit[0]]
        rate = parseRate(f"{count}/{unit}")
        self.assertEqual(rate, Rate(count, period))
        self.assertEqual(parseRate(str(rate)), rate)

    @given(garbage)
    def test_neverCrashes(self, value):
        """
        Whatever the value, the result is a L{Rate} or L{UnitError}.
        """
        try:
            result = parseRate(value)
        except UnitError:
            return
        self.assertGreater(result.count, 0)
        self.assertGreater(result.period, 0)


class PercentTests(SynchronousTestCase):
    """
    Tests for L{parsePercent}.
    """

    def test_forms(self):
        """
        C{50%} and C{50} are both half; 0, 1 and 100 are percentages.
        """
        self.assertEqual(parsePercent("50%"), 0.5)
        self.assertEqual(parsePercent(50), 0.5)
        self.assertEqual(parsePercent("0.5%"), 0.005)
        self.assertEqual(parsePercent(0), 0.0)
        self.assertEqual(parsePercent(1), 0.01)
        self.assertEqual(parsePercent("100%"), 1.0)

    def test_ambiguous(self):
        """
        A bare number between 0 and 1 is refused with both readings offered.
        """
        e = self.assertRaises(UnitError, parsePercent, 0.2)
        self.assertEqual(str(e), "0.2 is ambiguous; write '20%' or '0.2%'")

    def test_outOfRange(self):
        """
        More than 100% or less than 0 is refused.
        """
        for value in (101, "150%", -5, "-5%", "fifty", None, True):
            self.assertRaises(UnitError, parsePercent, value)

    @given(st.integers(min_value=0, max_value=100))
    def test_roundTrip(self, number):
        """
        C{N%} and C{N} are the fraction N/100.
        """
        self.assertEqual(parsePercent(f"{number}%"), number / 100)
        self.assertEqual(parsePercent(number), number / 100)


class AddressTests(SynchronousTestCase):
    """
    Tests for L{parseAddress} and L{Address}.
    """

    def test_forms(self):
        """
        All interfaces, IPv4, bracketed IPv6, host names and bare ports.
        """
        self.assertEqual(parseAddress(":8080"), Address("", 8080))
        self.assertEqual(parseAddress("127.0.0.1:8081"), Address("127.0.0.1", 8081))
        self.assertEqual(parseAddress("[::1]:8080"), Address("::1", 8080))
        self.assertEqual(parseAddress("localhost:4317"), Address("localhost", 4317))
        self.assertEqual(parseAddress(":0"), Address("", 0))
        self.assertEqual(parseAddress(9090), Address("", 9090))
        self.assertEqual(parseAddress("10.0.0.1", defaultPort=53), Address("10.0.0.1", 53))

    def test_endpointDescription(self):
        """
        The endpoint string listens on the address; IPv6 colons are escaped.
        """
        self.assertEqual(Address("", 8080).endpointDescription(), "tcp:port=8080")
        self.assertEqual(
            Address("127.0.0.1", 8081).endpointDescription(), "tcp:port=8081:interface=127.0.0.1"
        )
        self.assertEqual(
            Address("::1", 8080).endpointDescription(), "tcp6:port=8080:interface=\\:\\:1"
        )

    def test_endpointDescriptionParses(self):
        """
        Twisted's endpoint parser reads the description back to the same
        port and interface.
        """
        for address in (Address("", 80), Address("127.0.0.1", 1), Address("::1", 8080),
                        Address("fe80::1", 65535)):
            _, args, kwargs = _parseServer(address.endpointDescription(), None)
            port = args[0] if args else kwargs["port"]
            self.assertEqual(int(port), address.port)
            self.assertEqual(kwargs.get("interface", ""), address.host)

    def test_isLoopback(self):
        """
        127.0.0.0/8, ::1 and localhost are loopback; all interfaces is not.
        """
        self.assertTrue(Address("127.0.0.1", 1).isLoopback())
        self.assertTrue(Address("127.1.2.3", 1).isLoopback())
        self.assertTrue(Address("::1", 1).isLoopback())
        self.assertTrue(Address("localhost", 1).isLoopback())
        self.assertFalse(Address("", 1).isLoopback())
        self.assertFalse(Address("0.0.0.0", 1).isLoopback())
        self.assertFalse(Address("example.com", 1).isLoopback())

    def test_str(self):
        """
        L{str} gives back the configuration form.
        """
        self.assertEqual(str(Address("", 8080)), ":8080")
        self.assertEqual(str(Address("::1", 8080)), "[::1]:8080")
        self.assertEqual(str(Address("0.0.0.0", 8081)), "0.0.0.0:8081")

    def test_garbage(self):
        """
        Missing ports, bad ports, unbracketed IPv6 and bad hosts are refused.
        """
        for value in ("localhost", ":99999", ":http", "::1:8080", "[::1", "[nope]:80",
                      "bad host:80", "", 70000, -1, None, True, ":-1"):
            self.assertRaises(UnitError, parseAddress, value)

    @given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
           st.integers(min_value=0, max_value=65535))
    def test_roundTrip(self, ip, port):
        """
        L{str} of an address parses back to the same address.
        """
        address = Address(str(ip), port)
        self.assertEqual(parseAddress(str(address)), address)

    @given(garbage)
    def test_neverCrashes(self, value):
        """
        Whatever the value, the result is an L{Address} or L{UnitError}.
        """
        try:
            result = parseAddress(value)
        except UnitError:
            return
        self.assertTrue(0 <= result.port <= 65535)


class NetworkTests(SynchronousTestCase):
    """
    Tests for L{parseNetwork} and L{parseNetworks}.
    """

    def test_forms(self):
        """
        CIDR networks of both families; a bare address is a one-address
        network; host bits are cleared.
        """
        self.assertEqual(parseNetwork("10.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))
        self.assertEqual(parseNetwork("10.0.0.13"), ipaddress.ip_network("10.0.0.13/32"))
        self.assertEqual(parseNetwork("::1"), ipaddress.ip_network("::1/128"))
        self.assertEqual(parseNetwork("10.1.2.3/8"), ipaddress.ip_network("10.0.0.0/8"))
        self.assertEqual(parseNetworks("fd00::/8"), (ipaddress.ip_network("fd00::/8"),))

    def test_garbage(self):
        """
        Anything else is refused.
        """
        for value in ("10.0.0.0/33", "example.com", 10, None, ["x"]):
            self.assertRaises(UnitError, parseNetworks, value)


class StatusRangeTests(SynchronousTestCase):
    """
    Tests for L{parseStatusRanges}.
    """

    def test_forms(self):
        """
        Single statuses, ranges, classes and lists of them.
        """
        self.assertEqual(parseStatusRanges("200-399"), ((200, 399),))
        self.assertEqual(parseStatusRanges(200), ((200, 200),))
        self.assertEqual(parseStatusRanges("200,301-302"), ((200, 200), (301, 302)))
        self.assertEqual(parseStatusRanges("2xx"), ((200, 299),))
        self.assertEqual(parseStatusRanges([200, "204"]), ((200, 200), (204, 204)))

    def test_garbage(self):
        """
        Reversed ranges, statuses outside 100..599 and words are refused.
        """
        for value in ("399-200", "600", "99", "ok", "", None, True):
            self.assertRaises(UnitError, parseStatusRanges, value)
