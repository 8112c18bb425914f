"""
The HTTP/1.1 connection golb's listeners speak to clients.

L{GolbChannel} is Twisted's L{HTTPChannel} made strict: every request whose
framing is ambiguous (the stuff of request smuggling) or that breaks the limits
of its listener is answered by golb's own error response and the connection
closed, before any resource sees it.

What Twisted (26.4 and 26.10) already rejects, with a bare 400 that
L{GolbChannel._respondToBadRequestAndDisconnect} turns into golb's 400:
request lines that are not three space-separated parts, methods that are not
tokens, versions other than HTTP/1.0 and HTTP/1.1, header lines without a
colon, header names that are not tokens (so also a space before the colon),
NUL in header values (26.10: also CR and LF), a non-digit Content-Length, two
Content-Length or Transfer-Encoding headers, Content-Length together with
Transfer-Encoding, a Transfer-Encoding other than chunked or identity, and
malformed chunks (sizes that are not bare hex, chunk data not followed by
CRLF, chunk-size lines over 1 KiB, bad extension bytes).

What golb adds: obs-fold; CR and LF in values on every version; request
targets that are not printable ASCII or not one of the four RFC 9112 forms;
Transfer-Encoding other than exactly C{chunked}, and on HTTP/1.0; comma lists
and identical duplicates of Content-Length folded into one (differing values
rejected); missing, repeated or malformed Host on HTTP/1.1; a request line
over L{GolbChannel.maxRequestLineBytes} (414), a head over C{maxHeaderBytes}
or with more than L{GolbChannel.maxHeaderCount} fields (431), a body over the
request's C{maxBodyBytes} (413, from Content-Length before reading, or as
soon as a chunked body crosses it) and a request not read in time (408).
"""

import re
import sys
import time
from typing import Optional

from twisted.logger import Logger
from twisted.web.http import (
    HTTPChannel,
    _ChunkedTransferDecoder,
    _MalformedChunkedDataError,
    datetimeToString,
)

from golb.errors import GolbError, rawErrorResponse, wantsJSON

__all__ = ["GolbChannel", "httpDate"]

_date = [0, b""]


def httpDate() -> bytes:
    """
    The current time as an HTTP C{Date} value, formatted once a second.
    """
    now = int(time.time())
    if now != _date[0]:
        _date[0] = now
        _date[1] = datetimeToString(now)
    return _date[1]


# Where the channel is in the life of one request.
_IDLE = "idle"  # waiting for (the rest of) a request line
_HEAD = "head"  # reading header lines
_BODY = "body"  # reading the body
_HANDLING = "handling"  # the request is with the resource
_CLOSING = "closing"  # the last response is out, the connection will close
_DEAD = "dead"  # answered with an error; ignore everything

_READING = frozenset([_IDLE, _HEAD, _BODY])

# VCHAR only: no space, controls, DEL or non-ASCII bytes in a request target.
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_ABSOLUTE = re.compile(rb"(?i)https?://([^/?#@]+)([/?][\x21-\x7e]*)?\Z")
_AUTHORITY = re.compile(rb"[A-Za-z0-9._~%!$&'()*+;=\[\]:-]+:[0-9]+\Z")
# reg-name / IP-literal with an optional port; no "@", "/", "," or spaces.
_HOST = re.compile(rb"[A-Za-z0-9._~%!$&'()*+;=\[\]:-]*\Z")
_DIGITS = re.compile(rb"[0-9]+\Z")

# A Content-Length with more digits than this is answered 413 without int().
_MAX_LENGTH_DIGITS = 18
_HUGE = 10**_MAX_LENGTH_DIGITS
_MAX_CHUNK_SIZE_DIGITS = 16


def _badTarget(method: bytes, target: bytes) -> bool:
    """
    Whether C{target} is not a request-target RFC 9112 section 3.2 allows
    for C{method}: origin-form, absolute-form (http/https only, without
    userinfo), authority-form for CONNECT, asterisk-form for OPTIONS.
    """
    if _TARGET.match(target) is None:
        return True
    if method == b"CONNECT":
        return _AUTHORITY.match(target) is None
    if target[:1] == b"/":
        return False
    if target == b"*":
        return method != b"OPTIONS"
    return _ABSOLUTE.match(target) is None


def _parseContentLength(value: bytes) -> Optional[int]:
    """
    Parse a Content-Length value, which may be a comma list of identical
    lengths (RFC 9110 section 8.6).

    @return: the length, or L{None} when the value is invalid.
    """
    lengths = set()
    for part in value.split(b","):
        part = part.strip(b" \t")
        if _DIGITS.match(part) is None:
            return None
        part = part.lstrip(b"0") or b"0"
        lengths.add(_HUGE if len(part) > _MAX_LENGTH_DIGITS else int(part))
    if len(lengths) != 1:
        return None
    return lengths.pop()


class _StrictChunkedDecoder(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder, refusing chunk sizes of more than 16 hex
    digits (which would overflow a 64-bit length in other HTTP parsers).
    """

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        end = self._buffer.find(b"\r\n", self._start)
        if end == -1:
            end = len(self._buffer)
        semicolon = self._buffer.find(b";", 0, end)
        if semicolon != -1:
            end = semicolon
        if end > _MAX_CHUNK_SIZE_DIGITS:
            raise _MalformedChunkedDataError("Chunk size is too long.")
        return _ChunkedTransferDecoder._dataReceived_CHUNK_LENGTH(self)


class GolbChannel(HTTPChannel):
    """
    A strict HTTP/1.1 server connection; see the module docstring.

    Its limits come from C{self.site}, a L{golb.listener.GolbSite}, when the
    connection is made.

    @ivar maxHeaderBytes: the most bytes a request line plus its headers may
        take, CRLFs included; more is answered 431.
    @ivar maxHeaderCount: the most header fields a request may have (431).
    @ivar maxRequestLineBytes: the longest request line allowed (414).
    @ivar requestHeaderTimeout: seconds from the first byte of a request until
        all of it (head and body) must have arrived (408), or L{None}.
    """

    _log = Logger()

    maxHeaderBytes = 65536
    maxHeaderCount = 500
    maxRequestLineBytes = 8192
    requestHeaderTimeout: Optional[float] = 10.0

    # Twisted's own limits are replaced by golb's, which are checked first.
    maxHeaders = sys.maxsize
    totalHeadersSize = sys.maxsize

    _golbState = _IDLE
    _golbDraining = False
    _golbHeadBytes = 0
    _golbHeaderCount = 0
    _golbContentLength: Optional[int] = None
    _golbRequestTimer = None

    def connectionMade(self):
        """
        Take the limits from the site and count the connection as open.
        """
        site = self.site
        self.maxHeaderBytes = site.maxHeaderBytes
        self.maxHeaderCount = site.maxHeaderCount
        self.maxRequestLineBytes = site.maxRequestLineBytes
        self.requestHeaderTimeout = site.requestHeaderTimeout
        # LineReceiver drops lines longer than this; ours answers 414/431.
        self.MAX_LENGTH = max(self.maxHeaderBytes, self.maxRequestLineBytes)
        site.openConnections.add(self)
        HTTPChannel.connectionMade(self)

    def connectionLost(self, reason):
        """
        Stop the timers and forget the connection.
        """
        self._golbCancelRequestTimer()
        self.site.openConnections.discard(self)
        HTTPChannel.connectionLost(self, reason)

    # Answering errors

    def rejectAndClose(self, error: GolbError) -> None:
        """
        Answer the request being read with C{error} and close the connection.
        Nothing more received on it is parsed, and no resource is called.
        Once a request is with its resource this only closes the connection.

        @param error: what to answer.
        """
        state = self._golbState
        if state == _DEAD:
            return
        self._golbState = _DEAD
        self._golbCancelRequestTimer()
        self.setTimeout(None)
        if state not in _READING:
            # A response may be on the wire: no error can be written now.
            self.loseConnection()
            return
        asJSON = False
        if self.requests:
            accept = self.requests[-1].requestHeaders.getRawHeaders(b"accept")
            asJSON = bool(accept) and wantsJSON(accept[0])
        self._log.debug(
            "{peer} rejected: {status} {code}",
            peer=self.transport.getPeer(), status=error.status, code=error.code,
        )
        observatory = getattr(self.site, "observatory", None)
        if observatory is not None and observatory.active:
            peer = getattr(self.transport.getPeer(), "host", "") if self.transport else ""
            observatory.requestRejected(self.site.listenerName, error.status, error.code,
                                        peer or "")
        self.transport.write(
            rawErrorResponse(error.status, error.code, error.message, asJSON)
        )
        self.loseConnection()
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def _respondToBadRequestAndDisconnect(self):
        """
        Everything Twisted finds malformed gets golb's 400, not a bare one.
        """
        self.rejectAndClose(GolbError("bad-request"))

    def _golbBad(self, message: Optional[str] = None) -> bool:
        self.rejectAndClose(GolbError("bad-request", message))
        return False

    def lineLengthExceeded(self, line):
        """
        A line longer than C{MAX_LENGTH}: 414 for a request line, else 431.
        """
        if self._golbState == _IDLE:
            self.rejectAndClose(GolbError("uri-too-long"))
        elif self._golbState == _HEAD:
            self.rejectAndClose(GolbError("headers-too-large"))
        else:
            self.loseConnection()

    # Timeouts

    def _golbCancelRequestTimer(self) -> None:
        timer, self._golbRequestTimer = self._golbRequestTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _golbRequestTimedOut(self) -> None:
        self._golbRequestTimer = None
        if self._golbState in _READING:
            self.rejectAndClose(GolbError("request-timeout"))

    def timeoutConnection(self):
        """
        The idle timeout: a connection idle between requests is closed
        silently; one idle in the middle of a request is answered 408.
        """
        if self._golbState in _READING and (
            self._golbState != _IDLE or self._buffer.strip(b"\r\n")
            or self._golbRequestTimer is not None
        ):
            self.rejectAndClose(GolbError("request-timeout"))
        else:
            HTTPChannel.timeoutConnection(self)

    # Parsing

    def dataReceived(self, data):
        """
        Start the request timer on the first byte of a request, parse, then
        check that a partial line does not already break a limit.
        """
        state = self._golbState
        if state == _DEAD:
            return
        if (
            state == _IDLE
            and self._golbRequestTimer is None
            and self.requestHeaderTimeout is not None
            and data.strip(b"\r\n")
        ):
            self._golbRequestTimer = self.callLater(
                self.requestHeaderTimeout, self._golbRequestTimedOut
            )
        HTTPChannel.dataReceived(self, data)
        if not self.line_mode:
            return
        state = self._golbState
        pending = len(self._buffer)
        if state == _IDLE and pending > self.maxRequestLineBytes:
            self.rejectAndClose(GolbError("uri-too-long"))
        elif state == _HEAD and self._golbHeadBytes + pending > self.maxHeaderBytes:
            self.rejectAndClose(GolbError("headers-too-large"))

    def lineReceived(self, line):
        """
        Check each line of a request head before Twisted parses it.
        """
        state = self._golbState
        if state == _DEAD:
            return
        if state == _IDLE:
            if line:
                if len(line) > self.maxRequestLineBytes:
                    self.rejectAndClose(GolbError("uri-too-long"))
                    return
                parts = line.split(b" ")
                if len(parts) == 3 and _badTarget(parts[0], parts[1]):
                    self._golbBad()
                    return
                self._golbState = _HEAD
                self._golbHeadBytes = len(line) + 2
                self._golbHeaderCount = 0
                self._golbContentLength = None
        elif state == _HEAD:
            self._golbHeadBytes += len(line) + 2
            if self._golbHeadBytes > self.maxHeaderBytes:
                self.rejectAndClose(GolbError("headers-too-large"))
                return
            if not line:
                self._golbState = _BODY
            elif line[:1] in (b" ", b"\t"):
                self._golbBad("Obsolete line folding is not allowed.")
                return
        HTTPChannel.lineReceived(self, line)

    def headerReceived(self, line):
        """
        Check one header field; fold duplicate Content-Lengths into one.
        """
        if self._golbState == _DEAD:
            return False
        self._golbHeaderCount += 1
        if self._golbHeaderCount > self.maxHeaderCount:
            self.rejectAndClose(GolbError("headers-too-large"))
            return False
        name, colon, value = line.partition(b":")
        if not colon:
            return self._golbBad()
        value = value.strip(b" \t")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            return self._golbBad()
        lowerName = name.lower()
        if lowerName == b"content-length":
            length = _parseContentLength(value)
            if length is None:
                return self._golbBad("Invalid Content-Length.")
            if self._golbContentLength is not None:
                if length != self._golbContentLength:
                    return self._golbBad("Conflicting Content-Length headers.")
                return True
            self._golbContentLength = length
            line = b"Content-Length: %d" % (length,)
        elif lowerName == b"transfer-encoding":
            if value.lower() != b"chunked":
                return self._golbBad("Only Transfer-Encoding: chunked is supported.")
            if not HTTPChannel.headerReceived(self, line):
                return False
            decoder = self._transferDecoder
            self._transferDecoder = _StrictChunkedDecoder(
                decoder.dataCallback, decoder.finishCallback
            )
            return True
        return HTTPChannel.headerReceived(self, line)

    def allHeadersReceived(self):
        """
        Check the head as a whole (framing, Host, body size), then let
        Twisted set up the body.
        """
        if self._golbState == _DEAD:
            return
        request = self.requests[-1]
        headers = request.requestHeaders
        version = self._version
        if headers.hasHeader(b"transfer-encoding") and version != b"HTTP/1.1":
            self._golbBad("Transfer-Encoding needs HTTP/1.1.")
            return
        hosts = headers.getRawHeaders(b"host")
        if hosts is None:
            if version == b"HTTP/1.1":
                self._golbBad("HTTP/1.1 requests need a Host header.")
                return
        elif len(hosts) != 1 or _HOST.match(hosts[0]) is None:
            self._golbBad("Exactly one valid Host header is needed.")
            return
        limit = request.maxBodyBytes
        if limit is not None and self.length is not None and self.length > limit:
            self.rejectAndClose(GolbError("body-too-large"))
            return
        HTTPChannel.allHeadersReceived(self)

    def rawDataReceived(self, data):
        """
        Body bytes (or pipelined bytes while a request is handled).
        """
        if self._golbState == _DEAD:
            return
        HTTPChannel.rawDataReceived(self, data)

    def allContentReceived(self):
        """
        The request is complete: stop its timer and hand it to the resource.
        """
        if self._golbState == _DEAD:
            return
        self._golbCancelRequestTimer()
        self._golbState = _HANDLING
        HTTPChannel.allContentReceived(self)

    def drain(self) -> None:
        """
        golb is shutting down: close the connection now if it is between
        requests, else after the response in progress (which says
        C{Connection: close} when its head is not out yet).  A request whose
        head is still arriving is answered, then the connection closes.
        """
        self._golbDraining = True
        if self._golbState in (_DEAD, _CLOSING):
            return
        if self._golbState == _IDLE and not self.requests and not self._buffer:
            self._golbState = _CLOSING
            self.loseConnection()
            return
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])

    def checkPersistence(self, request, version):
        """
        Whether the connection stays open after this request: HTTP/1.1 unless
        a C{Connection} header lists C{close} (as a comma-separated token, in
        any of its values: Twisted's own check splits on spaces and misses
        C{close, X-Foo}); never for HTTP/1.0 and 0.9.
        """
        if self._golbDraining:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        tokens = set()
        for value in request.requestHeaders.getRawHeaders(b"connection") or ():
            for token in value.split(b","):
                tokens.add(token.strip().lower())
        if version == b"HTTP/1.1":
            if b"close" in tokens:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                return False
            return True
        return False

    def requestDone(self, request):
        """
        The response is finished: read the next request or close.
        """
        if self._golbState != _DEAD:
            self._golbState = _IDLE if self.persistent else _CLOSING
        HTTPChannel.requestDone(self, request)
