"""
C{rewrite} and C{redirect}: change the path a backend is asked for, or send
the client elsewhere.

Both work on the request target as it stands at their place in the chain
(C{context.target}: the origin-form path and query, bytes, exactly as the
client sent them, percent-encoding included).

A rewrite changes the path only: the query string (everything from the first
C{?}) is forwarded exactly as received.  Its steps apply in this order:
C{strip_prefix}, C{add_prefix}, C{replace_path}, then C{regex} with
C{replacement}.  Prefixes match whole path segments of the raw path, so an
encoded slash (C{%2F}) never counts as a segment boundary.

A redirect answers with a C{Location} built from a template whose
placeholders are filled from the request; nothing from the request is ever
interpreted as a template.
"""

import re
from typing import List, Optional, Tuple

from twisted.web.http import RESPONSES

from golb.errors import GolbError
from golb.policies import Answer, Policy
from golb.policies.headers import requestHost
from golb.proxy import originForm

__all__ = [
    "REDIRECT_PLACEHOLDERS",
    "Redirect",
    "Rewrite",
    "redirectProblems",
    "rewriteProblems",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters a path keeps as written (RFC 3986 pchar and "/"); "%" is kept
# when it starts a %XX escape.
_PATH_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"
)
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_HEX_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")

# The request header telling the backend what strip_prefix removed.
FORWARDED_PREFIX = b"X-Forwarded-Prefix"
# Where a request remembers the prefixes stripped so far (several rewrite
# policies in one chain).
_STRIPPED = "_golbStrippedPrefix"


def _percent(character: str) -> str:
    return "".join(f"%{byte:02X}" for byte in character.encode("utf-8"))


def _encodePath(text: str) -> bytes:
    """
    A configured path as raw bytes: characters a URL path may hold stay as
    written (existing C{%XX} escapes too); everything else (spaces, non-ASCII
    letters, a lone C{%}...) is percent-encoded as UTF-8.
    """
    out = []
    index = 0
    while index < len(text):
        character = text[index]
        if character == "%" and _ESCAPE.match(text, index):
            out.append(text[index:index + 3])
            index += 3
            continue
        out.append(character if character in _PATH_CHARS else _percent(character))
        index += 1
    return "".join(out).encode("ascii")


def _encodeLoose(text: str) -> str:
    """
    Percent-encode spaces and non-ASCII characters only (in a regex
    replacement or a redirect template, where other characters have meaning).
    """
    return "".join(
        _percent(character) if character == " " or character > "~" else character
        for character in text
    )


def _pathProblems(field: str, text: Optional[str]) -> List[str]:
    if text is None:
        return []
    if _CONTROL.search(text):
        return [f"{field}: contains a control character: {text!r}"]
    if "?" in text or "#" in text:
        return [f"{field}: {text!r} contains '?' or '#'; a rewrite changes the path only "
                "and keeps the client's query string"]
    return []


def rewriteProblems(config) -> List[str]:
    """
    What is wrong with a C{rewrite} policy configuration that the config
    schema does not check: control characters, C{?} or C{#} in a path, a
    C{replacement} that refers to groups C{regex} does not have.

    @param config: a L{golb.config.RewritePolicy}.
    @return: one line per problem, naming the field.
    """
    problems = []
    for field in ("strip_prefix", "add_prefix", "replace_path", "replacement"):
        problems.extend(_pathProblems(field, getattr(config, field)))
    if config.regex is not None and config.replacement is not None and not problems:
        try:
            re.compile(config.regex).sub(_encodeLoose(config.replacement), "")
        except (re.error, IndexError) as e:
            problems.append(f"replacement: {config.replacement!r} does not fit regex "
                            f"{config.regex!r}: {e}")
    return problems


class _Strip:
    """
    Strips a path prefix on segment boundaries: C{/api} strips C{/api} and
    C{/api/x}, not C{/apix} nor C{/api%2Fx}.  Percent escapes in the prefix
    match either case of hex digit.
    """

    def __init__(self, prefix: bytes):
        self.prefix = prefix
        self.length = len(prefix)
        self.pattern = None
        if b"%" in prefix:
            source = b"".join(
                b"(?i:%" + piece + b")" if index % 2 else re.escape(piece)
                for index, piece in enumerate(_HEX_ESCAPE.split(prefix))
            )
            self.pattern = re.compile(source + b"(?=/|\\Z)")

    def __call__(self, path: bytes) -> Tuple[bytes, bytes]:
        """
        @return: C{(rest, stripped)}: the path left (at least C{/}) and the
            raw prefix removed (C{b""} when the path does not start with it).
        """
        if self.pattern is not None:
            match = self.pattern.match(path)
            if match is None:
                return path, b""
            end = match.end()
        else:
            end = self.length
            if not path.startswith(self.prefix) or path[end:end + 1] not in (b"", b"/"):
                return path, b""
        return path[end:] or b"/", path[:end]


class Rewrite(Policy):
    """
    Rewrite the path forwarded to the backend: C{strip_prefix}, then
    C{add_prefix}, then C{replace_path}, then C{regex} and C{replacement}.
    The query string is kept exactly.  When C{strip_prefix} removes
    something, the backend is told what in C{X-Forwarded-Prefix}.

    @ivar strip: the compiled C{strip_prefix}, or L{None}.
    @ivar addPrefix: the raw prefix to add (no trailing slash), or L{None}.
    @ivar replacePath: the raw replacement path, or L{None}.
    @ivar pattern: the compiled C{regex}, or L{None}.
    @ivar replacement: its replacement template.
    """

    def __init__(self, config, env):
        """
        @raise ValueError: for the problems L{rewriteProblems} finds.
        """
        Policy.__init__(self, config, env)
        problems = rewriteProblems(config)
        if problems:
            raise ValueError("rewrite policy: " + "; ".join(problems))
        self.strip = None
        if config.strip_prefix is not None:
            prefix = _encodePath(config.strip_prefix).rstrip(b"/")
            if prefix:
                self.strip = _Strip(prefix)
        self.addPrefix = None
        if config.add_prefix is not None:
            self.addPrefix = _encodePath(config.add_prefix).rstrip(b"/") or None
        self.replacePath = None
        if config.replace_path is not None:
            self.replacePath = _encodePath(config.replace_path)
        self.pattern = None
        self.replacement = ""
        if config.regex is not None:
            self.pattern = re.compile(config.regex)
            self.replacement = _encodeLoose(config.replacement or "")

    def onRequest(self, request, context):
        target = context.target
        if target[:1] != b"/":
            return None
        path, mark, query = target.partition(b"?")
        if self.strip is not None:
            path, stripped = self.strip(path)
            if stripped:
                self._forwardedPrefix(request, stripped)
        if self.addPrefix is not None:
            path = self.addPrefix + path
        if self.replacePath is not None:
            path = self.replacePath
        if self.pattern is not None:
            text = self.pattern.sub(self.replacement, path.decode("latin-1"))
            path = text.encode("latin-1")
            if path[:1] != b"/":
                path = b"/" + path
        context.target = path + mark + query
        return None

    @staticmethod
    def _forwardedPrefix(request, stripped: bytes) -> None:
        """
        Tell the backend (C{X-Forwarded-Prefix}) every prefix stripped from
        this request so far, replacing whatever the client sent.
        """
        previous = getattr(request, _STRIPPED, b"")
        if previous:
            stripped = previous + stripped
        setattr(request, _STRIPPED, stripped)
        request.requestHeaders.setRawHeaders(FORWARDED_PREFIX, [stripped])


# Placeholder -> what it expands to.
REDIRECT_PLACEHOLDERS = {
    "scheme": "http or https, as the client connected to golb",
    "host": "the request's Host without its port (IPv6 in brackets)",
    "path": "the path, starting with exactly one '/'",
    "query": "'?' and the query string when the target has a '?', else nothing",
    "uri": "{path}{query}",
}
_TEMPLATE = re.compile(r"\{([^{}]*)\}")
# What a Host may hold (as golb's listener checks it) - no '/', '\\', '@'.
_HOST = re.compile(rb"[A-Za-z0-9._~%!$&'()*+;=\[\]:-]*\Z")
# Never in a Location: controls, spaces, non-ASCII.
_UNSAFE = re.compile(rb"[\x00-\x20\x7f-\xff]")
_LEADING_SLASHES = re.compile(rb"[/\\]+")


def _parseTemplate(text: str) -> Tuple[List[object], List[str]]:
    """
    Split a redirect template into literal bytes and placeholder names.

    @return: C{(parts, problems)}.
    """
    parts: List[object] = []
    problems = []
    pieces = _TEMPLATE.split(text)
    for index, piece in enumerate(pieces):
        if index % 2:
            if piece not in REDIRECT_PLACEHOLDERS:
                problems.append(
                    f"to: unknown placeholder {{{piece}}} in {text!r}; "
                    f"use {', '.join('{' + name + '}' for name in REDIRECT_PLACEHOLDERS)}"
                )
            parts.append(piece)
        elif piece:
            if "{" in piece or "}" in piece:
                problems.append(f"to: unmatched brace in {text!r}; write %7B or %7D for a "
                                "literal brace")
            if _CONTROL.search(piece):
                problems.append(f"to: contains a control character: {text!r}")
            parts.append(_encodeLoose(piece).encode("ascii", "replace"))
    return parts, problems


def redirectProblems(config) -> List[str]:
    """
    What is wrong with a C{redirect} policy's C{to} template: unknown
    placeholders, stray braces, control characters.

    @param config: a L{golb.config.RedirectPolicy}.
    @return: one line per problem.
    """
    return _parseTemplate(config.to)[1]


class Redirect(Policy):
    """
    Answer every request with a redirect to C{to}, whose placeholders
    (L{REDIRECT_PLACEHOLDERS}) are filled from the request.  A request that
    is already at the place it would be sent to is passed on instead, so a
    redirect cannot loop on itself.

    @ivar parts: the template: literal bytes and placeholder names.
    @ivar code: the status code.
    """

    def __init__(self, config, env):
        """
        @raise ValueError: for the problems L{redirectProblems} finds.
        """
        Policy.__init__(self, config, env)
        parts, problems = _parseTemplate(config.to)
        if problems:
            raise ValueError("redirect policy: " + "; ".join(problems))
        # {path} and {uri} right after a literal ending in "/" lose their
        # leading slash: "https://x/{path}" means https://x/a, not https://x//a.
        self.parts = tuple(
            "+" + part
            if part in ("path", "uri") and index and isinstance(parts[index - 1], bytes)
            and parts[index - 1].endswith(b"/")
            else part
            for index, part in enumerate(parts)
        )
        # Only a template written protocol-relative may give one.
        self.relativeHost = bool(parts) and isinstance(parts[0], bytes) and parts[0][:2] == b"//"
        self.code = config.code
        self.reason = RESPONSES.get(config.code, b"Redirect")
        self.usesHost = "host" in self.parts

    def location(self, request, context) -> Optional[bytes]:
        """
        The expanded C{Location} for C{request}.

        @return: the location, or L{None} when the request's Host is not
            fit for one.
        """
        target = context.target
        path, mark, query = target.partition(b"?")
        query = mark + query
        if path[:1] in (b"/", b"\\"):
            # "//evil.example" or "/\evil.example" after a relative template
            # would send the client to another site.
            path = _LEADING_SLASHES.sub(b"/", path, count=1)
        host = b""
        if self.usesHost:
            host = requestHost(request)
            if not _HOST.match(host):
                return None
        values = {
            "scheme": request.scheme().encode("ascii"),
            "host": host,
            "path": path,
            "query": query,
            "uri": path + query,
            "+path": path[1:] if path[:1] == b"/" else path,
            "+uri": (path[1:] if path[:1] == b"/" else path) + query,
        }
        location = b"".join(
            part if isinstance(part, bytes) else values[part] for part in self.parts
        )
        if location[:2] in (b"//", b"/\\") and not self.relativeHost:
            location = _LEADING_SLASHES.sub(b"/", location, count=1)
        return location

    def onRequest(self, request, context):
        location = self.location(request, context)
        if location is None or _UNSAFE.search(location):
            return GolbError("bad-request", "The request cannot be redirected: its Host "
                                            "or target is not fit for a Location.")
        original = originForm(request.uri)
        if location == original:
            return None
        if location[:1] != b"/":
            values = request.requestHeaders.getRawHeaders(b"host")
            here = request.scheme().encode("ascii") + b"://" + (values[0] if values else b"")
            if location == here + original:
                return None
        body = b"%d %s: %s\n" % (self.code, self.reason, location)
        return Answer(
            self.code,
            [(b"Location", location), (b"Content-Type", b"text/plain; charset=utf-8")],
            body,
        )
