"""
Tests for L{golb.listener}: the strict HTTP/1.1 server of golb's listeners.
"""

import ipaddress
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import directlyProvides

from golb.listener import GolbChannel, GolbRequest, GolbSite, parseAddress

_TOKEN = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"
)


class RecordingResource(Resource):
    """
    A leaf resource that records every request it renders and answers
    C{ok:} and the body.  Tests of rejected requests assert it saw nothing.
    """

    isLeaf = True

    def __init__(self, streaming=False):
        Resource.__init__(self)
        self.requests = []
        self.streaming = streaming

    def render(self, request):
        self.requests.append(request)
        if self.streaming:
            request.write(b"first part\n")
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"text/plain")
        return b"ok:" + request.content.read()


def parseResponses(data):
    """
    Split raw bytes into C{(status, headers, body)} tuples; headers is a
    L{dict} of lower-cased names to lists of values.  Bodies need a
    Content-Length.
    """
    responses = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = int(headers.get(b"content-length", [b"0"])[0])
        responses.append((status, headers, data[:length]))
        data = data[length:]
    return responses


class ListenerTestCase(TestCase):
    """
    Helpers: a site over a L{Clock}, and connections over L{StringTransport}.
    """

    def makeSite(self, resource=None, **kwargs):
        self.clock = Clock()
        self.resource = RecordingResource() if resource is None else resource
        self.site = GolbSite(self.resource, reactor=self.clock, **kwargs)
        return self.site

    def connect(self, site=None, peer="10.0.0.1"):
        if site is None:
            site = self.site if hasattr(self, "site") else self.makeSite()
        if ":" in peer:
            address = IPv6Address("TCP", peer, 40000)
        else:
            address = IPv4Address("TCP", peer, 40000)
        channel = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        return channel, transport

    def send(self, data, **siteArgs):
        """
        Send C{data} on a new connection to a new site.

        @return: the transport.
        """
        self.makeSite(**siteArgs)
        channel, transport = self.connect()
        channel.dataReceived(data)
        return transport

    def assertRejected(self, data, status=400, code="bad-request", **siteArgs):
        """
        Sending C{data} gets one golb error response with C{status} and
        C{code}, closes the connection, and calls no resource.
        """
        transport = self.send(data, **siteArgs)
        self.assertRejectedOn(transport, status, code)
        return transport

    def assertRejectedOn(self, transport, status, code):
        responses = parseResponses(transport.value())
        self.assertEqual(len(responses), 1, transport.value())
        gotStatus, headers, body = responses[0]
        self.assertEqual((gotStatus, headers[b"x-golb-error"]), (status, [code.encode()]))
        self.assertEqual(headers[b"connection"], [b"close"])
        self.assertTrue(body.startswith(b"%d " % (status,)), body)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.requests, [])

    def assertAccepted(self, data, body=b"", **siteArgs):
        """
        Sending C{data} reaches the resource once and gets its 200.
        """
        transport = self.send(data, **siteArgs)
        responses = parseResponses(transport.value())
        self.assertEqual([(r[0], r[2]) for r in responses], [(200, b"ok:" + body)])
        self.assertEqual(len(self.resource.requests), 1)
        return self.resource.requests[0]


class FramingTests(ListenerTestCase):
    """
    Requests with ambiguous or malformed framing get golb's 400, the
    connection closes and no resource sees them.
    """

    def test_contentLengthAndTransferEncoding(self):
        """
        Content-Length with Transfer-Encoding is rejected.
        """
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )

    def test_transferEncodingAndContentLength(self):
        """
        Transfer-Encoding followed by Content-Length is rejected.
        """
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\n\r\n0\r\n\r\n"
        )

    def test_differingContentLengths(self):
        """
        Two Content-Length headers with different values are rejected.
        """
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\n\r\nhello!"
        )

    def test_differingContentLengthList(self):
        """
        A Content-Length list with different values is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!")

    def test_identicalContentLengths(self):
        """
        Identical Content-Length values (repeated or listed) count as one.
        """
        request = self.assertAccepted(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n"
            b"Content-Length: 005\r\n\r\nhello",
            body=b"hello",
        )
        self.assertEqual(request.requestHeaders.getRawHeaders(b"content-length"), [b"5"])
        self.assertEqual(request.bodyLength, 5)

    def test_nonNumericContentLength(self):
        """
        A Content-Length that is not a number is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\n")

    def test_negativeContentLength(self):
        """
        A negative Content-Length is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n")

    def test_plusContentLength(self):
        """
        A plus-signed Content-Length is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello")

    def test_hexContentLength(self):
        """
        A hexadecimal or spaced Content-Length is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello")
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n")

    def test_emptyContentLength(self):
        """
        An empty Content-Length is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n")

    def test_hugeContentLength(self):
        """
        A Content-Length of thousands of digits is answered 413, not a crash.
        """
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
            413, "body-too-large",
        )

    def test_gzipChunked(self):
        """
        Transfer-Encoding: gzip, chunked is rejected.
        """
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        )

    def test_chunkedIdentity(self):
        """
        Transfer-Encoding: chunked, identity is rejected.
        """
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
        )

    def test_identity(self):
        """
        Transfer-Encoding: identity (which Twisted ignores) is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n")

    def test_xchunked(self):
        """
        Transfer-Encoding: xchunked is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n")

    def test_chunkedWithControlCharacters(self):
        """
        chunked wrapped in characters other than space and tab is rejected.
        """
        for value in [b"\x0bchunked", b"chunked\x0c", b"\xa0chunked", b'"chunked"']:
            self.assertRejected(
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + value
                + b"\r\n\r\n0\r\n\r\n"
            )

    def test_spaceBeforeColonTransferEncoding(self):
        """
        A space between Transfer-Encoding and its colon is rejected.
        """
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n")

    def test_foldedTransferEncoding(self):
        """
        A Transfer-Encoding folded onto a continuation line is rejected.
        """
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
        )

    def test_repeatedTransferEncoding(self):
        """
        Two Transfer-Encoding: chunked headers are rejected.
        """
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )

    def test_chunkedAccepted(self):
        """
        A well-formed chunked body (with extensions and trailers) is read.
        """
        request = self.assertAccepted(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\n",
            body=b"hello!",
        )
        self.assertEqual(request.bodyLength, 6)

    def chunked(self, body):
        return self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body
        )

    def test_nonHexChunkSize(self):
        """
        A chunk size that is not hexadecimal is rejected.
        """
        self.chunked(b"zz\r\nhello\r\n0\r\n\r\n")

    def test_prefixedChunkSize(self):
        """
        A 0x-prefixed chunk size is rejected.
        """
        self.chunked(b"0x5\r\nhello\r\n0\r\n\r\n")

    def test_negativeChunkSize(self):
        """
        A negative chunk size is rejected.
        """
        self.chunked(b"-5\r\nhello\r\n0\r\n\r\n")

    def test_overflowingChunkSize(self):
        """
        A chunk size of more than 16 hex digits (a 64-bit overflow
        elsewhere) is rejected, even before its line ends.
        """
        self.chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n")
        self.chunked(b"0" * 17)

    def test_missingCRLFAfterChunk(self):
        """
        Chunk data not followed by CRLF is rejected.
        """
        self.chunked(b"5\r\nhelloXX0\r\n\r\n")

    def test_bareLFChunk(self):
        """
        A chunk size line ended by a bare LF is rejected.
        """
        self.chunked(b"5\nhello\r\n0\r\n\r\n")

    def test_obsFold(self):
        """
        A header continued on a line starting with a space or tab is rejected.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n\ttwo\r\n\r\n")

    def test_leadingSpaceHeader(self):
        """
        A first header line starting with a space is rejected.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n")

    def test_bareCRInValue(self):
        """
        A bare CR in a header value is rejected.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\rtwo\r\n\r\n")

    def test_bareLFInValue(self):
        """
        A bare LF in a header value is rejected.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\nX-B: two\r\n\r\n")

    def test_nulInValue(self):
        """
        A NUL in a header value is rejected.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\x00two\r\n\r\n")

    def test_spaceBeforeColon(self):
        """
        A space between a header name and its colon is rejected.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")

    def test_invalidHeaderNames(self):
        """
        Header names with non-token characters, or none, are rejected.
        """
        for name in [b"X A", b"X(A)", b"X\x01A", b"X\xe9", b"", b"X/A"]:
            self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": v\r\n\r\n")

    def test_headerWithoutColon(self):
        """
        A header line without a colon is rejected.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n")

    def test_badMethod(self):
        """
        A method that is not a token is rejected.
        """
        self.assertRejected(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertRejected(b"G\xc3\xa9T / HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_badVersion(self):
        """
        Versions other than HTTP/1.0 and HTTP/1.1 are rejected.
        """
        for version in [b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1", b"HTTP/1.1 "]:
            self.assertRejected(b"GET / " + version + b"\r\nHost: a\r\n\r\n")

    def test_junkRequestLine(self):
        """
        Request lines that are not three single-space-separated parts are
        rejected.
        """
        for line in [b"junk", b"GET /", b"GET  / HTTP/1.1", b"GET / HTTP/1.1 x", b"\x16\x03\x01"]:
            self.assertRejected(line + b"\r\nHost: a\r\n\r\n")

    def test_badTargets(self):
        """
        Targets with non-ASCII or control bytes, or not in one of the four
        request-target forms for their method, are rejected.
        """
        for line in [
            b"GET junk HTTP/1.1",
            b"GET /caf\xc3\xa9 HTTP/1.1",
            b"GET /\x7f HTTP/1.1",
            b"GET * HTTP/1.1",
            b"GET ftp://a/ HTTP/1.1",
            b"GET http://user@a/ HTTP/1.1",
            b"GET http:///x HTTP/1.1",
            b"CONNECT /x HTTP/1.1",
        ]:
            self.assertRejected(line + b"\r\nHost: a\r\n\r\n")

    def test_absoluteForm(self):
        """
        An absolute-form target becomes the path, and its authority the Host.
        """
        request = self.assertAccepted(b"GET HTTP://b.example:8080?q=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(request.uri, b"/?q=1")
        self.assertEqual(request.requestHeaders.getRawHeaders(b"host"), [b"b.example:8080"])

    def test_http10TransferEncoding(self):
        """
        Transfer-Encoding on an HTTP/1.0 request is rejected.
        """
        self.assertRejected(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )

    def test_missingHost(self):
        """
        An HTTP/1.1 request without Host is rejected; HTTP/1.0 needs none.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\n\r\n")
        self.assertAccepted(b"GET / HTTP/1.0\r\n\r\n")

    def test_repeatedOrInvalidHost(self):
        """
        Two Host headers, or a Host with characters no host has, are rejected.
        """
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        for host in [b"a b", b"a/b", b"evil@good", b"a,b", b"a\\b"]:
            self.assertRejected(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")

    def test_jsonError(self):
        """
        A client preferring JSON gets the error as JSON.
        """
        transport = self.send(
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\nHost: b\r\n\r\n"
        )
        [(status, headers, body)] = parseResponses(transport.value())
        self.assertEqual(headers[b"content-type"], [b"application/json"])
        self.assertEqual(json.loads(body)["error"], "bad-request")
        self.assertEqual(json.loads(body)["status"], 400)

    def test_nothingParsedAfterError(self):
        """
        Bytes after a rejected request, even a valid request, are ignored.
        """
        transport = self.assertRejected(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)


class LimitTests(ListenerTestCase):
    """
    Heads and bodies above the listener's limits get 414, 431 or 413.
    """

    def test_headersTooLarge(self):
        """
        A head larger than maxHeaderBytes is answered 431.
        """
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(20))
        self.assertRejected(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n",
            431, "headers-too-large", maxHeaderBytes=1024,
        )

    def test_headersAtLimit(self):
        """
        A head of exactly maxHeaderBytes (CRLFs included) is accepted.
        """
        head = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
        head += b"v" * (200 - len(head) - 4) + b"\r\n\r\n"
        self.assertEqual(len(head), 200)
        self.assertAccepted(head, maxHeaderBytes=200)

    def test_defaultHeaderLimit(self):
        """
        The default limit is 64 KiB: a 20 KiB head (Twisted alone refuses
        16 KiB) is accepted, a 70 KiB one is answered 431.
        """
        self.assertAccepted(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 20000 + b"\r\n\r\n")
        self.assertRejected(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 70000 + b"\r\n\r\n",
            431, "headers-too-large",
        )

    def test_partialHeaderLineTooLarge(self):
        """
        A header line still arriving is answered 431 as soon as it crosses
        the limit.
        """
        self.assertRejected(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 2000, 431, "headers-too-large",
            maxHeaderBytes=1024,
        )

    def test_tooManyHeaders(self):
        """
        More than 500 header fields are answered 431.
        """
        headers = b"".join(b"X-%d: v\r\n" % (i,) for i in range(501))
        self.assertRejected(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n", 431, "headers-too-large"
        )

    def test_requestLineTooLong(self):
        """
        A request line over 8 KiB is answered 414.
        """
        self.assertRejected(
            b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "uri-too-long"
        )

    def test_partialRequestLineTooLong(self):
        """
        A request line still arriving is answered 414 once past 8 KiB.
        """
        self.assertRejected(b"GET /" + b"a" * 8200, 414, "uri-too-long")

    def test_bodyTooLargeFromContentLength(self):
        """
        A Content-Length above maxBodyBytes is answered 413 from the header,
        before any of the body is read, even with Expect: 100-continue.
        """
        self.makeSite(maxBodyBytes=10)
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 11\r\n\r\nhello"
        )
        self.assertRejectedOn(transport, 413, "body-too-large")
        self.assertNotIn(b"100 Continue", transport.value())
        [request] = channel.requests
        self.assertIsNone(request.content)
        self.assertEqual(request.bodyLength, 0)

    def test_bodyAtLimit(self):
        """
        A body of exactly maxBodyBytes is accepted.
        """
        self.assertAccepted(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789",
            body=b"0123456789", maxBodyBytes=10,
        )

    def test_chunkedBodyTooLarge(self):
        """
        A chunked body is answered 413 as soon as it crosses maxBodyBytes.
        """
        self.makeSite(maxBodyBytes=10)
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n"
        )
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"8\r\n0123")
        self.assertRejectedOn(transport, 413, "body-too-large")
        channel.dataReceived(b"4567\r\n0\r\n\r\n")
        self.assertEqual(self.resource.requests, [])

    def test_requestLimitHook(self):
        """
        Each request carries the site's maxBodyBytes, to be lowered per route.
        """
        request = self.assertAccepted(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", maxBodyBytes=1234)
        self.assertIsInstance(request, GolbRequest)
        self.assertEqual(request.maxBodyBytes, 1234)


class TimeoutTests(ListenerTestCase):
    """
    Slow requests get 408; idle connections are closed silently; responses
    are never cut by these timeouts.
    """

    def test_slowHeaders(self):
        """
        Headers not complete requestHeaderTimeout after the first byte: 408.
        """
        self.makeSite()
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n")
        self.clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertRejectedOn(transport, 408, "request-timeout")

    def test_slowLoris(self):
        """
        A client dribbling header bytes is cut requestHeaderTimeout after its
        first byte, however steadily it sends.
        """
        self.makeSite()
        channel, transport = self.connect()
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"z" * 100:
            channel.dataReceived(bytes([byte]))
            self.clock.advance(0.25)
            if transport.disconnecting:
                break
        self.assertRejectedOn(transport, 408, "request-timeout")
        self.assertEqual(self.clock.seconds(), 10.0)

    def test_slowBody(self):
        """
        The timeout covers the body too.
        """
        self.makeSite(requestHeaderTimeout=5)
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
        self.clock.advance(5)
        self.assertRejectedOn(transport, 408, "request-timeout")

    def test_idleClosedSilently(self):
        """
        A connection that sends nothing is closed after idleTimeout, with no
        response.
        """
        self.makeSite()
        channel, transport = self.connect()
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_idleKeepAlive(self):
        """
        After a response, a kept-alive connection is closed silently after
        idleTimeout without a new request.
        """
        self.makeSite()
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(parseResponses(transport.value())[0][0], 200)
        transport.clear()
        self.clock.advance(60)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_longResponseNotCut(self):
        """
        A response streaming for longer than both timeouts to a client that
        sends nothing is not cut; idleness counts again once it is done.
        """
        self.makeSite(RecordingResource(streaming=True))
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        [request] = self.resource.requests
        for _i in range(10):
            self.clock.advance(100)
            request.write(b"more\n")
        self.assertFalse(transport.disconnecting)
        request.finish()
        self.assertFalse(transport.disconnecting)
        self.clock.advance(60)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())

    def test_timersStopOnDisconnect(self):
        """
        A lost connection leaves no timer behind.
        """
        self.makeSite()
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.site.openConnections, set())


class ConnectionTests(ListenerTestCase):
    """
    Keep-alive, pipelining and the site's own behaviour.
    """

    def test_keepAlive(self):
        """
        HTTP/1.1 connections stay open for more requests.
        """
        self.makeSite()
        channel, transport = self.connect()
        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        channel.dataReceived(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual([r[0] for r in parseResponses(transport.value())], [200, 200])
        self.assertFalse(transport.disconnecting)
        self.assertEqual([r.uri for r in self.resource.requests], [b"/1", b"/2"])

    def test_pipelining(self):
        """
        Pipelined requests are answered in order.
        """
        self.makeSite()
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
            b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        responses = parseResponses(transport.value())
        self.assertEqual([r[2] for r in responses], [b"ok:x", b"ok:", b"ok:"])
        self.assertEqual([r.uri for r in self.resource.requests], [b"/1", b"/2", b"/3"])

    def test_pipelinedBadRequest(self):
        """
        A bad request pipelined after a good one gets its 400 after the good
        one's response.
        """
        self.makeSite()
        channel, transport = self.connect()
        channel.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        responses = parseResponses(transport.value())
        self.assertEqual([r[0] for r in responses], [200, 200, 400])
        self.assertEqual(len(self.resource.requests), 2)
        self.assertTrue(transport.disconnecting)

    def test_connectionClose(self):
        """
        Connection: close closes the connection after the response.
        """
        self.makeSite()
        channel, transport = self.connect()
        channel.dataReceived(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n"
        )
        [(status, headers, body)] = parseResponses(transport.value())
        self.assertEqual(headers[b"connection"], [b"close"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.resource.requests), 1)

    def test_connectionCloseAmongTokens(self):
        """
        C{close} is found among comma-separated Connection tokens, in any
        case and in any Connection header.
        """
        for headers in (b"Connection: X-Foo, Close\r\n",
                        b"Connection: keep-alive\r\nConnection: x,close\r\n"):
            self.makeSite()
            channel, transport = self.connect()
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
            [(status, responseHeaders, body)] = parseResponses(transport.value())
            self.assertEqual(responseHeaders[b"connection"], [b"close"], headers)
            self.assertTrue(transport.disconnecting, headers)

    def test_responseHeaders(self):
        """
        Responses carry Date but no Server header nor a default Content-Type.
        """
        class Empty(Resource):
            isLeaf = True

            def render(self, request):
                return b""

        self.makeSite(Empty())
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        [(status, headers, body)] = parseResponses(transport.value())
        self.assertIn(b"date", headers)
        self.assertNotIn(b"server", headers)
        self.assertNotIn(b"content-type", headers)

    def test_sameStateAsTwisted(self):
        """
        A new GolbRequest holds everything Twisted's own Request sets up
        (golb inlines that set-up), with the same values where they do
        not depend on the instance.
        """
        from twisted.web.server import Request

        self.makeSite()
        channel, transport = self.connect()
        twisted = Request(channel, parsePOSTFormSubmission=False)
        golb = GolbRequest(channel)
        self.assertLessEqual(set(vars(twisted)), set(vars(golb)))
        for name, value in vars(twisted).items():
            if name not in ("requestHeaders", "responseHeaders"):
                self.assertEqual(getattr(golb, name), value, name)

    def test_query(self):
        """
        The request's path, arguments and URI are split as Twisted does.
        """
        request = self.assertAccepted(b"GET /a%20b?x=1&y=&x=2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(request.uri, b"/a%20b?x=1&y=&x=2")
        self.assertEqual(request.path, b"/a%20b")
        self.assertEqual(request.args, {b"x": [b"1", b"2"], b"y": [b""]})
        self.assertEqual(request.postpath, [b"a b"])
        request = self.assertAccepted(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(request.args, {})

    def test_watchLost(self):
        """
        A watcher of the request hears of the connection lost before the
        response is done, once; after it is done, nothing.
        """
        self.makeSite(RecordingResource(streaming=True))
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        [request] = self.resource.requests
        lost = []
        request.watchLost(lost.append)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([reason.type for reason in lost], [ConnectionDone])

        self.makeSite()
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        [request] = self.resource.requests
        request.watchLost(lost.append)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(lost), 1)

    def test_openConnections(self):
        """
        The site tracks its open connections.
        """
        self.makeSite()
        channel, transport = self.connect()
        self.assertIsInstance(channel, GolbChannel)
        self.assertEqual(self.site.openConnections, {channel})
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.openConnections, set())

    def test_noAccessLog(self):
        """
        The site writes no Twisted access log and starts no timer for it.
        """
        self.makeSite()
        self.site.doStart()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertAccepted(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.site.doStop()

    def test_scheme(self):
        """
        scheme() is https over TLS, http otherwise.
        """
        request = self.assertAccepted(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(request.scheme(), "http")
        self.makeSite()
        channel, transport = self.connect()
        directlyProvides(transport, ISSLTransport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.resource.requests[0].scheme(), "https")


class ClientAddressTests(ListenerTestCase):
    """
    clientAddress() believes forwarding headers from trusted proxies only.
    """

    def addressFor(self, peer, headers=b"", trusted=("127.0.0.0/8", "10.0.0.0/8")):
        self.makeSite(trustedProxies=trusted)
        channel, transport = self.connect(peer=peer)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
        [request] = self.resource.requests
        return request.clientAddress()

    def test_noHeaders(self):
        """
        Without forwarding headers the peer is the client.
        """
        self.assertEqual(self.addressFor("10.1.1.1"), "10.1.1.1")

    def test_untrustedPeerSpoofing(self):
        """
        An untrusted peer's X-Forwarded-For and Forwarded are ignored.
        """
        self.assertEqual(
            self.addressFor(
                "203.0.113.9", b"X-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n"
            ),
            "203.0.113.9",
        )

    def test_noTrustedProxies(self):
        """
        With no trusted proxies, even a loopback peer's headers are ignored.
        """
        self.assertEqual(
            self.addressFor("127.0.0.1", b"X-Forwarded-For: 1.2.3.4\r\n", trusted=()),
            "127.0.0.1",
        )

    def test_trustedPeer(self):
        """
        Behind trusted proxies the right-most untrusted address is the
        client, whatever the client itself put further left.
        """
        self.assertEqual(
            self.addressFor(
                "10.0.0.1",
                b"X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\n"
                b"X-Forwarded-For: 10.0.0.5, 127.0.0.1\r\n",
            ),
            "198.51.100.7",
        )

    def test_allTrusted(self):
        """
        When every hop is trusted, the left-most one is the client.
        """
        self.assertEqual(
            self.addressFor("10.0.0.1", b"X-Forwarded-For: 10.9.9.9, 10.0.0.2\r\n"),
            "10.9.9.9",
        )

    def test_garbageHop(self):
        """
        A hop that is not an address stops the walk at the last trusted hop.
        """
        self.assertEqual(
            self.addressFor("10.0.0.1", b"X-Forwarded-For: 1.2.3.4, nonsense, 10.0.0.2\r\n"),
            "10.0.0.2",
        )

    def test_forwarded(self):
        """
        Without X-Forwarded-For, Forwarded for= is used, quoted IPv6 too.
        """
        self.assertEqual(
            self.addressFor(
                "10.0.0.1",
                b'Forwarded: for="[2001:db8::17]:4711";proto=https, For=10.0.0.3;by=x\r\n',
            ),
            "2001:db8::17",
        )

    def test_ipv6PeerAndMapped(self):
        """
        IPv6 peers work, and IPv4-mapped addresses are compared as IPv4.
        """
        self.assertEqual(
            self.addressFor("::ffff:10.0.0.1", b"X-Forwarded-For: 192.0.2.1:5555\r\n"),
            "192.0.2.1",
        )
        self.assertEqual(self.addressFor("2001:db8::1"), "2001:db8::1")

    def test_cached(self):
        """
        The address is computed once per request.
        """
        self.addressFor("10.0.0.1", b"X-Forwarded-For: 192.0.2.1\r\n")
        request = self.resource.requests[0]
        request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"192.0.2.99"])
        self.assertEqual(request.clientAddress(), "192.0.2.1")

    def test_parseAddress(self):
        """
        parseAddress accepts the usual spellings and refuses the rest.
        """
        self.assertEqual(parseAddress(b" 1.2.3.4:80 "), ipaddress.ip_address("1.2.3.4"))
        self.assertEqual(parseAddress('"[::1]"'), ipaddress.ip_address("::1"))
        for text in [b"unknown", b"_hidden", b"", b"\xff", b"1.2.3.4.5"]:
            self.assertIsNone(parseAddress(text))


_FRAGMENTS = [
    b"GET", b"POST", b" ", b"/", b"/x?y=1", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\r",
    b"\n", b"Host: a", b"Content-Length: ", b"Transfer-Encoding: ", b"chunked", b"5",
    b"0", b"hello", b",", b":", b"\t", b"\x00", b"\r\n\r\n", b"0\r\n\r\n",
]


_REQUEST_LINES = [
    b"GET / HTTP/1.1", b"POST /p?q=1 HTTP/1.1", b"GET / HTTP/1.0", b"GET http://h/x HTTP/1.1",
    b"G T / HTTP/1.1", b"GET x HTTP/1.1", b"OPTIONS /o HTTP/1.1",
]
_HEADERS = [
    b"Host: a", b"Host: a", b"Host: a", b"Content-Length: 5", b"Content-Length: 5, 5",
    b"Content-Length: 3", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip",
    b"Connection: close", b" folded", b"X-A: b", b"Accept: application/json",
]
_BODIES = [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"abc"]


class GarbageTests(ListenerTestCase):
    """
    Whatever bytes arrive, the channel neither raises nor passes on a
    request that is not well-formed.
    """

    def feed(self, data, step):
        """
        Feed C{data} in slices of C{step} bytes, let every timer fire, and
        check the invariants.
        """
        self.makeSite()
        channel, transport = self.connect()
        for start in range(0, len(data), step):
            channel.dataReceived(data[start:start + step])
        self.clock.advance(100)
        channel.connectionLost(Failure(ConnectionDone()))
        output = transport.value()
        statuses = [status for status, headers, body in parseResponses(output)]
        self.assertEqual(statuses.count(200), len(self.resource.requests))
        self.assertTrue(all(s == 200 or 400 <= s < 500 for s in statuses), output)
        for request in self.resource.requests:
            self.assertTrue(request.method and set(request.method) <= _TOKEN)
            self.assertTrue(request.uri.startswith(b"/"))
            self.assertIn(request.clientproto, (b"HTTP/1.0", b"HTTP/1.1"))
            headers = request.requestHeaders
            lengths = headers.getRawHeaders(b"content-length", [])
            self.assertLessEqual(len(lengths), 1)
            if lengths:
                self.assertFalse(headers.hasHeader(b"transfer-encoding"))
                self.assertEqual(int(lengths[0]), request.bodyLength)
            for _name, values in headers.getAllRawHeaders():
                for value in values:
                    self.assertFalse(set(value) & set(b"\r\n\x00"))
        self.assertEqual(self.flushLoggedErrors(), [])
        return len(self.resource.requests)

    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=8)), max_size=40),
        st.integers(min_value=1, max_value=64),
    )
    def test_garbage(self, pieces, step):
        """
        Random bytes, fed in random-sized slices, get a 4xx or nothing.
        """
        self.feed(b"".join(pieces), step)

    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(_REQUEST_LINES),
                st.lists(st.sampled_from(_HEADERS), max_size=5),
                st.sampled_from(_BODIES),
            ),
            min_size=1, max_size=3,
        ),
        st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.binary(max_size=3))),
        st.integers(min_value=1, max_value=64),
    )
    def test_nearlyValid(self, requests, mutation, step):
        """
        Pipelined requests built from valid and invalid parts, perhaps with a
        few bytes spliced in, reach the resource only when well-formed, and
        everything else gets a 4xx.
        """
        data = b"".join(
            line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
            for line, headers, body in requests
        )
        if mutation is not None:
            where = mutation[0] % (len(data) + 1)
            data = data[:where] + mutation[1] + data[where:]
        self.feed(data, step)


class _RawClient(protocol.Protocol):
    """
    Sends bytes and collects the answer until the server closes.
    """

    def __init__(self, data):
        self.data = data
        self.received = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.received))


class LoopbackTests(ListenerTestCase):
    """
    The listener over real loopback TCP.
    """

    @defer.inlineCallbacks
    def exchange(self, data, **siteArgs):
        from twisted.internet import reactor

        self.resource = RecordingResource()
        site = GolbSite(self.resource, reactor=reactor, **siteArgs)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = _RawClient(data)
        creator = protocol.ClientCreator(reactor, lambda: client)
        yield creator.connectTCP("127.0.0.1", port.getHost().port)
        received = yield client.done
        return received

    @defer.inlineCallbacks
    def test_smugglingOverTCP(self):
        """
        Over real TCP a smuggling attempt gets golb's 400 and a closed
        connection, and the smuggled request is never seen.
        """
        received = yield self.exchange(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        [(status, headers, body)] = parseResponses(received)
        self.assertEqual((status, headers[b"x-golb-error"]), (400, [b"bad-request"]))
        self.assertEqual(self.resource.requests, [])

    @defer.inlineCallbacks
    def test_keepAliveOverTCP(self):
        """
        Over real TCP two requests share a connection; the second asks to
        close it, and the client sees the real client address used.
        """
        received = yield self.exchange(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
            b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            b"X-Forwarded-For: 192.0.2.5\r\n\r\n",
            trustedProxies=["127.0.0.0/8"],
        )
        responses = parseResponses(received)
        self.assertEqual([(r[0], r[2]) for r in responses], [(200, b"ok:hi"), (200, b"ok:")])
        self.assertEqual(
            [r.clientAddress() for r in self.resource.requests], ["127.0.0.1", "192.0.2.5"]
        )
