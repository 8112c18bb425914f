"""
A small table-driven engine that turns loaded YAML into frozen attrs objects
while collecting every problem with its path and line.

A L{Section} maps YAML keys to parsers for one attrs class; the class's own
attribute defaults are the configuration defaults.  A parser is a callable
taking a L{Node} and returning a value, or raising L{Invalid} with a message
for people.  Parsing goes on after a problem so that one run reports them all.
"""

import difflib
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import attr

from golb import _units
from golb._yamlsource import SourceList, SourceMap

__all__ = [
    "ConfigError",
    "Invalid",
    "Node",
    "Problem",
    "Report",
    "Section",
]


@attr.s(frozen=True, auto_attribs=True)
class Problem:
    """
    One thing wrong with a configuration file.

    @ivar filename: the file, as given.
    @ivar line: 1-based line, or L{None} when unknown.
    @ivar path: where in the document, like C{backend_pools[0].backends[1].url};
        C{""} for the document itself.
    @ivar message: what is wrong and, where possible, how to fix it.
    """

    filename: str
    line: Optional[int]
    path: str
    message: str

    def __str__(self) -> str:
        where = os.path.basename(self.filename) or self.filename
        if self.line is not None:
            where = f"{where}:{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """
    A configuration could not be loaded.

    @ivar problems: every L{Problem} found, in line order.
    """

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        Exception.__init__(self, "\n".join(str(problem) for problem in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


class Invalid(Exception):
    """
    Raised by a parser: the value at the node is wrong; C{str()} says why.
    """


@attr.s(auto_attribs=True)
class Report:
    """
    Mutable state of one parse: the problems so far and where each parsed
    object came from.

    @ivar filename: the file being parsed.
    @ivar baseDir: the directory relative file paths resolve against.
    @ivar problems: problems found so far.
    """

    filename: str
    baseDir: str
    problems: List[Problem] = attr.Factory(list)
    _origins: Dict[int, "Node"] = attr.Factory(dict)
    _keep: List[object] = attr.Factory(list)

    def add(self, path: str, line: Optional[int], message: str) -> None:
        """
        Record a problem.
        """
        self.problems.append(Problem(self.filename, line, path, message))

    def remember(self, obj: object, node: "Node") -> None:
        """
        Remember that C{obj} was parsed from C{node}.
        """
        self._keep.append(obj)
        self._origins[id(obj)] = node

    def origin(self, obj: object) -> "Node":
        """
        The node an object was parsed from.
        """
        return self._origins[id(obj)]


@attr.s(frozen=True, auto_attribs=True)
class Node:
    """
    A value from the document, with its path and line.

    @ivar value: what YAML produced.
    @ivar path: its path, like C{backend_pools[0].name}.
    @ivar line: its line, or L{None}.
    @ivar report: the L{Report} of this parse.
    @ivar index: its index when it is an item of a list.
    """

    value: Any
    path: str
    line: Optional[int]
    report: Report
    index: Optional[int] = None

    def child(self, key: object) -> "Node":
        """
        The node of a key of this mapping; an absent key gives a node with
        value L{None} and this mapping's line.
        """
        name = f"{self.path}.{key}" if self.path else str(key)
        value = self.value if isinstance(self.value, dict) else {}
        line = getattr(value, "valueLines", {}).get(key, self.line)
        return Node(value.get(key), name, line, self.report)

    def items(self) -> List["Node"]:
        """
        The nodes of the items of this list.
        """
        lines = getattr(self.value, "itemLines", [])
        return [
            Node(item, f"{self.path}[{index}]",
                 lines[index] if index < len(lines) else self.line, self.report, index)
            for index, item in enumerate(self.value)
        ]

    def keyLine(self, key: object) -> Optional[int]:
        """
        The line of a key of this mapping, or of the mapping.
        """
        return getattr(self.value, "keyLines", {}).get(key, self.line)

    def problem(self, message: str) -> None:
        """
        Record a problem at this node.
        """
        self.report.add(self.path, self.line, message)

    def has(self, key: str) -> bool:
        """
        Whether this mapping has C{key} with a value other than null.
        """
        return isinstance(self.value, dict) and self.value.get(key) is not None


def suggestion(word: str, choices: Sequence[str]) -> str:
    """
    C{"; did you mean 'x'?"} for the closest choice, or C{""}.
    """
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def reportDuplicates(node: Node) -> None:
    """
    Report each key that appears twice in the mapping at C{node}.
    """
    for key, line, firstLine in getattr(node.value, "duplicates", ()):
        name = f"{node.path}.{key}" if node.path else str(key)
        node.report.add(name, line, f"duplicate key (first at line {firstLine})")


Check = Callable[[Node, Dict[str, Any], Set[str]], Dict[str, Any]]


@attr.s(frozen=True)
class Section:
    """
    The schema of one mapping: a parser per YAML key and the attrs class to
    build.  Keys absent or null take the class's defaults; attrs fields
    without a default are required keys, unless C{check} provides them.

    @ivar cls: the attrs class.
    @ivar parsers: YAML key -> parser.
    @ivar check: called with the node, the parsed values (defaults filled in,
        L{None} for required keys that are missing or bad) and the names of
        the keys that had problems; returns the keyword arguments for C{cls}
        (it may add, drop or fix values and record problems).
    @ivar shorthand: a parser for a value that is not a mapping, returning a
        dict of values (for C{rate_limit: "100/minute"}).
    """

    cls: type = attr.ib(eq=False)
    parsers: Dict[str, Callable[[Node], Any]] = attr.ib()
    check: Optional[Check] = attr.ib(default=None)
    shorthand: Optional[Callable[[Node], Dict[str, Any]]] = attr.ib(default=None)

    def __call__(self, node: Node) -> Any:
        failed: Set[str] = set()
        if not isinstance(node.value, dict):
            if self.shorthand is None or node.value is None:
                raise Invalid("expected a mapping")
            values = self.shorthand(node)
        else:
            values = self._parseMapping(node, failed)
        for field in attr.fields(self.cls):
            if values.get(field.name) is None and field.default is not attr.NOTHING:
                values[field.name] = _default(field)
        if self.check is not None:
            values = self.check(node, values, failed)
        obj = self.cls(**values)
        node.report.remember(obj, node)
        return obj

    def _parseMapping(self, node: Node, failed: Set[str]) -> Dict[str, Any]:
        reportDuplicates(node)
        for key in node.value:
            if key not in self.parsers:
                name = f"{node.path}.{key}" if node.path else str(key)
                node.report.add(
                    name, node.keyLine(key), "unknown key" + suggestion(str(key), self.parsers)
                )
        values = {}
        fields = {field.name: field for field in attr.fields(self.cls)}
        for key, parser in self.parsers.items():
            child = node.child(key)
            field = fields.get(key)
            if child.value is None and isinstance(parser, Section) and field is not None and (
                field.default not in (None, attr.NOTHING)
            ):
                # An absent section still goes through its checks, with defaults.
                empty = SourceMap()
                empty.line = child.line
                child = Node(empty, child.path, child.line, node.report)
            if child.value is None:
                if field is not None and field.default is attr.NOTHING:
                    failed.add(key)
                    node.report.add(node.path, node.line, f"missing required key {key!r}")
                    values[key] = None
                continue
            before = len(node.report.problems)
            try:
                values[key] = parser(child)
            except Invalid as e:
                child.problem(str(e))
                values[key] = None
            if len(node.report.problems) != before:
                failed.add(key)
        return values


def _default(field: "attr.Attribute") -> Any:
    if isinstance(field.default, attr.Factory):
        return field.default.factory()
    return field.default


def optional(parser: Callable[[Node], Any]) -> Callable[[Node], Any]:
    """
    A parser that lets null through as L{None}.
    """
    return lambda node: None if node.value is None else parser(node)


def units(parse: Callable[[Any], Any]) -> Callable[[Node], Any]:
    """
    A parser from one of the L{golb._units} functions.
    """

    def parser(node: Node) -> Any:
        try:
            return parse(node.value)
        except _units.UnitError as e:
            raise Invalid(str(e)) from None

    return parser


duration = units(_units.parseDuration)
size = units(_units.parseSize)
rate = units(_units.parseRate)
percent = units(_units.parsePercent)
address = units(_units.parseAddress)


def positiveDuration(node: Node) -> float:
    """
    A duration greater than zero.
    """
    value = duration(node)
    if value <= 0:
        raise Invalid(f"{node.value!r} must be more than 0")
    return value


def string(node: Node) -> str:
    """
    A non-empty string.
    """
    if not isinstance(node.value, str):
        raise Invalid(f"expected a string, not {node.value!r}")
    if not node.value.strip():
        raise Invalid("expected a non-empty string")
    return node.value


def scalarString(node: Node) -> str:
    """
    A string, or a number written without quotes (C{version: 2}).
    """
    value = node.value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise Invalid(f"expected a string, not {value!r}")
    return value


def boolean(node: Node) -> bool:
    """
    C{true} or C{false}.
    """
    if not isinstance(node.value, bool):
        raise Invalid(f"expected true or false, not {node.value!r}")
    return node.value


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Callable[[Node], int]:
    """
    An integer within C{low..high} (either bound may be absent).
    """

    def parser(node: Node) -> int:
        value = node.value
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"expected an integer, not {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                raise Invalid(f"{value} is out of range; it must be {low} or more")
            raise Invalid(f"{value} is out of range {low}..{high}")
        return value

    return parser


def enum(*choices: str, normalize: Callable[[str], str] = str) -> Callable[[Node], str]:
    """
    One of C{choices}; C{normalize} maps the accepted spelling to the stored
    value.
    """

    def parser(node: Node) -> str:
        value = node.value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if value not in choices:
            allowed = ", ".join(choices)
            hint = suggestion(value, choices) if isinstance(value, str) else ""
            raise Invalid(f"{value!r} is not one of {allowed}{hint}")
        return normalize(value)

    return parser


def listOf(parser: Callable[[Node], Any], single: bool = False) -> Callable[[Node], tuple]:
    """
    A list whose items each go through C{parser}; bad items are reported and
    left out.  With C{single}, a lone scalar is a list of one.
    """

    def parse(node: Node) -> tuple:
        value = node.value
        if not isinstance(value, list):
            if single and not isinstance(value, dict):
                lone = SourceList([value])
                lone.line = node.line
                lone.itemLines = [node.line]
                node = Node(lone, node.path, node.line, node.report)
            else:
                raise Invalid("expected a list")
        items = []
        for item in node.items():
            try:
                items.append(parser(item))
            except Invalid as e:
                item.problem(str(e))
        return tuple(items)

    return parse


def mapOf(parser: Callable[[Node], Any] = scalarString) -> Callable[[Node], dict]:
    """
    A mapping of string keys to values that go through C{parser}.
    """

    def parse(node: Node) -> dict:
        if not isinstance(node.value, dict):
            raise Invalid("expected a mapping")
        reportDuplicates(node)
        result = {}
        for key in node.value:
            child = node.child(key)
            if not isinstance(key, str):
                node.report.add(child.path, node.keyLine(key), "expected a string key")
                continue
            try:
                result[key] = parser(child)
            except Invalid as e:
                child.problem(str(e))
        return result

    return parse


def networks(node: Node) -> tuple:
    """
    A list of IP networks (a single one may stand alone); see
    L{_units.parseNetwork}.
    """
    return listOf(units(_units.parseNetwork), single=True)(node)


def regex(node: Node) -> str:
    """
    A regular expression that compiles; kept as its source.
    """
    text = string(node)
    try:
        re.compile(text)
    except re.error as e:
        raise Invalid(f"{text!r} is not a valid regular expression: {e}") from None
    return text


def textOrRegex(node: Node) -> str:
    """
    Literal text, or C{/regex/} whose regex must compile.
    """
    text = scalarString(node)
    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
        try:
            re.compile(text[1:-1])
        except re.error as e:
            raise Invalid(f"{text!r} is not a valid regular expression: {e}") from None
    return text


def filePath(mustExist: bool = False) -> Callable[[Node], str]:
    """
    A file path: C{~} expanded, relative paths made absolute against the
    configuration file's directory.  With C{mustExist}, the file must exist.
    """

    def parser(node: Node) -> str:
        path = resolvePath(string(node), node.report.baseDir)
        if mustExist:
            checkFile(node, path)
        return path

    return parser


def resolvePath(path: str, baseDir: str) -> str:
    """
    Expand C{~} and make C{path} absolute against C{baseDir}.
    """
    return os.path.normpath(os.path.join(baseDir, os.path.expanduser(path)))


def checkFile(node: Node, path: str) -> None:
    """
    Raise L{Invalid} unless C{path} is a readable file.
    """
    if not os.path.isfile(path):
        raise Invalid(f"file {path!r} does not exist")
    if not os.access(path, os.R_OK):
        raise Invalid(f"file {path!r} is not readable")


def exclusive(node: Node, keys: Sequence[str], required: bool) -> None:
    """
    Report when the mapping at C{node} sets more than one of C{keys} (or
    none, if C{required}).
    """
    present = [key for key in keys if node.has(key)]
    names = " or ".join(repr(key) for key in keys)
    if len(present) > 1:
        node.problem(f"set only one of {names}")
    elif required and not present:
        node.problem(f"set one of {names}")
