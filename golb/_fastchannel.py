"""
A faster L{GolbChannel}: the same strict HTTP/1.1 server connection, parsing
each request head in one pass instead of one callback per line.

L{GolbChannel} is Twisted's L{HTTPChannel} under golb's checks, so reading one
small request costs a L{LineReceiver} loop, two C{lineReceived} and two
C{headerReceived} calls per header line, a L{Headers.addRawHeader} per field
and a transfer decoder object per body.  L{FastChannel} keeps everything
else (the response side, producers, persistence, pipelining, timeouts,
C{drain}, C{rejectAndClose}) and replaces the reading side: bytes are buffered
until the complete lines of a head are there, then one loop validates them
in the order L{GolbChannel} does (so the same request gets the same answer,
whatever the split of the bytes), fills the request's headers directly and
reads a Content-Length body by slicing (chunked bodies use
L{golb._channel._StrictChunkedDecoder}, like L{GolbChannel}).

Timers: the request timer (408) is one DelayedCall per connection, pushed
to the current request's deadline when it fires early, rather than one made
and cancelled per request; the idle timer is left running while a request
is with its resource and only noted if it fires then (L{HTTPChannel} stops
it and makes a new one around every request).  What a client sees is the
same.
"""

import re

from twisted.web.http import HTTPChannel, _MalformedChunkedDataError, _nameEncoder
from twisted.web.http_headers import Headers, InvalidHeaderName
from twisted.web.iweb import INonQueuedRequestFactory

from golb._channel import (
    _BODY,
    _CLOSING,
    _DEAD,
    _HANDLING,
    _HEAD,
    _HOST,
    _IDLE,
    _READING,
    GolbChannel,
    _badTarget,
    _parseContentLength,
    _StrictChunkedDecoder,
    httpDate,
)
from golb._writes import directWrite, dispatching, holdHead
from golb.errors import GolbError

__all__ = ["FastChannel"]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSIONS = frozenset([b"HTTP/1.1", b"HTTP/1.0"])
_CONTENT_LENGTH = b"Content-Length"
_TRANSFER_ENCODING = b"Transfer-Encoding"
_encodeName = _nameEncoder.encode
_FRAMING = frozenset([_CONTENT_LENGTH, _TRANSFER_ENCODING])
# Twisted's cache of canonical header names (only valid names get in):
# reading it directly saves a call per field.  Empty if it ever goes away.
_canonicalNames = getattr(_nameEncoder, "_canonicalHeaderCache", None)
if not isinstance(_canonicalNames, dict):
    _canonicalNames = {}


class FastChannel(GolbChannel):
    """
    A L{GolbChannel} that parses request heads in one pass; see the module
    docstring.  Usable as C{GolbSite.protocol}; its requests are the site's
    L{golb.listener.GolbRequest}s.
    """

    # Per request, reset by _newRequest.
    _fastScan = 0  # where the next unread line of the head starts
    _fastSearch = 0  # where the search for the next CRLF may start
    _fastEaten = False  # the one empty line before a request line was eaten
    _fastPending = None  # the last header line, checked when the next arrives
    _fastRaw = None  # the request's header dict (Headers._rawHeaders)
    _fastChunked = False
    _fastDecoder = None
    _fastRemaining = 0  # Content-Length body bytes still to read
    _fastIgnore = False  # not persistent: the client's bytes are dropped
    _fastParsing = False
    _fastDeadline = None  # when the request being read is late, or None
    _fastIdleFired = False
    _fastPeer = None
    _fastHost = None
    _fastSecure = False
    _fastTransport = None

    _buffer = b""

    # Request asks for these per request; a connection's never change.

    def _fastAddresses(self):
        transport = self.transport
        self._fastTransport = transport
        self._fastPeer = transport.getPeer()
        self._fastHost = transport.getHost()
        self._fastSecure = GolbChannel.isSecure(self)

    def getPeer(self):
        """
        The remote address, looked up once per transport.
        """
        if self._fastTransport is not self.transport:
            self._fastAddresses()
        return self._fastPeer

    def getHost(self):
        """
        The local address, looked up once per transport.
        """
        if self._fastTransport is not self.transport:
            self._fastAddresses()
        return self._fastHost

    def isSecure(self):
        """
        Whether the transport is TLS, looked up once per transport.
        """
        if self._fastTransport is not self.transport:
            if self.transport is None:
                return GolbChannel.isSecure(self)
            self._fastAddresses()
        return self._fastSecure

    # Timers: one DelayedCall each, pushed back rather than cancelled and
    # made anew for every request.

    def _startRequestTimer(self) -> None:
        """
        A request starts: it must be read within C{requestHeaderTimeout}.
        """
        timeout = self.requestHeaderTimeout
        if timeout is None:
            return
        self._fastDeadline = self.site.clock.seconds() + timeout
        if self._golbRequestTimer is None:
            self._golbRequestTimer = self.callLater(timeout, self._requestTimerFired)

    def _requestTimerFired(self) -> None:
        """
        The request timer is due: answer 408 if the request it was started
        for (or a later one) is still being read and late, else wait for the
        current request's deadline, or for nothing.
        """
        self._golbRequestTimer = None
        deadline = self._fastDeadline
        if deadline is None:
            return
        remaining = deadline - self.site.clock.seconds()
        if remaining > 1e-6:
            self._golbRequestTimer = self.callLater(remaining, self._requestTimerFired)
            return
        self._fastDeadline = None
        self._golbRequestTimedOut()

    def _golbCancelRequestTimer(self) -> None:
        self._fastDeadline = None
        GolbChannel._golbCancelRequestTimer(self)

    def setTimeout(self, period):
        """
        Set the idle timeout; stopping it (C{None}: the connection is
        closing, or L{golb.tunnel.Tunnel} took it over) also stops the
        request timer, which is otherwise left pending between requests.
        """
        if period is None and self._golbRequestTimer is not None:
            self._golbCancelRequestTimer()
        return HTTPChannel.setTimeout(self, period)

    def timeoutConnection(self):
        """
        The idle timeout.  It is not stopped while a request is with its
        resource (L{HTTPChannel} stops and restarts it around every
        request): then it only notes that it fired, and starts again once
        the response is done.  Otherwise as L{GolbChannel.timeoutConnection}.
        """
        state = self._golbState
        if self._handlingRequest and state != _DEAD:
            self._fastIdleFired = True
            return
        if state in _READING and (
            state != _IDLE or self._buffer.strip(b"\r\n") or self._fastDeadline is not None
        ):
            self.rejectAndClose(GolbError("request-timeout"))
        else:
            HTTPChannel.timeoutConnection(self)

    # Writing

    _heldHead = None

    def writeHeaders(self, version, code, reason, headers):
        """
        Write a response head in one piece; while a C{dataReceived} is being
        handled (see L{golb._writes}), keep it back to leave with the first
        body bytes.
        """
        if not isinstance(headers, Headers):
            HTTPChannel.writeHeaders(self, version, code, reason, headers)
            return
        parts = [version, b" ", code, b" ", reason, b"\r\n"]
        raw = headers._rawHeaders
        for name, values in raw.items():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        if b"Date" not in raw:
            # golb's own answers (a proxied response has its backend's)
            parts += (b"Date: ", httpDate(), b"\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        if code != b"101" and self._heldHead is None and holdHead(self):
            self._heldHead = head
        else:
            self.flushHead()
            directWrite(self.transport, head)

    def flushHead(self) -> None:
        """
        Send the response head kept back, if any.
        """
        head = self._heldHead
        if head is not None:
            self._heldHead = None
            if self.transport is not None:
                directWrite(self.transport, head)

    def write(self, data):
        head = self._heldHead
        if head is not None:
            self._heldHead = None
            data = head + data
        directWrite(self.transport, data)

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))

    def loseConnection(self):
        self.flushHead()
        return HTTPChannel.loseConnection(self)

    # Reading

    def dataReceived(self, data):
        """
        Buffer C{data}; parse what can be parsed unless a request is with
        its resource (then keep it for later, as L{HTTPChannel} does).
        """
        if self._golbState == _DEAD or self._fastIgnore:
            return
        with dispatching:
            self._dataReceived(data)

    def _dataReceived(self, data):
        self.resetTimeout()
        if self._handlingRequest:
            dataBuffer = self._dataBuffer
            dataBuffer.append(data)
            if (
                not self._waitingForTransport
                and sum(map(len, dataBuffer)) > self._optimisticEagerReadSize
            ):
                self._networkProducer.pauseProducing()
            return
        if self._golbState == _IDLE and self._fastDeadline is None and data.strip(b"\r\n"):
            # GolbChannel's rule: bytes arriving between requests start the
            # request timer (a request pipelined behind one answered while
            # parsing the same bytes gets none, only the idle timeout);
            # empty lines before a request are ignored (RFC 9112, 2.2)
            self._startRequestTimer()
        if self._buffer:
            self._buffer += data
        else:
            self._buffer = data
        if not self._fastParsing:
            self._parse()

    def _parse(self) -> None:
        """
        Parse requests from C{self._buffer} until it runs dry, a request is
        with its resource or the connection is done.
        """
        self._fastParsing = True
        try:
            while self._buffer:
                state = self._golbState
                if state == _IDLE or state == _HEAD:
                    if not self._parseHead():
                        return
                elif state == _BODY:
                    self._parseBody()
                else:
                    return
                if self._handlingRequest or self._fastIgnore:
                    return
                transport = self.transport
                if transport is None or transport.disconnecting:
                    return
        finally:
            self._fastParsing = False

    def _parseHead(self) -> bool:
        """
        Check every complete line of the head in C{self._buffer}.

        @return: whether the head is complete (and accepted).
        """
        buf = self._buffer
        pos = self._fastScan
        search = self._fastSearch
        if search < pos - 2:
            search = pos - 2
        end = buf.find(b"\r\n\r\n", search)
        if end != -1:
            if end < pos:
                lines = [b""]
            else:
                lines = buf[pos:end].split(b"\r\n")
                lines.append(b"")
            nextPos = end + 4
        else:
            last = buf.rfind(b"\r\n", pos if pos > search else search)
            if last == -1:
                lines = ()
                nextPos = pos
            else:
                lines = buf[pos:last].split(b"\r\n")
                nextPos = last + 2
            self._fastSearch = len(buf) - 3 if len(buf) > 3 else 0
        self._fastScan = nextPos

        state = self._golbState
        complete = False
        index = 0
        count = len(lines)
        if state == _IDLE:
            while index < count:
                line = lines[index]
                index += 1
                if line or not self._fastEaten:
                    if not line:
                        self._fastEaten = True
                        continue
                    if not self._requestLine(line):
                        return False
                    state = _HEAD
                    break
                # a second empty line: Twisted takes it as a request line
                self._newRequest()
                self._respondToBadRequestAndDisconnect()
                return False
            if state == _IDLE:
                # Only empty lines so far: forget them, like LineReceiver.
                if nextPos:
                    self._buffer = buf[nextPos:]
                    self._fastScan = 0
                    self._fastSearch = 0
                if len(self._buffer) > self.maxRequestLineBytes:
                    self.rejectAndClose(GolbError("uri-too-long"))
                return False
            if self._fastIgnore:
                self._buffer = b""
                return False

        headBytes = self._golbHeadBytes
        maxHeaderBytes = self.maxHeaderBytes
        maxHeaderCount = self.maxHeaderCount
        pending = self._fastPending
        raw = self._fastRaw
        while index < count:
            line = lines[index]
            index += 1
            headBytes += len(line) + 2
            if headBytes > maxHeaderBytes:
                self.rejectAndClose(GolbError("headers-too-large"))
                return False
            if line:
                first = line[0]
                if first == 32 or first == 9:
                    self._golbBad("Obsolete line folding is not allowed.")
                    return False
            if pending is not None:
                # _header, inlined for the usual field: a known name that
                # does not frame the body, a clean value, within the count.
                name, colon, value = pending.partition(b":")
                name = _canonicalNames.get(name)
                if (
                    name is None
                    or not colon
                    or name in _FRAMING
                    or self._golbHeaderCount >= maxHeaderCount
                ):
                    if not self._header(pending):
                        return False
                else:
                    value = value.strip(b" \t")
                    if b"\r" in value or b"\n" in value or b"\x00" in value:
                        self._golbHeaderCount += 1
                        return self._golbBad()
                    self._golbHeaderCount += 1
                    values = raw.get(name)
                    if values is None:
                        raw[name] = [value]
                    else:
                        values.append(value)
            if not line:
                complete = True
                break
            pending = line
        self._golbHeadBytes = headBytes
        if not complete:
            self._fastPending = pending
            if headBytes + len(buf) - nextPos > maxHeaderBytes:
                self.rejectAndClose(GolbError("headers-too-large"))
            return False
        self._fastPending = None
        self._buffer = buf[nextPos:]
        self._fastScan = 0
        self._fastSearch = 0
        return self._headComplete()

    def _newRequest(self):
        """
        Create the request for the head being read, as L{HTTPChannel} does
        on a request line.
        """
        factory = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        self._fastRaw = request.requestHeaders._rawHeaders
        return request

    def _requestLine(self, line: bytes) -> bool:
        """
        Check a request line and start its request.

        @return: whether to go on reading the head.
        """
        if len(line) > self.maxRequestLineBytes:
            self.rejectAndClose(GolbError("uri-too-long"))
            return False
        parts = line.split(b" ")
        if len(parts) == 3 and _badTarget(parts[0], parts[1]):
            self._golbBad()
            return False
        self._golbState = _HEAD
        self._golbHeadBytes = len(line) + 2
        self._golbHeaderCount = 0
        self._golbContentLength = None
        if not self.persistent:
            # HTTPChannel drops everything after a non-persistent request.
            self._fastIgnore = True
            return True
        self._newRequest()
        if (
            len(parts) != 3
            or _TOKEN.match(parts[0]) is None
            or parts[2] not in _VERSIONS
        ):
            self._respondToBadRequestAndDisconnect()
            return False
        self._command, self._path, self._version = parts
        return True

    def _header(self, line: bytes) -> bool:
        """
        Check one header field and store it, as L{GolbChannel.headerReceived}
        then L{HTTPChannel.headerReceived} do.
        """
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
        try:
            name = _encodeName(name)
        except InvalidHeaderName:
            name = None
        raw = self._fastRaw
        if name == _CONTENT_LENGTH:
            length = _parseContentLength(value)
            if length is None:
                return self._golbBad("Invalid Content-Length.")
            if self._golbContentLength is not None:
                if length != self._golbContentLength:
                    return self._golbBad("Conflicting Content-Length headers.")
                return True
            self._golbContentLength = length
            if self._fastChunked:
                return self._golbBad()
            raw[_CONTENT_LENGTH] = [b"%d" % (length,)]
            return True
        if name == _TRANSFER_ENCODING:
            if value.lower() != b"chunked":
                return self._golbBad("Only Transfer-Encoding: chunked is supported.")
            if self._fastChunked or self._golbContentLength is not None:
                return self._golbBad()
            self._fastChunked = True
        elif name is None:
            return self._golbBad()
        values = raw.get(name)
        if values is None:
            raw[name] = [value]
        else:
            values.append(value)
        return True

    def _headComplete(self) -> bool:
        """
        The head is read and its fields are fine: check it as a whole
        (L{GolbChannel.allHeadersReceived}), set the body up, and hand over
        a request without a body.

        @return: whether to go on parsing.
        """
        request = self.requests[-1]
        raw = self._fastRaw
        version = self._version
        chunked = self._fastChunked
        if chunked and version != b"HTTP/1.1":
            return self._golbBad("Transfer-Encoding needs HTTP/1.1.")
        hosts = raw.get(b"Host")
        if hosts is None:
            if version == b"HTTP/1.1":
                return self._golbBad("HTTP/1.1 requests need a Host header.")
        elif len(hosts) != 1 or _HOST.match(hosts[0]) is None:
            return self._golbBad("Exactly one valid Host header is needed.")
        length = None if chunked else (self._golbContentLength or 0)
        limit = request.maxBodyBytes
        if limit is not None and length is not None and length > limit:
            self.rejectAndClose(GolbError("body-too-large"))
            return False
        self._golbState = _BODY
        if b"Cookie" in raw:
            request.parseCookies()
        self.persistent = self.checkPersistence(request, version)
        request.gotLength(length)
        expect = raw.get(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and version == b"HTTP/1.1":
            self._send100Continue()
        if chunked:
            self._fastDecoder = _StrictChunkedDecoder(
                request.handleContentChunk, self._chunkedBodyDone
            )
        elif length:
            self._fastRemaining = length
        else:
            self._allContentReceived()
        return True

    def _parseBody(self) -> None:
        """
        Feed the buffered bytes to the body being read.
        """
        data = self._buffer
        self._buffer = b""
        decoder = self._fastDecoder
        if decoder is not None:
            try:
                decoder.dataReceived(data)
            except _MalformedChunkedDataError:
                self._respondToBadRequestAndDisconnect()
            return
        remaining = self._fastRemaining
        request = self.requests[-1]
        if len(data) < remaining:
            self._fastRemaining = remaining - len(data)
            request.handleContentChunk(data)
            return
        self._fastRemaining = 0
        if len(data) == remaining:
            request.handleContentChunk(data)
        else:
            request.handleContentChunk(data[:remaining])
            self._buffer = data[remaining:]
        self._allContentReceived()

    def _chunkedBodyDone(self, rest: bytes) -> None:
        """
        The last chunk (and trailers) are read; C{rest} follows the body.
        """
        self._buffer = rest
        self._allContentReceived()

    def _allContentReceived(self) -> None:
        """
        The request is complete: hand it to its resource, keeping the bytes
        after it for when its response is done.
        """
        if self._golbState == _DEAD:
            return
        self._fastDeadline = None
        self._golbState = _HANDLING
        command = self._command
        path = self._path
        version = self._version
        self._fastEaten = False
        self._fastChunked = False
        self._fastDecoder = None
        self._fastRaw = None
        self._handlingRequest = True
        if self._buffer:
            self._dataBuffer.append(self._buffer)
            self._buffer = b""
        self.requests[-1].requestReceived(command, path, version)
        if (
            self._handlingRequest
            and self._dataBuffer
            and not self._waitingForTransport
            and sum(map(len, self._dataBuffer)) > self._optimisticEagerReadSize
        ):
            self._networkProducer.pauseProducing()

    def allContentReceived(self):
        """
        Not used: see L{_allContentReceived}.
        """
        self._allContentReceived()

    def requestDone(self, request):
        """
        The response is finished: parse the next request or close.
        """
        self.flushHead()
        if self._golbState != _DEAD:
            self._golbState = _IDLE if self.persistent else _CLOSING
        if request is not self.requests[0]:
            raise TypeError
        del self.requests[0]
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        if not self.persistent:
            self.loseConnection()
            return
        self._handlingRequest = False
        if self._fastIdleFired:
            self._fastIdleFired = False
            self.setTimeout(self.timeOut)
        else:
            self.resetTimeout()
        if self._dataBuffer:
            data = b"".join(self._dataBuffer)
            self._dataBuffer = []
            self._buffer = self._buffer + data if self._buffer else data
        if self._buffer and self._golbState == _IDLE:
            # bytes of the next request are already here (pipelined, even in
            # the same packet): it must arrive within the request timeout
            if self._fastDeadline is None and self._buffer.strip(b"\r\n"):
                self._startRequestTimer()
            if not self._fastParsing:
                self._parse()
