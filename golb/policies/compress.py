"""
C{compress}: gzip responses on their way to the client, as they stream.

A response is compressed when the client accepts gzip, the backend did not
encode it already, its type matches one of C{types}, it is not too small, and
nothing forbids transforming it (see L{Compress}).  The body is compressed
piece by piece as the backend sends it, never buffered whole; the compressed
response has no C{Content-Length}, so the listener sends it chunked to
HTTP/1.1 clients and closes the connection after it for HTTP/1.0 ones.
"""

import fnmatch
import re
import zlib
from typing import List, Optional, Sequence, Tuple

from zope.interface import implementer

from golb.policies import IBodyFilter, Policy, addVary

__all__ = ["Compress", "GzipFilter", "TypeMatcher", "acceptsGzip"]

# Never compressed: no body, a partial body (a range of the identity
# representation), or not final.
_NO_COMPRESS_CODES = frozenset([204, 206, 304])

# Types whose every piece is flushed to the client as it arrives: streams of
# events that a client waits for one at a time.
STREAM_TYPES = frozenset([b"text/event-stream", b"application/x-ndjson"])


def acceptsGzip(values: Optional[Sequence[bytes]]) -> bool:
    """
    Whether an C{Accept-Encoding} header accepts gzip (RFC 9110 12.5.3):
    C{gzip} (or C{x-gzip}) with a non-zero q-value, or, when gzip is not
    named, C{*} with a non-zero q-value.

    @param values: the raw header values, or L{None} when absent (then
        nothing is accepted: golb never guesses).
    """
    if not values:
        return False
    gzipQ = None
    starQ = None
    for value in values:
        for item in value.split(b","):
            coding, _, params = item.partition(b";")
            coding = coding.strip().lower()
            if not coding:
                continue
            q = 1.0
            if params:
                for param in params.split(b";"):
                    name, _, text = param.partition(b"=")
                    if name.strip().lower() == b"q":
                        try:
                            q = float(text.strip())
                        except ValueError:
                            q = 0.0
                        if not 0.0 <= q <= 1.0:
                            q = 0.0
            if coding == b"gzip" or coding == b"x-gzip":
                gzipQ = q if gzipQ is None else max(gzipQ, q)
            elif coding == b"*":
                starQ = q if starQ is None else max(starQ, q)
    if gzipQ is not None:
        return gzipQ > 0
    return starQ is not None and starQ > 0


class TypeMatcher:
    """
    Matches media types (C{Content-Type} without parameters) against globs
    like C{text/*}, C{application/json} or C{application/*+json},
    precompiled: exact types in a set, one-star globs as prefix and suffix.

    @ivar anyType: a glob matches every type (C{*} or C{*/*}).
    """

    def __init__(self, globs: Sequence[str]):
        self.anyType = False
        exact = set()
        partial: List[Tuple[bytes, bytes]] = []
        others = []
        for glob in globs:
            pattern = glob.strip().lower().encode("ascii", "replace")
            if pattern in (b"*", b"*/*"):
                self.anyType = True
            elif b"*" not in pattern and b"?" not in pattern and b"[" not in pattern:
                exact.add(pattern)
            elif pattern.count(b"*") == 1 and b"?" not in pattern and b"[" not in pattern:
                prefix, _, suffix = pattern.partition(b"*")
                partial.append((prefix, suffix))
            else:
                others.append(re.compile(fnmatch.translate(pattern.decode("ascii")).encode()))
        self.exact = frozenset(exact)
        self.partial = tuple(partial)
        self.others = tuple(others)

    def matches(self, contentType: bytes) -> bool:
        """
        Whether C{contentType} (a raw C{Content-Type} value, parameters
        allowed) matches one of the globs.
        """
        mediaType = contentType.split(b";", 1)[0].strip().lower()
        if not mediaType:
            return False
        if self.anyType or mediaType in self.exact:
            return True
        for prefix, suffix in self.partial:
            if (
                len(mediaType) >= len(prefix) + len(suffix)
                and mediaType.startswith(prefix)
                and mediaType.endswith(suffix)
            ):
                return True
        for pattern in self.others:
            if pattern.match(mediaType):
                return True
        return False


def _noTransform(values: Optional[Sequence[bytes]]) -> bool:
    for value in values or ():
        for directive in value.split(b","):
            if directive.strip().lower() == b"no-transform":
                return True
    return False


def _encoded(values: Optional[Sequence[bytes]]) -> bool:
    """
    Whether C{Content-Encoding} names an encoding (C{identity}, which
    senders should not use, counts as none).
    """
    for value in values or ():
        for coding in value.split(b","):
            coding = coding.strip().lower()
            if coding and coding != b"identity":
                return True
    return False


def _declaredLength(headers) -> Optional[int]:
    """
    The C{Content-Length} of a response, or L{None} when absent or invalid.
    """
    values = headers.getRawHeaders(b"content-length")
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


def windowFor(length: Optional[int]) -> Tuple[int, int]:
    """
    The zlib window bits and memory level for a body of C{length} bytes:
    the full 32 KiB window (262 KiB of compressor memory) for large or
    unknown lengths, less for small bodies, as nginx does.

    @return: C{(wbits, memLevel)}, C{wbits} between 9 and 15.
    """
    wbits, memLevel = 15, 8
    if length is not None and length > 0:
        # zlib's usable window is 262 bytes smaller than its size.
        while wbits > 9 and length < (1 << (wbits - 1)) - 262:
            wbits -= 1
            memLevel -= 1
    return wbits, max(1, memLevel)


@implementer(IBodyFilter)
class GzipFilter:
    """
    Gzip a body as it streams.

    @ivar flushEach: send everything given to L{write} at once (a
        C{Z_SYNC_FLUSH} after each piece, for event streams) instead of
        letting zlib gather a block first.
    """

    def __init__(self, level: int = 5, length: Optional[int] = None, flushEach: bool = False):
        """
        @param level: the zlib compression level (1 fastest .. 9 smallest).
        @param length: the body's length when known, to size the window.
        @param flushEach: see L{flushEach}.
        """
        wbits, memLevel = windowFor(length)
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + wbits, memLevel)
        self.flushEach = flushEach

    def write(self, data: bytes) -> bytes:
        """
        Compress the next piece of the body.

        @return: compressed bytes ready to send (possibly C{b""}: zlib
            gathers input until it has a block's worth, unless L{flushEach}).
        """
        compressor = self._compressor
        if self.flushEach:
            return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return compressor.compress(data)

    def finish(self) -> bytes:
        """
        @return: the rest of the compressed body and the gzip trailer.
        """
        return self._compressor.flush(zlib.Z_FINISH)


class Compress(Policy):
    """
    Gzip backend responses for clients that accept it.

    A response is compressed when all of these hold:
      - the request is not C{HEAD} (a HEAD response keeps the identity
        headers, with C{Vary: Accept-Encoding});
      - the client's C{Accept-Encoding} accepts gzip (q-values honoured,
        C{*} counts, C{gzip;q=0} refuses);
      - the response has no C{Content-Encoding} already;
      - its C{Content-Type}, without parameters, matches one of C{types};
      - its C{Content-Length}, when known, is at least C{min_size} (and not
        0); an unknown length is compressed;
      - its status is not 1xx, 204, 206 or 304, it has no C{Content-Range},
        and its C{Cache-Control} does not say C{no-transform}.

    Then C{Content-Encoding: gzip} is set, C{Content-Length} removed, a
    strong C{ETag} made weak (C{W/"..."}: the bytes differ from the
    identity representation's).  C{Vary: Accept-Encoding} is added to every
    response that would be compressed for a client accepting gzip, also when
    this client does not, so caches keep the two versions apart.

    @ivar level: the zlib level (5: nearly the size of 6 for 3/4 of its
        CPU; see C{docs/policies/compress.md}).
    @ivar types: the L{TypeMatcher}.
    @ivar minSize: C{min_size} in bytes.
    """

    level = 5

    def __init__(self, config, env):
        Policy.__init__(self, config, env)
        self.types = TypeMatcher(config.types)
        self.minSize = config.min_size

    def onResponse(self, request, context, response):
        """
        Decide, fix the headers and return a L{GzipFilter} when compressing.
        """
        if response is None:
            return None
        code = response.code
        if code < 200 or code in _NO_COMPRESS_CODES:
            return None
        headers = request.responseHeaders
        head = request.method == b"HEAD"
        # A HEAD response has no body: judge by the length a GET would have.
        length = _declaredLength(headers) if head else response.length
        if length is not None and (length == 0 or length < self.minSize):
            return None
        contentType = headers.getRawHeaders(b"content-type")
        if not contentType or not self.types.matches(contentType[0]):
            return None
        if (
            _encoded(headers.getRawHeaders(b"content-encoding"))
            or headers.hasHeader(b"content-range")
            or _noTransform(headers.getRawHeaders(b"cache-control"))
        ):
            return None
        addVary(headers, b"Accept-Encoding")
        if head:
            return None
        if not acceptsGzip(request.requestHeaders.getRawHeaders(b"accept-encoding")):
            return None
        headers.setRawHeaders(b"content-encoding", [b"gzip"])
        headers.removeHeader(b"content-length")
        etags = headers.getRawHeaders(b"etag")
        if etags:
            headers.setRawHeaders(
                b"etag", [etag if etag.startswith(b"W/") else b"W/" + etag for etag in etags]
            )
        mediaType = contentType[0].split(b";", 1)[0].strip().lower()
        return GzipFilter(self.level, length, mediaType in STREAM_TYPES)
