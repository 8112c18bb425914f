"""
The C{routing_rules} part of the configuration: what a request must look like
(C{match}) and where it goes (C{target_pool}, C{split}, C{mirror}).
"""

import re
from typing import Any, Dict, Optional, Set, Tuple

import attr

from golb import _units
from golb._configpolicies import PolicyConfig, policies
from golb._configpools import absolutePath, httpMethod, name
from golb._configschema import (
    Invalid,
    Node,
    Section,
    exclusive,
    integer,
    listOf,
    mapOf,
    networks,
    percent,
    regex,
    string,
    textOrRegex,
)

__all__ = ["MatchConfig", "Mirror", "RuleConfig", "SplitTarget", "rule"]


@attr.s(frozen=True, auto_attribs=True)
class MatchConfig:
    """
    What a request must look like; every condition set must hold.  An empty
    match matches everything.

    @ivar host: exact host or C{*.example.com}, lower-case.
    @ivar path: a glob (C{/api/*}); at most one of C{path}, C{path_prefix},
        C{path_regex}.
    @ivar method: upper-case methods; empty = any.
    @ivar headers: header name -> exact value or C{/regex/}.
    @ivar query: query argument -> exact value or C{/regex/}.
    @ivar client_ip: networks the client address must be in; empty = any.
    """

    host: Optional[str] = None
    path: Optional[str] = None
    path_prefix: Optional[str] = None
    path_regex: Optional[str] = None
    method: Tuple[str, ...] = ()
    headers: Dict[str, str] = attr.Factory(dict)
    query: Dict[str, str] = attr.Factory(dict)
    client_ip: Tuple[_units.Network, ...] = ()


@attr.s(frozen=True, auto_attribs=True)
class SplitTarget:
    """
    One pool of a weighted split.
    """

    pool: str
    weight: int


@attr.s(frozen=True, auto_attribs=True)
class Mirror:
    """
    Copy a share of requests to a pool, ignoring its responses.

    @ivar percent: the share mirrored, a fraction from 0 to 1.
    """

    pool: str
    percent: float = 1.0


@attr.s(frozen=True, auto_attribs=True)
class RuleConfig:
    """
    A routing rule: exactly one of C{target_pool} and C{split}.

    @ivar name: C{rule<N>} by default, N its index in C{routing_rules}.
    @ivar priority: higher first; ties keep file order.
    """

    name: Optional[str] = None
    priority: int = 0
    match: MatchConfig = MatchConfig()
    target_pool: Optional[str] = None
    split: Tuple[SplitTarget, ...] = ()
    mirror: Optional[Mirror] = None
    policies: Tuple[PolicyConfig, ...] = ()


_HOST = re.compile(r"^(?:\*|(?:\*\.)?[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?)$")


def hostPattern(node: Node) -> str:
    """
    A host name, C{*.domain} or C{*}; lower-cased.
    """
    text = string(node).strip().lower()
    if not _HOST.match(text):
        raise Invalid(f"{text!r} is not a host name or a wildcard like '*.example.com'")
    return text


def _checkMatch(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    exclusive(node, ("path", "path_prefix", "path_regex"), required=False)
    return values


def _splitTargets(node: Node) -> Tuple[SplitTarget, ...]:
    if isinstance(node.value, list) and not node.value:
        raise Invalid("a split needs at least one pool")
    targets = listOf(_splitTarget)(node)
    if len(targets) == len(node.value) and sum(target.weight for target in targets) == 0:
        raise Invalid("the split weights add up to 0")
    return targets


_splitTarget = Section(SplitTarget, {"pool": string, "weight": integer(0)})


def _checkRule(node: Node, values: Dict[str, Any], failed: Set[str]) -> Dict[str, Any]:
    if values.get("name") is None:
        values["name"] = f"rule{node.index}"
    if not failed & {"target_pool", "split"}:
        exclusive(node, ("target_pool", "split"), required=True)
    return values


rule = Section(RuleConfig, {
    "name": name,
    "priority": integer(),
    "match": Section(MatchConfig, {
        "host": hostPattern,
        "path": absolutePath,
        "path_prefix": absolutePath,
        "path_regex": regex,
        "method": listOf(httpMethod, single=True),
        "headers": mapOf(textOrRegex),
        "query": mapOf(textOrRegex),
        "client_ip": networks,
    }, _checkMatch),
    "target_pool": string,
    "split": _splitTargets,
    "mirror": Section(Mirror, {"pool": string, "percent": percent}),
    "policies": policies,
}, _checkRule)
