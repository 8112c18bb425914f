"""
Policies: the global C{policies:} list and each routing rule's own.

A policy list is a list of one-key mappings whose key is the policy kind
(C{rate_limit}, C{acl}, ...).  Each kind is one frozen class whose C{kind}
class attribute is that key; L{POLICY_CLASSES} maps kinds to classes.
"""

import re
from typing import Any, ClassVar, Dict, Optional, Set, Tuple, Union
from urllib.parse import urlsplit

import attr

from golb import _units
from golb._configpools import absolutePath, httpMethod
from golb._configschema import (
    Invalid,
    Node,
    Section,
    boolean,
    duration,
    filePath,
    integer,
    listOf,
    mapOf,
    networks,
    rate,
    regex,
    size,
    string,
    suggestion,
)

__all__ = [
    "POLICY_CLASSES",
    "AclPolicy",
    "BasicAuthPolicy",
    "CompressPolicy",
    "CorsPolicy",
    "HeaderOps",
    "HeadersPolicy",
    "MaxBodyPolicy",
    "PolicyConfig",
    "RateLimitPolicy",
    "RedirectPolicy",
    "RewritePolicy",
    "policies",
]


@attr.s(frozen=True, auto_attribs=True)
class RateLimitPolicy:
    """
    A token bucket per key: C{rate} sustained, C{burst} at once.

    @ivar key: C{client_ip}, C{route} or C{header:NAME}.
    @ivar store: C{local} or a C{redis://} / C{rediss://} URL.
    @ivar on_store_error: C{open} (let requests through) or C{closed}
        (answer 429) when the store fails.
    """

    kind: ClassVar[str] = "rate_limit"
    rate: _units.Rate
    burst: Optional[int] = None
    key: str = "client_ip"
    store: str = "local"
    on_store_error: str = "open"


@attr.s(frozen=True, auto_attribs=True)
class AclPolicy:
    """
    Client IP allow and deny lists; deny wins; an empty allow list allows all.
    """

    kind: ClassVar[str] = "acl"
    allow: Tuple[_units.Network, ...] = ()
    deny: Tuple[_units.Network, ...] = ()


@attr.s(frozen=True, auto_attribs=True)
class BasicAuthPolicy:
    """
    HTTP basic authentication against an htpasswd file (absolute path).

    @ivar forward_authorization: pass the client's C{Authorization} header on
        to the backend (removed by default).
    """

    kind: ClassVar[str] = "basic_auth"
    users_file: str
    realm: str = "golb"
    forward_authorization: bool = False


@attr.s(frozen=True, auto_attribs=True)
class HeaderOps:
    """
    Header edits: C{set} replaces, C{add} appends, C{remove} deletes.
    """

    set: Dict[str, str] = attr.Factory(dict)
    add: Dict[str, str] = attr.Factory(dict)
    remove: Tuple[str, ...] = ()


@attr.s(frozen=True, auto_attribs=True)
class HeadersPolicy:
    """
    Header edits on the request to the backend and on the response.
    """

    kind: ClassVar[str] = "headers"
    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


@attr.s(frozen=True, auto_attribs=True)
class RewritePolicy:
    """
    Path rewriting before forwarding, applied in field order.
    """

    kind: ClassVar[str] = "rewrite"
    strip_prefix: Optional[str] = None
    add_prefix: Optional[str] = None
    replace_path: Optional[str] = None
    regex: Optional[str] = None
    replacement: Optional[str] = None


@attr.s(frozen=True, auto_attribs=True)
class RedirectPolicy:
    """
    Answer with a redirect; C{to} may use C{{path}}, C{{query}}, C{{host}}.
    """

    kind: ClassVar[str] = "redirect"
    to: str
    code: int = 308


@attr.s(frozen=True, auto_attribs=True)
class CorsPolicy:
    """
    CORS: answer preflights and add C{Access-Control-*} headers.
    """

    kind: ClassVar[str] = "cors"
    allow_origins: Tuple[str, ...]
    allow_methods: Tuple[str, ...] = ("GET", "HEAD", "POST")
    allow_headers: Tuple[str, ...] = ()
    expose_headers: Tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: float = 600.0


@attr.s(frozen=True, auto_attribs=True)
class CompressPolicy:
    """
    Gzip responses of these content types (C{text/*} globs) and sizes.
    """

    kind: ClassVar[str] = "compress"
    types: Tuple[str, ...] = (
        "text/*", "application/json", "application/javascript", "image/svg+xml",
    )
    min_size: int = 1024


@attr.s(frozen=True, auto_attribs=True)
class MaxBodyPolicy:
    """
    Refuse request bodies larger than C{size} bytes with 413.
    """

    kind: ClassVar[str] = "max_body"
    size: int


PolicyConfig = Union[
    RateLimitPolicy, AclPolicy, BasicAuthPolicy, HeadersPolicy, RewritePolicy, RedirectPolicy,
    CorsPolicy, CompressPolicy, MaxBodyPolicy,
]


def rateLimitKey(node: Node) -> str:
    """
    C{client_ip}, C{route} or C{header:NAME}.
    """
    text = string(node)
    if text in ("client_ip", "route") or re.match(r"^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$", text):
        return text
    raise Invalid(f"{text!r} is not one of client_ip, route, header:NAME")


def rateLimitStore(node: Node) -> str:
    """
    C{local} or a C{redis://} or C{rediss://} URL with a host.
    """
    text = string(node)
    if text == "local":
        return text
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("redis", "rediss") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        valid = False
    if not valid:
        raise Invalid(f"{text!r} is not 'local' or a redis://HOST:PORT/DB URL")
    return text


def _checkRateLimit(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    if values.get("burst") is None and values.get("rate") is not None:
        values["burst"] = max(1, values["rate"].count)
    return values


def _checkRewrite(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    if (values.get("regex") is None) != (values.get("replacement") is None) and not failed:
        node.problem("set both regex and replacement, or neither")
    return values


_ORIGIN = re.compile(
    r"^(?:\*|null|https?://(?:\*\.)?[a-z0-9*](?:[a-z0-9.*-]*[a-z0-9])?(?::\d{1,5})?"
    r"|https?://\[[0-9a-f:.]+\](?::\d{1,5})?)$",
    re.IGNORECASE,
)


def _checkCors(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    for index, origin in enumerate(values.get("allow_origins") or ()):
        host = origin.split("://", 1)[-1]
        if not _ORIGIN.match(origin) or host.count("*") > 1 or origin.endswith("/"):
            node.child("allow_origins").problem(
                f"{origin!r} (entry {index}) is not an origin: use '*', 'null', or"
                " scheme://host[:port] with at most one '*' in the host, like"
                " https://*.example.com"
            )
    if values.get("allow_credentials") and "*" in (values.get("allow_origins") or ()):
        node.child("allow_credentials").problem(
            "browsers refuse credentials with allow_origins '*'; list the origins"
        )
    return values


def _problemsFrom(cls, function: str):
    """
    A section check that builds C{cls} from the section's values and reports
    what C{golb.policies.MODULE.FUNCTION} finds wrong with it (checks that
    need the policy's own knowledge of paths, templates and headers).
    """
    module, name = function.rsplit(".", 1)

    def check(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
        if failed:
            return values
        import importlib

        finder = getattr(importlib.import_module(module), name)
        try:
            problems = finder(cls(**values))
        except (TypeError, ValueError):
            return values
        for problem in problems:
            node.problem(problem)
        return values

    return check


def _both(*checks):
    def check(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
        for one in checks:
            values = one(node, values, failed)
        return values

    return check


def _headerName(node: Node) -> str:
    text = string(node)
    if not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", text):
        raise Invalid(f"{text!r} is not a header name")
    return text


def _checkHeaderNames(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    for key in ("set", "add"):
        for header in values.get(key) or {}:
            if not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", header):
                node.child(key).problem(f"{header!r} is not a header name")
    return values


_headerOps = Section(HeaderOps, {
    "set": mapOf(),
    "add": mapOf(),
    "remove": listOf(_headerName, single=True),
}, _checkHeaderNames)

_strings = listOf(string, single=True)

POLICY_SECTIONS = {
    "rate_limit": Section(RateLimitPolicy, {
        "rate": rate,
        "burst": integer(1),
        "key": rateLimitKey,
        "store": rateLimitStore,
        "on_store_error": lambda node: _enum(node, ("open", "closed")),
    }, _checkRateLimit, shorthand=lambda node: {"rate": rate(node)}),
    "acl": Section(AclPolicy, {
        "allow": networks,
        "deny": networks,
    }),
    "basic_auth": Section(BasicAuthPolicy, {
        "users_file": filePath(mustExist=True),
        "realm": string,
        "forward_authorization": boolean,
    }),
    "headers": Section(HeadersPolicy, {"request": _headerOps, "response": _headerOps},
                       _problemsFrom(HeadersPolicy, "golb.policies.headers.headersProblems")),
    "rewrite": Section(RewritePolicy, {
        "strip_prefix": absolutePath,
        "add_prefix": absolutePath,
        "replace_path": absolutePath,
        "regex": regex,
        "replacement": lambda node: node.value if isinstance(node.value, str) else string(node),
    }, _both(_checkRewrite,
             _problemsFrom(RewritePolicy, "golb.policies.rewrite.rewriteProblems"))),
    "redirect": Section(RedirectPolicy, {
        "to": string,
        "code": lambda node: int(_enum(node, ("301", "302", "303", "307", "308"))),
    }, _problemsFrom(RedirectPolicy, "golb.policies.rewrite.redirectProblems")),
    "cors": Section(CorsPolicy, {
        "allow_origins": _strings,
        "allow_methods": listOf(httpMethod, single=True),
        "allow_headers": listOf(_headerName, single=True),
        "expose_headers": listOf(_headerName, single=True),
        "allow_credentials": boolean,
        "max_age": duration,
    }, _checkCors),
    "compress": Section(CompressPolicy, {"types": _strings, "min_size": size}),
    "max_body": Section(MaxBodyPolicy, {"size": size}, shorthand=lambda node: {"size": size(node)}),
}

POLICY_CLASSES = {kind: section.cls for kind, section in POLICY_SECTIONS.items()}


def _enum(node: Node, choices: Tuple[str, ...]) -> str:
    value = node.value
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if text not in choices:
        raise Invalid(f"{value!r} is not one of {', '.join(choices)}")
    return text


def policy(node: Node) -> PolicyConfig:
    """
    One policy: a mapping with one key, the kind.
    """
    kinds = ", ".join(POLICY_SECTIONS)
    if not isinstance(node.value, dict) or len(node.value) != 1:
        raise Invalid(f"expected a mapping with one key, the policy kind (one of {kinds})")
    [kind] = node.value
    section = POLICY_SECTIONS.get(kind)
    child = node.child(kind)
    if section is None:
        node.report.add(
            child.path, node.keyLine(kind),
            f"unknown policy kind{suggestion(str(kind), list(POLICY_SECTIONS))} (one of {kinds})",
        )
        raise _Skip()
    try:
        return section(child)
    except Invalid as e:
        child.problem(str(e))
        raise _Skip() from None


class _Skip(Invalid):
    """
    The problem is already reported.
    """


def policies(node: Node) -> Tuple[PolicyConfig, ...]:
    """
    A list of policies, in order.
    """
    if not isinstance(node.value, list):
        raise Invalid("expected a list of policies")
    result = []
    for item in node.items():
        try:
            result.append(policy(item))
        except _Skip:
            pass
        except Invalid as e:
            item.problem(str(e))
    return tuple(result)
