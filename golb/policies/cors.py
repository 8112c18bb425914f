"""
C{cors}: Cross-Origin Resource Sharing answered by golb.

golb answers CORS preflights itself (they never reach a backend) and adds the
C{Access-Control-*} headers to the other responses of the route, including
golb's own error answers (a 429 or 503 a browser script can then read).  The
policy is authoritative: C{Access-Control-*} headers a backend sends are
removed, so the configured lists are the only truth.

Origins are compared the way browsers serialize them (lowercase scheme and
host, no default port), case-insensitively; a wildcard such as
C{https://*.example.com} is split once into a prefix and a suffix, so
matching a request needs no regular expression.
"""

from typing import FrozenSet, List, Optional, Sequence, Tuple

from twisted.logger import Logger

from golb.policies import Answer, Policy, addVary

__all__ = ["Cors", "OriginMatcher", "normalizeOrigin"]

log = Logger()

_ACAO = b"Access-Control-Allow-Origin"
_ACAC = b"Access-Control-Allow-Credentials"
_ACEH = b"Access-Control-Expose-Headers"
_ACAM = b"Access-Control-Allow-Methods"
_ACAH = b"Access-Control-Allow-Headers"
_ACMA = b"Access-Control-Max-Age"

# Removed from a backend's response: the policy alone decides.
_BACKEND_CORS = (_ACAO, _ACAC, _ACEH, _ACAM, _ACAH, _ACMA)

_PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

# What the part of an origin matched by a wildcard may contain: host
# characters (letters, digits, hyphens, dots), never ":", "/" or "@".
_HOST_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-."

# Header name characters (RFC 9110 token).
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"

_DEFAULT_PORTS = ((b"https://", b":443"), (b"http://", b":80"))


def normalizeOrigin(origin: bytes) -> bytes:
    """
    An origin as browsers serialize it: lowercase, without a trailing slash
    or the scheme's default port (C{HTTPS://App.Example.com:443/} becomes
    C{https://app.example.com}).

    @param origin: an C{Origin} header value or a configured origin.
    """
    origin = origin.strip().lower()
    if origin.endswith(b"/"):
        origin = origin.rstrip(b"/")
    for scheme, port in _DEFAULT_PORTS:
        if origin.endswith(port) and origin.startswith(scheme):
            return origin[:-len(port)]
    return origin


class OriginMatcher:
    """
    Decides which C{Origin} values are allowed, precompiled from the
    configured list.

    @ivar anyOrigin: C{"*"} is in the list: every origin is allowed.
    @ivar exact: the normalized exact origins.
    @ivar wildcards: C{(prefix, suffix)} pairs, one per wildcard origin: an
        origin matches when it starts with the prefix, ends with the suffix
        and what lies between is a non-empty run of host characters (so
        C{https://*.example.com} matches C{https://a.b.example.com} but
        neither C{https://example.com} nor C{https://x.example.com.evil.net}).
    """

    def __init__(self, origins: Sequence[str]):
        self.anyOrigin = False
        exact = set()
        wildcards: List[Tuple[bytes, bytes]] = []
        for text in origins:
            if text == "*":
                self.anyOrigin = True
                continue
            origin = normalizeOrigin(text.encode("utf-8"))
            if origin != b"null" and b"://" not in origin:
                log.warn(
                    "cors: allow_origins entry {origin!r} has no scheme; browsers send "
                    "origins like 'https://{origin}', so it never matches",
                    origin=text,
                )
            stars = origin.count(b"*")
            if stars == 0:
                exact.add(origin)
                continue
            scheme, _, rest = origin.partition(b"://")
            if stars > 1 or b"*" in scheme or b"*" in rest.partition(b":")[2]:
                log.warn(
                    "cors: allow_origins entry {origin!r} ignored: use one '*' in the host, "
                    "as in 'https://*.example.com'",
                    origin=text,
                )
                continue
            prefix, _, suffix = origin.partition(b"*")
            wildcards.append((prefix, suffix))
        self.exact: FrozenSet[bytes] = frozenset(exact)
        self.wildcards: Tuple[Tuple[bytes, bytes], ...] = tuple(wildcards)

    def allows(self, origin: bytes) -> bool:
        """
        Whether C{origin} (an C{Origin} header value) is allowed.
        """
        if self.anyOrigin:
            return True
        origin = normalizeOrigin(origin)
        if origin in self.exact:
            return True
        for prefix, suffix in self.wildcards:
            if (
                len(origin) > len(prefix) + len(suffix)
                and origin.startswith(prefix)
                and origin.endswith(suffix)
            ):
                middle = origin[len(prefix):len(origin) - len(suffix)]
                if (
                    not middle.translate(None, _HOST_BYTES)
                    and middle[:1] != b"."
                    and middle[-1:] != b"."
                ):
                    return True
        return False


def _requestedHeaders(values: Optional[List[bytes]]) -> bytes:
    """
    The header names of C{Access-Control-Request-Headers}, lowercased and
    checked to be header names, as one value to echo.
    """
    names = []
    for value in values or ():
        for name in value.split(b","):
            name = name.strip().lower()
            if name and not name.translate(None, _TOKEN_BYTES):
                names.append(name)
    return b", ".join(names)


def _join(items: Sequence[str]) -> bytes:
    return ", ".join(items).encode("ascii")


class Cors(Policy):
    """
    Answer CORS preflights and add C{Access-Control-*} headers to responses
    for the allowed origins.

    A preflight (C{OPTIONS} with C{Origin} and
    C{Access-Control-Request-Method}) is answered with 204: with the CORS
    headers when the origin is allowed, without them when it is not (the
    browser then refuses the real request, as it would with Traefik or
    rs/cors).  Whether the requested method and headers are in the lists is
    left to the browser, which checks them against the answer.

    An empty C{allow_headers} (or one holding C{*}) echoes the headers the
    preflight asks for: the origin list is the security boundary.

    @ivar matcher: the L{OriginMatcher}.
    @ivar credentials: C{allow_credentials}.
    """

    def __init__(self, config, env):
        Policy.__init__(self, config, env)
        self.matcher = OriginMatcher(config.allow_origins)
        self.anyOrigin = self.matcher.anyOrigin
        # "*" with credentials is refused by the config, and by browsers.
        self.credentials = bool(config.allow_credentials) and not self.anyOrigin
        self.echoHeaders = not config.allow_headers or "*" in config.allow_headers
        self.allowHeaders = None if self.echoHeaders else _join(config.allow_headers)
        self.exposeHeaders = _join(config.expose_headers) if config.expose_headers else None
        preflight = []
        if self.credentials:
            preflight.append((_ACAC, b"true"))
        if config.allow_methods:
            preflight.append((_ACAM, _join(config.allow_methods)))
        if self.allowHeaders is not None:
            preflight.append((_ACAH, self.allowHeaders))
        preflight.append((_ACMA, b"%d" % (max(0, int(config.max_age)),)))
        preflight.append((b"Vary", _PREFLIGHT_VARY))
        self._preflightHeaders = tuple(preflight)
        self._refused = Answer(204, ((b"Vary", _PREFLIGHT_VARY),))

    def _origin(self, request) -> Optional[bytes]:
        """
        The request's C{Origin} when it is exactly one allowed value, else
        L{None}.
        """
        values = request.requestHeaders.getRawHeaders(b"origin")
        if not values or len(values) != 1:
            return None
        origin = values[0]
        if self.matcher.allows(origin):
            return origin
        return None

    def onRequest(self, request, context):
        """
        Answer a preflight; pass every other request on.
        """
        if request.method != b"OPTIONS":
            return None
        headers = request.requestHeaders
        if not headers.hasHeader(b"origin") or not headers.hasHeader(
            b"access-control-request-method"
        ):
            return None
        origin = self._origin(request)
        if origin is None:
            return self._refused
        answer = [(_ACAO, b"*" if self.anyOrigin else origin)]
        answer.extend(self._preflightHeaders)
        if self.echoHeaders:
            requested = _requestedHeaders(
                headers.getRawHeaders(b"access-control-request-headers")
            )
            if requested:
                answer.append((_ACAH, requested))
        return Answer(204, answer)

    def onResponse(self, request, context, response):
        """
        Add C{Access-Control-Allow-Origin} (and C{-Allow-Credentials},
        C{-Expose-Headers}) for an allowed origin, and C{Vary: Origin}
        unless every origin gets the same C{*} answer.
        """
        headers = request.responseHeaders
        if response is not None:
            for name in _BACKEND_CORS:
                headers.removeHeader(name)
        if self.anyOrigin:
            headers.setRawHeaders(_ACAO, [b"*"])
            if self.exposeHeaders is not None:
                headers.setRawHeaders(_ACEH, [self.exposeHeaders])
            return None
        addVary(headers, b"Origin")
        origin = self._origin(request)
        if origin is None:
            return None
        headers.setRawHeaders(_ACAO, [origin])
        if self.credentials:
            headers.setRawHeaders(_ACAC, [b"true"])
        if self.exposeHeaders is not None:
            headers.setRawHeaders(_ACEH, [self.exposeHeaders])
        return None
