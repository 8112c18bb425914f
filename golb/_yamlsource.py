"""
A YAML loader that remembers where things are.

Mappings load as L{SourceMap} and sequences as L{SourceList}: ordinary
C{dict} and C{list} subclasses that also know the line of the collection, of
every key and of every value, so that configuration errors can point at a
line.  Duplicate keys are kept as a note on the mapping instead of silently
overwriting.

The loader also reads a few scalars the way people mean them rather than the
way YAML 1.1 does: only C{true}/C{false} are booleans (C{on}, C{off}, C{yes}
and C{no} stay strings, so C{retries: {on: [...]}} works), integers are
decimal (C{0800} is 800, not a string or an octal number), C{1:30} is a string
rather than a sexagesimal number, and dates stay strings.
"""

import re
from typing import Dict, List, Optional, Tuple

import yaml

__all__ = ["SourceList", "SourceMap", "loadYAML"]


class SourceMap(dict):
    """
    A mapping loaded from YAML, with lines (1-based).

    @ivar line: the line where the mapping starts.
    @ivar keyLines: key -> the line of that key.
    @ivar valueLines: key -> the line where its value starts.
    @ivar duplicates: C{(key, line, firstLine)} for each key that appeared
        more than once; the last value is the one kept.
    """

    line: Optional[int] = None

    def __init__(self, *args, **kwargs):
        dict.__init__(self, *args, **kwargs)
        self.keyLines: Dict[object, int] = {}
        self.valueLines: Dict[object, int] = {}
        self.duplicates: List[Tuple[object, int, int]] = []


class SourceList(list):
    """
    A sequence loaded from YAML, with lines (1-based).

    @ivar line: the line where the sequence starts.
    @ivar itemLines: the line of each item, by index.
    """

    line: Optional[int] = None

    def __init__(self, *args):
        list.__init__(self, *args)
        self.itemLines: List[int] = []


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Loader(yaml.SafeLoader):
    """
    L{yaml.SafeLoader} building L{SourceMap} and L{SourceList}, with the
    YAML 1.2-like scalars described in the module docstring.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                               "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    yaml_constructors = dict(yaml.SafeLoader.yaml_constructors)

    def constructSourceMap(self, node: yaml.MappingNode):
        data = SourceMap()
        data.line = _line(node)
        yield data
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        self.flatten_mapping(node)
        for keyNode, valueNode in node.value:
            key = self.construct_object(keyNode, deep=False)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found an unhashable key", keyNode.start_mark,
                ) from None
            if key in data:
                data.duplicates.append((key, _line(keyNode), data.keyLines[key]))
            data[key] = self.construct_object(valueNode, deep=False)
            data.keyLines[key] = _line(keyNode)
            data.valueLines[key] = _line(valueNode)

    def constructSourceList(self, node: yaml.SequenceNode):
        data = SourceList()
        data.line = _line(node)
        yield data
        for itemNode in node.value:
            data.append(self.construct_object(itemNode, deep=False))
            data.itemLines.append(_line(itemNode))

    def constructInt(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node).replace("_", "")
        if text.lower().lstrip("+-").startswith("0x"):
            return int(text, 16)
        return int(text, 10)

    def constructBool(self, node: yaml.ScalarNode) -> bool:
        return self.construct_scalar(node).lower() == "true"


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.constructSourceMap)
_Loader.add_constructor("tag:yaml.org,2002:omap", _Loader.constructSourceMap)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.constructSourceList)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.constructInt)
_Loader.add_constructor("tag:yaml.org,2002:bool", _Loader.constructBool)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def loadYAML(text: str) -> object:
    """
    Load one YAML document.

    @param text: the document.
    @return: L{SourceMap}, L{SourceList} or a scalar; L{None} for an empty
        document.
    @raise yaml.YAMLError: for a syntax error; a L{yaml.MarkedYAMLError}
        carries the line in C{problem_mark} or C{context_mark}.
    """
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
