"""
Tests for L{golb.grpc}: timeouts, statuses, message framing, grpc-message
encoding, the health check protobuf, and L{probeHealth} against an
in-memory HTTP/2 backend.
"""

import struct

from h2.errors import ErrorCodes
from h2.events import StreamReset
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from golb.errors import GolbError
from golb.grpc import (
    SERVING_STATUS,
    STATUS,
    MessageError,
    MessageParser,
    Status,
    encodeTimeout,
    frameMessage,
    healthCheckRequest,
    isGrpc,
    parseHealthCheckResponse,
    parseTimeout,
    percentDecodeMessage,
    percentEncodeMessage,
    probeHealth,
    statusForError,
    statusForHTTP,
    statusName,
)
from golb.test.test_h2client import PoolTestMixin
from golb.upstream import (
    ConnectFailed,
    InvalidResponse,
    ReadTimeout,
    ResponseHeaderTimeout,
    UpstreamReset,
    UpstreamTLSFailed,
)


class TimeoutTests(SynchronousTestCase):
    """
    The C{grpc-timeout} header.
    """

    def test_parse(self):
        """
        Up to 8 digits and a unit (hours to nanoseconds) give seconds.
        """
        cases = {
            b"100m": 0.1, b"5S": 5.0, b"2H": 7200.0, b"3M": 180.0, b"250u": 250e-6,
            b"7n": 7e-9, b"99999999S": 99999999.0, b"0S": 0.0,
        }
        for value, seconds in cases.items():
            self.assertAlmostEqual(parseTimeout(value), seconds, msg=value)

    def test_parseInvalid(self):
        """
        Anything else is L{None}.
        """
        for value in [None, b"", b"100", b"S", b"123456789S", b"1x", b"-1S", b"1.5S",
                      b"5 S", b"5s", b"\xff"]:
            self.assertIsNone(parseTimeout(value), value)

    def test_encode(self):
        """
        The finest unit that fits 8 digits is used, rounding up; no time
        left is C{0n}; more than the largest value is capped.
        """
        self.assertEqual(encodeTimeout(0.05), b"50000000n")
        self.assertEqual(encodeTimeout(0.1), b"100000u")
        self.assertEqual(encodeTimeout(2), b"2000000u")
        self.assertEqual(encodeTimeout(1000), b"1000000m")
        self.assertEqual(encodeTimeout(0), b"0n")
        self.assertEqual(encodeTimeout(-3), b"0n")
        self.assertEqual(encodeTimeout(10**12), b"99999999H")

    @given(st.floats(min_value=1e-9, max_value=1e9))
    def test_roundTrip(self, seconds):
        """
        Parsing an encoded timeout gives at least the timeout, and at most
        1e-5 more (8 digits in the finest unit that fits them).
        """
        parsed = parseTimeout(encodeTimeout(seconds))
        self.assertGreaterEqual(parsed, round(seconds * 1e9) / 1e9 * (1 - 1e-12))
        self.assertLessEqual(parsed, seconds * (1 + 1e-5) + 1e-9)


class StatusTests(SynchronousTestCase):
    """
    gRPC status codes and their mapping from HTTP and golb errors.
    """

    def test_codes(self):
        """
        The codes have their standard values and names.
        """
        self.assertIs(STATUS, Status)
        self.assertEqual((STATUS.OK, STATUS.UNIMPLEMENTED, STATUS.UNAVAILABLE,
                          STATUS.UNAUTHENTICATED), (0, 12, 14, 16))
        self.assertEqual(len(Status), 17)
        self.assertEqual(statusName(12), "unimplemented")
        self.assertEqual(statusName(99), "code 99")

    def test_statusForHTTP(self):
        """
        HTTP statuses map as the gRPC document says.
        """
        expected = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14,
                    500: 2, 200: 2, 418: 2}
        self.assertEqual({code: statusForHTTP(code) for code in expected}, expected)

    def test_statusForError(self):
        """
        Connect failures and resets are UNAVAILABLE, timeouts
        DEADLINE_EXCEEDED, invalid responses INTERNAL; the message is the
        error's.
        """
        cases = [
            (ConnectFailed("10.0.0.1:80: connection refused"), STATUS.UNAVAILABLE),
            (UpstreamTLSFailed("bad cert"), STATUS.UNAVAILABLE),
            (UpstreamReset("reset"), STATUS.UNAVAILABLE),
            (ResponseHeaderTimeout("slow"), STATUS.DEADLINE_EXCEEDED),
            (ReadTimeout("slow body"), STATUS.DEADLINE_EXCEEDED),
            (InvalidResponse("garbage"), STATUS.INTERNAL),
            (GolbError("circuit-open"), STATUS.UNAVAILABLE),
            (GolbError("rate-limited"), STATUS.RESOURCE_EXHAUSTED),
        ]
        for error, code in cases:
            self.assertEqual(statusForError(error), (code, error.message))
        self.assertEqual(statusForError(Failure(ConnectFailed("x")))[0], STATUS.UNAVAILABLE)
        self.assertEqual(statusForError(CancelledError())[0], STATUS.CANCELLED)
        self.assertEqual(statusForError(ValueError("odd")), (STATUS.UNKNOWN, "odd"))

    def test_isGrpc(self):
        """
        C{application/grpc} and C{application/grpc+format} are gRPC; gRPC-Web
        and other types are not.
        """
        for value in [b"application/grpc", b"application/grpc+proto", b"Application/GRPC+json",
                      b"application/grpc; charset=utf-8"]:
            self.assertTrue(isGrpc(value), value)
        for value in [None, b"", b"application/grpc-web", b"application/grpc-web+proto",
                      b"application/json", b"application/grpcx"]:
            self.assertFalse(isGrpc(value), value)


class MessageTests(SynchronousTestCase):
    """
    Length-prefixed messages and C{grpc-message}.
    """

    def test_frame(self):
        """
        A message is a zero flag, a 4-byte big-endian length and the payload.
        """
        self.assertEqual(frameMessage(b"abc"), b"\x00\x00\x00\x00\x03abc")
        self.assertEqual(frameMessage(b""), b"\x00" * 5)

    @given(st.lists(st.binary(max_size=300), max_size=6), st.lists(st.integers(0, 2000)))
    def test_parserAnySplit(self, payloads, cuts):
        """
        However the stream is cut, the parser returns the messages in order.
        """
        stream = b"".join(frameMessage(p) for p in payloads)
        points = sorted(set([0, len(stream)] + [c for c in cuts if c < len(stream)]))
        parser = MessageParser()
        found = []
        for start, end in zip(points, points[1:]):
            found.extend(parser.feed(stream[start:end]))
        parser.finish()
        self.assertEqual(found, [(False, p) for p in payloads])

    def test_parserCompressedFlag(self):
        """
        The compressed flag is reported.
        """
        self.assertEqual(MessageParser().feed(b"\x01\x00\x00\x00\x01z"), [(True, b"z")])

    def test_parserErrors(self):
        """
        A bad flag, a message over the limit, or a stream ending inside a
        message raise L{MessageError}.
        """
        self.assertRaises(MessageError, MessageParser().feed, b"\x02\x00\x00\x00\x00")
        self.assertRaises(MessageError, MessageParser(10).feed, struct.pack(">BI", 0, 11))
        parser = MessageParser()
        self.assertEqual(parser.feed(b"\x00\x00\x00\x00\x05abc"), [])
        self.assertEqual(parser.pending, 8)
        self.assertRaises(MessageError, parser.finish)

    def test_percentEncode(self):
        """
        Printable ASCII but C{%} stays; everything else is percent-encoded
        UTF-8.
        """
        self.assertEqual(percentEncodeMessage("no such method: /a.B/C"),
                         b"no such method: /a.B/C")
        self.assertEqual(percentEncodeMessage("50% d\u00e9j\u00e0\n"),
                         b"50%25 d%C3%A9j%C3%A0%0A")

    def test_percentDecodeLenient(self):
        """
        Invalid escapes are kept as they are.
        """
        self.assertEqual(percentDecodeMessage(b"100%zz %4"), "100%zz %4")

    @given(st.text())
    def test_percentRoundTrip(self, text):
        """
        Decoding an encoded message gives it back (lone surrogates aside).
        """
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return
        self.assertEqual(percentDecodeMessage(percentEncodeMessage(text)), text)


class HealthMessageTests(SynchronousTestCase):
    """
    The hand-encoded C{grpc.health.v1} messages.
    """

    def test_request(self):
        """
        The request holds the service name as field 1 (omitted when empty),
        framed.
        """
        self.assertEqual(healthCheckRequest(""), b"\x00\x00\x00\x00\x00")
        self.assertEqual(healthCheckRequest("foo"), b"\x00\x00\x00\x00\x05\x0a\x03foo")
        long = "s" * 200
        self.assertEqual(healthCheckRequest(long),
                         frameMessage(b"\x0a\xc8\x01" + long.encode("ascii")))

    def test_response(self):
        """
        The status is field 1; absent, it is 0 (UNKNOWN); unknown fields are
        skipped.
        """
        self.assertEqual(parseHealthCheckResponse(frameMessage(b"\x08\x01")), 1)
        self.assertEqual(parseHealthCheckResponse(frameMessage(b"\x08\x02")), 2)
        self.assertEqual(parseHealthCheckResponse(frameMessage(b"")), 0)
        extra = b"\x12\x03abc" + b"\x19" + b"\x00" * 8 + b"\x25" + b"\x00" * 4 + b"\x08\x03"
        self.assertEqual(parseHealthCheckResponse(frameMessage(extra)), 3)
        self.assertEqual(SERVING_STATUS[3], "SERVICE_UNKNOWN")

    def test_responseMalformed(self):
        """
        Truncated fields, bad wire types, several or compressed messages, or
        a partial frame are L{None}.
        """
        for body in [
            frameMessage(b"\x08"),
            frameMessage(b"\x08\xff"),
            frameMessage(b"\x12\x05ab"),
            frameMessage(b"\x0b"),
            frameMessage(b"\x00\x01"),
            frameMessage(b"\x08\x01") * 2,
            b"\x01\x00\x00\x00\x02\x08\x01",
            b"\x00\x00\x00",
            b"",
        ]:
            self.assertIsNone(parseHealthCheckResponse(body), body)


class ProbeHealthTests(PoolTestMixin, SynchronousTestCase):
    """
    L{probeHealth} over an L{golb.h2client.H2Pool} to an in-memory backend.
    """

    def probe(self, service="my.Service"):
        return probeHealth(self.pool, service, "backend.example", 2.0, self.reactor)

    def answer(self, backend, status=200, headers=None, body=None, trailers=None):
        if headers is None:
            headers = [(b"content-type", b"application/grpc")]
        backend.respond(1, status=status, headers=headers, body=body, trailers=trailers)

    def test_serving(self):
        """
        The check is a gRPC POST to Health/Check with te, grpc-timeout and
        the service; SERVING fires with L{None}.
        """
        d = self.probe()
        backend = self.accept()
        request = backend.requests()[1]
        fields = dict(request.headers)
        self.assertEqual(request.headers[:4], [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"backend.example"),
            (b":path", b"/grpc.health.v1.Health/Check"),
        ])
        self.assertEqual((fields[b"content-type"], fields[b"te"], fields[b"grpc-timeout"]),
                         (b"application/grpc", b"trailers", b"2000000u"))
        self.assertEqual(backend.body(1), healthCheckRequest("my.Service"))
        self.answer(backend, body=frameMessage(b"\x08\x01"), trailers=[(b"grpc-status", b"0")])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.getDelayedCalls()[0].func.__name__, "_timerFired")

    def test_notServing(self):
        """
        NOT_SERVING (or another status) is the reason.
        """
        d = self.probe()
        self.answer(self.accept(), body=frameMessage(b"\x08\x02"),
                    trailers=[(b"grpc-status", b"0")])
        self.assertEqual(self.successResultOf(d), "NOT_SERVING")

    def test_trailersOnlyError(self):
        """
        A trailers-only response with a non-zero grpc-status gives its code
        and name.
        """
        d = self.probe()
        self.answer(self.accept(), headers=[(b"content-type", b"application/grpc"),
                                            (b"grpc-status", b"12")])
        self.assertEqual(self.successResultOf(d), "grpc-status 12 (unimplemented)")

    def test_errorInTrailers(self):
        """
        A non-zero grpc-status in the trailers gives its decoded message too.
        """
        d = self.probe()
        self.answer(self.accept(), body=b"", trailers=[
            (b"grpc-status", b"14"), (b"grpc-message", b"down%20for%20maintenance")])
        self.assertEqual(self.successResultOf(d),
                         "grpc-status 14 (unavailable): down for maintenance")

    def test_httpError(self):
        """
        A non-200 HTTP status fails the check.
        """
        d = self.probe()
        self.answer(self.accept(), status=503, headers=[], body=b"busy")
        self.assertEqual(self.successResultOf(d), "HTTP 503")

    def test_notGrpc(self):
        """
        A 200 that is not gRPC fails the check.
        """
        d = self.probe()
        self.answer(self.accept(), headers=[(b"content-type", b"text/html")], body=b"<html>")
        self.assertEqual(self.successResultOf(d), "not a gRPC response (content-type text/html)")

    def test_missingStatus(self):
        """
        A body without grpc-status trailers fails the check.
        """
        d = self.probe()
        self.answer(self.accept(), body=frameMessage(b"\x08\x01"))
        self.assertEqual(self.successResultOf(d), "no grpc-status in the response")

    def test_malformed(self):
        """
        A body that is no HealthCheckResponse fails the check.
        """
        d = self.probe()
        self.answer(self.accept(), body=b"\x00\x00", trailers=[(b"grpc-status", b"0")])
        self.assertEqual(self.successResultOf(d), "malformed HealthCheckResponse")

    def test_timeout(self):
        """
        No answer within the timeout: the stream is reset and the reason
        says so.
        """
        d = self.probe()
        backend = self.accept()
        self.reactor.advance(1.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertEqual(self.successResultOf(d), "timed out after 2s")
        backend.receive()
        self.assertEqual(backend.of(StreamReset, 1)[0].error_code, ErrorCodes.CANCEL)

    def test_timeoutInBody(self):
        """
        A body that stops coming counts as a timeout too.
        """
        d = self.probe()
        backend = self.accept()
        backend.respond(1, headers=[(b"content-type", b"application/grpc")], body=b"\x00",
                        end=False)
        self.reactor.advance(2)
        self.assertEqual(self.successResultOf(d), "timed out after 2s")

    def test_connectRefused(self):
        """
        A connection error is the reason, naming the backend.
        """
        d = self.probe()
        _, _, factory, _, _ = self.reactor.tcpClients.pop(0)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.successResultOf(d), "10.0.0.1:8080: connection refused")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel(self):
        """
        Cancelling the check cancels the request and its timer.
        """
        d = self.probe()
        backend = self.accept()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        backend.receive()
        self.assertTrue(backend.of(StreamReset, 1))
        self.assertEqual([c.func.__name__ for c in self.reactor.getDelayedCalls()],
                         ["_timerFired"])
