"""
C{headers}: edit the request headers sent to the backend and the response
headers sent to the client.

Each direction has one block of edits, applied in this order: C{remove}
(every value of each named header), C{set} (replace every value with one),
C{add} (append one more value, after any already there).  Names are
case-insensitive.  Values are text sent as UTF-8 (keep them ASCII to be
understood everywhere); leading and trailing blanks are dropped, control
characters (CR, LF, NUL...) refused.  A value may use the placeholders
C{{client_ip}}, C{{host}}, C{{scheme}} and C{{route}}; any other text,
braces included, is sent as written.

Headers that carry the framing of the message or that golb computes itself
cannot be edited (see L{REQUEST_FORBIDDEN} and L{RESPONSE_FORBIDDEN}): an edit
there would either be undone silently by golb or break the connection.  The
one exception is C{set: {Host: ...}} on requests, which gives the backend
another Host (with the pool's C{preserve_host: true}, the default).
"""

import re
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from golb.policies import Policy

__all__ = [
    "PLACEHOLDERS",
    "REQUEST_FORBIDDEN",
    "RESPONSE_FORBIDDEN",
    "Headers",
    "headersProblems",
    "requestHost",
]

# Never forwarded, whatever a policy does (golb.proxy.HOP_BY_HOP).
_HOP_BY_HOP = {
    "connection": "it is hop-by-hop: golb never forwards it",
    "keep-alive": "it is hop-by-hop: golb never forwards it",
    "proxy-connection": "it is hop-by-hop: golb never forwards it",
    "te": "it is hop-by-hop: golb never forwards it",
    "trailer": "it is hop-by-hop: golb never forwards it",
    "transfer-encoding": "it frames the message: golb sets it itself",
    "upgrade": "it is hop-by-hop: golb forwards it only for a protocol switch",
}

# Request header name (lower case) -> why a policy may not edit it.
REQUEST_FORBIDDEN: Dict[str, str] = {
    **_HOP_BY_HOP,
    "content-length": "it frames the message: golb sets it from the body",
    "expect": "golb answers 100-continue itself",
    "x-forwarded-for": "golb sets it from the connection (and trusted_proxies)",
    "x-forwarded-proto": "golb sets it from the connection (and trusted_proxies)",
    "x-forwarded-host": "golb sets it from the Host (and trusted_proxies)",
    "forwarded": "golb sets it from the connection (and trusted_proxies)",
    "via": "golb sets it itself",
}

# Response header name (lower case) -> why a policy may not edit it.
RESPONSE_FORBIDDEN: Dict[str, str] = {
    **_HOP_BY_HOP,
    "content-length": "it frames the message: golb keeps the backend's or computes it",
}

# Placeholder -> what it expands to, for documentation and error messages.
PLACEHOLDERS: Dict[str, str] = {
    "client_ip": "the client's IP address (believing trusted_proxies)",
    "host": "the request's Host, without its port",
    "scheme": "http or https, as the client connected to golb",
    "route": "the name of the route (empty for unnamed routes)",
    "tls_client_subject": "the verified TLS client certificate's subject (RFC 4514);"
                          " empty without one",
}

_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
# Control characters other than horizontal tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def requestHost(request) -> bytes:
    """
    The host a client asked for, without its port: from the C{Host} header
    as sent (IPv6 literals keep their brackets), else the address of the
    listener the client connected to (HTTP/1.0 without Host).

    @return: the host as bytes; C{b""} when neither is known.
    """
    values = request.requestHeaders.getRawHeaders(b"host")
    host = values[0] if values else b""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[:end + 1] if end > 0 else host
    if host:
        return host.partition(b":")[0]
    local = getattr(request.getHost(), "host", "") or ""
    if ":" in local:
        return b"[" + local.encode("ascii") + b"]"
    return local.encode("ascii")


def _placeholderValue(name: str) -> Callable[[object, object], bytes]:
    if name == "client_ip":
        return lambda request, context: request.clientAddress().encode("ascii", "replace")
    if name == "host":
        return lambda request, context: requestHost(request)
    if name == "scheme":
        return lambda request, context: request.scheme().encode("ascii")
    if name == "tls_client_subject":
        return lambda request, context: _CONTROL.sub(
            "", request.tlsClientSubject() or "").encode("utf-8")
    return lambda request, context: _CONTROL.sub("", context.route).encode("utf-8")


def _compileValue(text: str):
    """
    A header value: its bytes when it has no placeholder, else a callable
    C{(request, context) -> bytes}.
    """
    text = text.strip(" \t")
    parts = _PLACEHOLDER.split(text)
    if len(parts) == 1:
        return text.encode("utf-8")
    pieces: List[object] = []
    for index, part in enumerate(parts):
        if index % 2:
            pieces.append(_placeholderValue(part))
        elif part:
            pieces.append(part.encode("utf-8"))

    def expand(request, context) -> bytes:
        return b"".join(
            piece if isinstance(piece, bytes) else piece(request, context) for piece in pieces
        )

    return expand


def _opsProblems(ops, where: str, forbidden: Dict[str, str], isRequest: bool) -> List[str]:
    problems = []
    for kind, names in (("remove", ops.remove), ("set", ops.set), ("add", ops.add)):
        for name in names:
            lower = name.lower()
            reason = forbidden.get(lower)
            if isRequest and lower == "host":
                if kind == "add":
                    reason = "a request has exactly one Host; use set"
                elif kind == "remove":
                    reason = ("a request has exactly one Host; use set, or the pool's "
                              "preserve_host: false")
            if reason is not None:
                problems.append(f"{where}.{kind}: {name} cannot be edited: {reason}")
    for kind, values in (("set", ops.set), ("add", ops.add)):
        for name, value in values.items():
            if _CONTROL.search(value):
                problems.append(
                    f"{where}.{kind}.{name}: the value contains a control character "
                    f"(CR, LF, NUL...): {value!r}"
                )
    return problems


def headersProblems(config) -> List[str]:
    """
    What is wrong with a C{headers} policy configuration: edits of headers
    golb owns, values with control characters.

    @param config: a L{golb.config.HeadersPolicy}.
    @return: one line per problem, naming the field (C{request.set: ...}).
    """
    return (
        _opsProblems(config.request, "request", REQUEST_FORBIDDEN, True)
        + _opsProblems(config.response, "response", RESPONSE_FORBIDDEN, False)
    )


class _Ops:
    """
    One direction's edits, compiled.

    @ivar remove: header names (bytes) to remove.
    @ivar set: C{[(name, value)]} to replace.
    @ivar add: C{[(name, value)]} to append.  A value is bytes, or a callable
        C{(request, context) -> bytes} when it has placeholders.
    """

    def __init__(self, ops):
        self.remove: Tuple[bytes, ...] = tuple(name.encode("ascii") for name in ops.remove)
        self.set: Sequence[Tuple[bytes, object]] = tuple(
            (name.encode("ascii"), _compileValue(value)) for name, value in ops.set.items()
        )
        self.add: Sequence[Tuple[bytes, object]] = tuple(
            (name.encode("ascii"), _compileValue(value)) for name, value in ops.add.items()
        )
        self.empty = not (self.remove or self.set or self.add)
        # lower-case names this block gives a value, which a client's
        # Connection header must not be able to drop (request side).
        self.given = frozenset(name.lower() for name, _ in self.set + self.add)

    def apply(self, headers, request, context) -> None:
        """
        Edit C{headers} (a L{twisted.web.http_headers.Headers}).
        """
        for name in self.remove:
            headers.removeHeader(name)
        for name, value in self.set:
            if not isinstance(value, bytes):
                value = value(request, context)
            headers.setRawHeaders(name, [value])
        for name, value in self.add:
            if not isinstance(value, bytes):
                value = value(request, context)
            headers.addRawHeader(name, value)


def _protect(headers, given: FrozenSet[bytes]) -> None:
    """
    Take the names in C{given} out of the client's C{Connection} header, so
    that the headers this policy set reach the backend anyway (a client may
    otherwise name any header there to have golb drop it as hop-by-hop).
    """
    kept = []
    changed = False
    for value in headers.getRawHeaders(b"connection"):
        tokens = [token.strip() for token in value.split(b",")]
        left = [token for token in tokens if token.lower() not in given]
        changed = changed or len(left) != len(tokens)
        if left:
            kept.append(b", ".join(left))
    if not changed:
        return
    if kept:
        headers.setRawHeaders(b"connection", kept)
    else:
        headers.removeHeader(b"connection")


class Headers(Policy):
    """
    Edit request headers before they are forwarded and response headers
    before they are sent, on backend responses and golb's own answers alike.

    Request edits happen in the request phase, before golb builds the
    headers it forwards: hop-by-hop headers and those named in C{Connection}
    are still dropped afterwards, and golb's forwarding headers
    (C{X-Forwarded-*}, C{Forwarded}, C{Via}) are still its own.  A header
    this policy sets or adds reaches the backend even when the client names
    it in its C{Connection} header.

    @ivar request: the request edits, or L{None} when there are none.
    @ivar response: the response edits, or L{None} when there are none.
    """

    def __init__(self, config, env):
        """
        @raise ValueError: when the configuration edits a header golb owns
            or has a value with a control character (see
            L{headersProblems}).
        """
        Policy.__init__(self, config, env)
        problems = headersProblems(config)
        if problems:
            raise ValueError("headers policy: " + "; ".join(problems))
        request = _Ops(config.request)
        response = _Ops(config.response)
        self.request: Optional[_Ops] = None if request.empty else request
        self.response: Optional[_Ops] = None if response.empty else response

    def onRequest(self, request, context):
        ops = self.request
        if ops is not None:
            headers = request.requestHeaders
            ops.apply(headers, request, context)
            if ops.given and headers.hasHeader(b"connection"):
                _protect(headers, ops.given)
        return None

    def onResponse(self, request, context, response):
        if self.response is not None:
            self.response.apply(request.responseHeaders, request, context)
        return None
