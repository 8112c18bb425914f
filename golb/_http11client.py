"""
The wire-level pieces of L{golb.upstream}: the incremental HTTP/1.1 response
parser, the request head writer, the file body producer, and the response
and tunnel objects handed to callers (re-exported by L{golb.upstream}).

The parser knows nothing about sockets or Twisted: it is fed bytes with
L{ResponseParser.feed} and reports what it found to a delegate.  It works on
whole buffers (C{bytes.find}, C{split}, C{partition}, C{translate}), never byte
by byte, copies body bytes only when a read straddles a framing boundary, and
remembers the parsed form of the status and header lines it saw recently
(a backend repeats them in every response).

Framing follows RFC 9112 section 6.3: HEAD requests and 1xx, 204 and 304
responses have no body; C{Transfer-Encoding} with C{chunked} last is chunked;
any other C{Transfer-Encoding} is read until the connection closes;
C{Content-Length} (identical duplicates allowed) is a length; anything else is
read until the connection closes.
"""

from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "BodyParseError",
    "HeadParseError",
    "MAX_HEAD_SIZE",
    "ParseError",
    "ResponseParser",
    "UpstreamResponse",
    "UpstreamTunnel",
    "requestHead",
]

MAX_HEAD_SIZE = 64 * 1024
MAX_CHUNK_LINE = 4096
MAX_TRAILER_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 2**63

# RFC 9110 token characters, for bytes.translate(None, _TOKEN): what remains is invalid.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEX = b"0123456789abcdefABCDEF"

# parser states
HEAD = 0
LENGTH = 1
CHUNK_SIZE = 2
CHUNK_DATA = 3
CHUNK_CRLF = 4
TRAILER = 5
UNTIL_CLOSE = 6
DONE = 7
SWITCHED = 8
STOPPED = 9

Headers = List[Tuple[bytes, bytes]]

FILE_CHUNK = 64 * 1024
# body bytes kept for a response whose receiver is not there yet, before the
# connection stops reading
BUFFER_LIMIT = 64 * 1024

_BODY_METHODS = frozenset([b"POST", b"PUT", b"PATCH"])
_FRAMING_HEADERS = frozenset([b"content-length", b"transfer-encoding"])


class ParseError(Exception):
    """
    The backend's bytes do not form a valid HTTP/1.1 response.
    """


class HeadParseError(ParseError):
    """
    The status line or the header fields are invalid (or too large).
    """


class BodyParseError(ParseError):
    """
    The body framing (chunked encoding) is invalid.
    """


# The parsed form of the status lines and header lines seen recently: a
# backend sends the same ones again and again (only Date changes, once a
# second), so most lines of a head are looked up rather than parsed.  Only
# valid lines of up to _CACHED_LINE bytes get in; a full cache is emptied.
_CACHED_LINE = 256
_CACHED_LINES = 1024
_STATUS_LINES: Dict[bytes, Tuple[bytes, int, bytes]] = {}
_HEADER_LINES: Dict[bytes, tuple] = {}

# kinds of header lines, for ResponseParser._feedHead
_LINE_OTHER = 0
_LINE_LENGTH = 1  # Content-Length: its lengths
_LINE_BAD_LENGTH = 2  # an invalid Content-Length: the lengths before the bad item
_LINE_CODINGS = 3  # Transfer-Encoding: its codings, lower-cased
_LINE_CONNECTION = 4  # Connection: (has close, has keep-alive)


def _remember(cache: dict, line: bytes, parsed) -> None:
    if len(line) <= _CACHED_LINE:
        if len(cache) >= _CACHED_LINES:
            cache.clear()
        cache[line] = parsed


def _statusLine(line: bytes) -> Tuple[bytes, int, bytes]:
    """
    Parse a status line into C{(version, code, phrase)}.

    @raise HeadParseError: when it is invalid.
    """
    parts = line.split(b" ", 2)
    version = parts[0]
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise HeadParseError(f"invalid status line {line[:80]!r}")
    if len(parts) < 2:
        raise HeadParseError(f"invalid status line {line[:80]!r}")
    rawCode = parts[1]
    if len(rawCode) != 3 or not rawCode.isdigit():
        raise HeadParseError(f"invalid status code {rawCode[:80]!r}")
    code = int(rawCode)
    if code < 100 or code > 599:
        raise HeadParseError(f"invalid status code {code}")
    phrase = parts[2] if len(parts) == 3 else b""
    status = (version, code, phrase)
    _remember(_STATUS_LINES, line, status)
    return status


def _headerLine(line: bytes) -> tuple:
    """
    Parse a header line into C{((name, value), kind, data)}: the field, one
    of the C{_LINE_*} kinds and what that kind carries.

    @raise HeadParseError: when the line is not a valid field.
    """
    name, sep, value = line.partition(b":")
    if not sep or not name or name.translate(None, _TOKEN):
        if line[:1] in (b" ", b"\t"):
            raise HeadParseError("obsolete line folding in the response head")
        raise HeadParseError(f"invalid header line {line[:80]!r}")
    value = value.strip(b" \t")
    field = (name, value)
    kind = _LINE_OTHER
    data = None
    first = name[0] | 0x20
    if first == 0x63 or first == 0x74:  # 'c' or 't'
        lower = name.lower()
        if lower == b"content-length":
            kind = _LINE_LENGTH
            lengths = []
            for item in value.split(b","):
                item = item.strip(b" \t")
                if not item.isdigit():
                    # not remembered: the caller checks the lengths before
                    # the bad item, then raises
                    return (field, _LINE_BAD_LENGTH, lengths)
                lengths.append(int(item))
            data = tuple(lengths)
        elif lower == b"transfer-encoding":
            kind = _LINE_CODINGS
            data = tuple(c.strip(b" \t").lower() for c in value.split(b","))
        elif lower == b"connection":
            kind = _LINE_CONNECTION
            close = keepAlive = False
            for token in value.split(b","):
                token = token.strip(b" \t").lower()
                if token == b"close":
                    close = True
                elif token == b"keep-alive":
                    keepAlive = True
            data = (close, keepAlive)
    entry = (field, kind, data)
    _remember(_HEADER_LINES, line, entry)
    return entry


class ResponseParser:
    """
    Parse one HTTP/1.1 response (preceded by any number of 1xx responses).

    The delegate is told, in order:
      - C{informationalReceived(code, phrase, headers)} for each 1xx but 101;
      - C{headReceived(version, code, phrase, headers, length, chunked)} once;
      - C{bodyDataReceived(data)} for each piece of payload (de-chunked);
      - C{bodyFinished(extra)} once the body is complete, with any bytes that
        followed it (C{b""} normally).
    A 101 response stops parsing after C{headReceived}: later bytes collect
    in L{extra}.  Errors raise L{HeadParseError} or L{BodyParseError}.

    @ivar keepAlive: whether the response's framing and C{Connection} header
        allow reusing the connection (valid once the head was parsed).
    @ivar extra: bytes received after a 101 head.
    """

    __slots__ = (
        "_delegate", "_expectsNoBody", "_state", "_buf", "_remaining",
        "_trailerSize", "keepAlive", "extra", "code",
    )

    def __init__(self, delegate, expectsNoBody: bool = False):
        self._delegate = delegate
        self._expectsNoBody = expectsNoBody
        self._state = HEAD
        self._buf = b""
        self._remaining = 0
        self._trailerSize = 0
        self.keepAlive = False
        self.extra = b""
        self.code = 0

    @property
    def state(self) -> int:
        """
        The current state (one of the module's state constants).
        """
        return self._state

    @property
    def untilClose(self) -> bool:
        """
        Whether the body is delimited by the connection closing.
        """
        return self._state == UNTIL_CLOSE

    @property
    def waitingForHead(self) -> bool:
        """
        Whether the final response head has not been parsed yet.
        """
        return self._state == HEAD

    def stop(self) -> None:
        """
        Ignore every later byte (the connection is being dropped).
        """
        self._state = STOPPED
        self._buf = b""

    def feed(self, data: bytes) -> None:
        """
        Parse C{data}, the next bytes from the backend.

        @raise HeadParseError: when the head is invalid.
        @raise BodyParseError: when the chunked framing is invalid.
        """
        if self._buf:
            data = self._buf + data
            self._buf = b""
        while data:
            state = self._state
            if state == LENGTH:
                remaining = self._remaining
                size = len(data)
                if size < remaining:
                    self._remaining = remaining - size
                    self._delegate.bodyDataReceived(data)
                    return
                self._remaining = 0
                self._state = DONE
                if size == remaining:
                    self._delegate.bodyDataReceived(data)
                    extra = b""
                else:
                    self._delegate.bodyDataReceived(data[:remaining])
                    extra = data[remaining:]
                if self._state == DONE:
                    self._delegate.bodyFinished(extra)
                return
            elif state == HEAD:
                data = self._feedHead(data)
            elif state == UNTIL_CLOSE:
                self._delegate.bodyDataReceived(data)
                return
            elif state <= TRAILER:
                self._feedChunked(data)
                return
            elif state == SWITCHED:
                self.extra += data
                return
            else:
                # DONE (bytes after a complete response) or STOPPED
                return

    def connectionClosed(self) -> bool:
        """
        The connection closed cleanly.

        @return: C{True} when that completes the body (a body read until
            close); the delegate's C{bodyFinished} has then been called.
        """
        if self._state == UNTIL_CLOSE:
            self._state = DONE
            self._delegate.bodyFinished(b"")
            return True
        return False

    def _feedHead(self, data: bytes) -> bytes:
        """
        Parse a response head at the start of C{data}.

        @return: the bytes after it, or C{b""} when more are needed.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD_SIZE:
                raise HeadParseError("response head larger than 64 KiB")
            self._buf = data
            return b""
        if end > MAX_HEAD_SIZE:
            raise HeadParseError("response head larger than 64 KiB")
        head = data[:end]
        rest = data[end + 4:]
        lines = head.split(b"\r\n")
        separators = len(lines) - 1
        if head.count(b"\r") != separators or head.count(b"\n") != separators:
            raise HeadParseError("bare CR or LF in the response head")
        if b"\x00" in head:
            raise HeadParseError("NUL in the response head")
        statusLine = lines[0]
        status = _STATUS_LINES.get(statusLine)
        if status is None:
            status = _statusLine(statusLine)
        version, code, phrase = status

        headers = []
        append = headers.append
        contentLength = None
        codings = None
        close = False
        keepAliveToken = False
        for line in lines[1:]:
            entry = _HEADER_LINES.get(line)
            if entry is None:
                entry = _headerLine(line)
            append(entry[0])
            kind = entry[1]
            if kind:
                data = entry[2]
                if kind == _LINE_LENGTH or kind == _LINE_BAD_LENGTH:
                    for length in data:
                        if contentLength is not None and contentLength != length:
                            raise HeadParseError("conflicting Content-Length values")
                        contentLength = length
                    if kind == _LINE_BAD_LENGTH:
                        raise HeadParseError(f"invalid Content-Length {entry[0][1][:80]!r}")
                elif kind == _LINE_CODINGS:
                    if codings is None:
                        codings = []
                    codings.extend(data)
                else:
                    if data[0]:
                        close = True
                    if data[1]:
                        keepAliveToken = True

        if 100 <= code < 200 and code != 101:
            self._delegate.informationalReceived(code, phrase, headers)
            return rest

        if version == b"HTTP/1.1":
            keepAlive = not close
        else:
            keepAlive = keepAliveToken and not close
        self.code = code
        delegate = self._delegate
        if code == 101:
            self.keepAlive = False
            self._state = SWITCHED
            self.extra = rest
            delegate.headReceived(version, code, phrase, headers, 0, False)
            return b""
        if self._expectsNoBody or code == 204 or code == 304:
            length: Optional[int] = 0
            chunked = False
            self._state = DONE
        elif codings is not None:
            if codings and codings[-1] == b"chunked":
                if codings.count(b"chunked") > 1:
                    raise HeadParseError("chunked applied more than once")
                chunked = True
                self._state = CHUNK_SIZE
            else:
                chunked = False
                self._state = UNTIL_CLOSE
                keepAlive = False
            length = None
            if contentLength is not None:
                keepAlive = False  # CL with TE: TE wins, never reuse
        elif contentLength is not None:
            length = contentLength
            chunked = False
            self._state = LENGTH if length else DONE
            self._remaining = length
        else:
            length = None
            chunked = False
            self._state = UNTIL_CLOSE
            keepAlive = False
        self.keepAlive = keepAlive
        delegate.headReceived(version, code, phrase, headers, length, chunked)
        if self._state == DONE:
            delegate.bodyFinished(rest)
            return b""
        return rest

    def _feedChunked(self, data: bytes) -> None:
        """
        Parse chunked framing from C{data}.
        """
        pos = 0
        size = len(data)
        delegate = self._delegate
        while pos < size:
            state = self._state
            if state == CHUNK_DATA:
                remaining = self._remaining
                avail = size - pos
                if avail <= remaining:
                    piece = data if pos == 0 else data[pos:]
                    self._remaining = remaining - avail
                    if self._remaining == 0:
                        self._state = CHUNK_CRLF
                    delegate.bodyDataReceived(piece)
                    return
                self._state = CHUNK_CRLF
                self._remaining = 0
                end = pos + remaining
                delegate.bodyDataReceived(data[pos:end])
                pos = end
            elif state == CHUNK_CRLF:
                if size - pos < 2:
                    if data[pos:] != b"\r":
                        raise BodyParseError("missing CRLF after chunk data")
                    self._buf = data[pos:]
                    return
                if data[pos:pos + 2] != b"\r\n":
                    raise BodyParseError("missing CRLF after chunk data")
                pos += 2
                self._state = CHUNK_SIZE
            elif state == CHUNK_SIZE:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > MAX_CHUNK_LINE:
                        raise BodyParseError("chunk size line too long")
                    self._buf = data[pos:]
                    return
                if end - pos > MAX_CHUNK_LINE:
                    raise BodyParseError("chunk size line too long")
                line = data[pos:end]
                pos = end + 2
                rawSize = line.split(b";", 1)[0].rstrip(b" \t")
                if (
                    not rawSize or len(rawSize) > 16 or rawSize.translate(None, _HEX)
                    or b"\r" in line or b"\n" in line
                ):
                    raise BodyParseError(f"invalid chunk size {line[:40]!r}")
                chunkSize = int(rawSize, 16)
                if chunkSize >= MAX_CHUNK_SIZE:
                    raise BodyParseError("chunk size too large")
                if chunkSize:
                    self._remaining = chunkSize
                    self._state = CHUNK_DATA
                else:
                    self._state = TRAILER
            elif state == TRAILER:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if self._trailerSize + size - pos > MAX_TRAILER_SIZE:
                        raise BodyParseError("trailer section too large")
                    self._buf = data[pos:]
                    return
                if end == pos:
                    self._state = DONE
                    delegate.bodyFinished(data[pos + 2:])
                    return
                self._trailerSize += end - pos + 2
                if self._trailerSize > MAX_TRAILER_SIZE:
                    raise BodyParseError("trailer section too large")
                pos = end + 2
            else:
                # stopped (or finished) by a delegate callback
                return


# ---------------------------------------------------------------- request


def requestHead(req, bodyLength: Optional[int]) -> bytes:
    """
    The request line and header section of C{req}, ready to write.

    @param bodyLength: the body's length, or L{None} without a body.
    @raise ValueError: when a header, the method or the target holds CR, LF
        (or the target a space).
    """
    lines = [req.method + b" " + req.target + b" HTTP/1.1"]
    append = lines.append
    for name, value in req.headers:
        if len(name) in (14, 17) and name.lower() in _FRAMING_HEADERS:
            continue
        append(name + b": " + value)
    if bodyLength is not None:
        append(b"Content-Length: %d" % (bodyLength,))
    elif req.method in _BODY_METHODS:
        append(b"Content-Length: 0")
    append(b"")
    append(b"")
    head = b"\r\n".join(lines)
    separators = len(lines) - 1
    if (
        head.count(b"\n") != separators or head.count(b"\r") != separators
        or b" " in req.target
    ):
        raise ValueError("CR, LF or space in the request line or a request header")
    return head


@implementer(IPushProducer)
class FileBodyProducer:
    """
    Stream a file request body to the transport, C{FILE_CHUNK} bytes per read,
    pausing when the transport's buffer is full.
    """

    def __init__(self, protocol, body, length: int):
        self._protocol = protocol
        self._body = body
        self._remaining = length
        self._paused = False
        self._stopped = False
        self._running = False

    def start(self) -> None:
        self._protocol.transport.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        if self._running:
            return
        self._running = True
        protocol = self._protocol
        try:
            while not self._paused and not self._stopped:
                if self._remaining <= 0:
                    self._stopped = True
                    protocol._bodyWritten()
                    return
                data = self._body.read(min(FILE_CHUNK, self._remaining))
                if not data:
                    self._stopped = True
                    protocol._bodyWriteFailed("the request body is shorter than its length")
                    return
                self._remaining -= len(data)
                protocol.transport.write(data)
                protocol._lastActivity = protocol._seconds()
        except Exception:
            self._stopped = True
            protocol._log.failure("Reading the request body failed")
            protocol._bodyWriteFailed("the request body could not be read")
        finally:
            self._running = False

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._stopped = True


# ---------------------------------------------------------------- response


@implementer(IPushProducer)
class UpstreamResponse:
    """
    A backend's response: its head, and its body as a push producer.

    @ivar version: e.g. C{b"HTTP/1.1"}.
    @ivar code: the status code.
    @ivar phrase: the reason phrase.
    @ivar headers: the header fields, raw and in order (names as received).
    @ivar length: the body length when known (0 for bodiless responses),
        L{None} for chunked or close-delimited bodies.
    @ivar chunked: whether the body is chunked on the wire (it is delivered
        de-chunked).
    """

    def __init__(self, protocol, version: bytes, code: int, phrase: bytes,
                 headers: Headers, length: Optional[int], chunked: bool):
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self.chunked = chunked
        self._protocol = protocol
        self._receiver = None
        self._buffer: List[bytes] = []
        self._buffered = 0
        self._ended = False
        self._endReason: Optional[Failure] = None

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.code} {self.phrase!r} length={self.length}>"

    def getHeader(self, name: bytes) -> Optional[bytes]:
        """
        The first value of header C{name} (case-insensitive), or L{None}.
        """
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def deliverBody(self, receiver) -> None:
        """
        Deliver the body to C{receiver}: C{receiver.dataReceived(bytes)} for
        each piece, then C{receiver.bodyDone(reason)} once, with L{None} when
        the body is complete or a L{Failure} (L{UpstreamReset},
        L{UpstreamBodyError}, L{ReadTimeout}, L{ConnectionAborted}).  Bytes
        that arrived earlier are delivered first.  On a 101 response this
        closes the connection and reports an empty body.
        """
        if self._receiver is not None:
            raise RuntimeError("deliverBody called twice")
        self._receiver = receiver
        protocol = self._protocol
        if self.code == 101 and protocol is not None:
            self._protocol = None
            protocol._abandonSwitch()
            self._ended = True
        buffered = self._buffer
        if buffered:
            self._buffer = []
            self._buffered = 0
            for data in buffered:
                receiver.dataReceived(data)
                if self._receiver is None:
                    return
        if self._ended:
            self._receiver = None
            receiver.bodyDone(self._endReason)
            self._endReason = None
        elif protocol is not None:
            protocol._setBufferPaused(False)

    def pauseProducing(self) -> None:
        """
        Stop reading from the backend until L{resumeProducing}.
        """
        if self._protocol is not None:
            self._protocol._setUserPaused(True)

    def resumeProducing(self) -> None:
        """
        Read from the backend again.
        """
        if self._protocol is not None:
            self._protocol._setUserPaused(False)

    def stopProducing(self) -> None:
        """
        Abort the connection (it is not reused); the receiver's C{bodyDone}
        gets a L{ConnectionAborted} failure unless the body already ended.
        """
        if self._protocol is not None:
            self._protocol._stopResponse(self)

    def switchProtocol(self) -> "UpstreamTunnel":
        """
        Turn the connection of a 101 response into a raw tunnel, detached
        from HTTP parsing and from the pool.

        @raise RuntimeError: unless this is a 101 response still connected.
        """
        protocol = self._protocol
        if self.code != 101 or protocol is None or self._receiver is not None:
            raise RuntimeError("switchProtocol needs a connected 101 response")
        self._protocol = None
        self._ended = True
        return protocol._switch()

    # called by the protocol

    def _dataReceived(self, data: bytes) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver.dataReceived(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BUFFER_LIMIT and self._protocol is not None:
            self._protocol._setBufferPaused(True)

    def _bodyEnded(self, reason: Optional[Failure]) -> None:
        self._protocol = None
        if self._ended:
            return
        self._ended = True
        receiver = self._receiver
        if receiver is None:
            self._endReason = reason
            return
        self._receiver = None
        receiver.bodyDone(reason)


@implementer(IPushProducer)
class UpstreamTunnel:
    """
    The raw connection after a 101 response (see
    L{UpstreamResponse.switchProtocol}).

    @ivar transport: the underlying transport.
    """

    def __init__(self, transport, pending: bytes):
        self.transport = transport
        self._pending = pending
        self._onData: Optional[Callable[[bytes], None]] = None
        self._onLost: Optional[Callable[[Failure], None]] = None
        self._lostReason: Optional[Failure] = None

    def setReceiver(self, dataReceived: Callable[[bytes], None],
                    connectionLost: Callable[[Failure], None]) -> None:
        """
        Deliver the backend's bytes to C{dataReceived} (those that arrived
        after the 101 head first) and its close to C{connectionLost(reason)}.
        """
        self._onData = dataReceived
        self._onLost = connectionLost
        pending = self._pending
        if pending:
            self._pending = b""
            dataReceived(pending)
        if self._lostReason is not None:
            reason = self._lostReason
            self._lostReason = None
            self._onLost = None
            connectionLost(reason)

    def write(self, data: bytes) -> None:
        """
        Send C{data} to the backend.
        """
        self.transport.write(data)

    def writeSequence(self, seq) -> None:
        """
        Send a sequence of byte strings to the backend.
        """
        self.transport.writeSequence(seq)

    def loseConnection(self) -> None:
        """
        Close the connection once buffered data is written.
        """
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        """
        Close the connection now.
        """
        self.transport.abortConnection()

    def pauseProducing(self) -> None:
        """
        Stop reading from the backend.
        """
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read from the backend again.
        """
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        Abort the connection.
        """
        self.transport.abortConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        """
        Let C{producer} be paused when the backend reads too slowly.
        """
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """
        Forget the producer registered with L{registerProducer}.
        """
        self.transport.unregisterProducer()

    def getPeer(self):
        """
        The backend's address.
        """
        return self.transport.getPeer()

    def getHost(self):
        """
        The local address.
        """
        return self.transport.getHost()

    def _dataReceived(self, data: bytes) -> None:
        onData = self._onData
        if onData is not None:
            onData(data)
        else:
            self._pending += data

    def _connectionLost(self, reason: Failure) -> None:
        onLost = self._onLost
        if onLost is not None:
            self._onLost = None
            onLost(reason)
        else:
            self._lostReason = reason
