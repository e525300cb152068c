"""Bytes of a spec -> a tree of dicts, lists and scalars, bounded in depth and size.

JSON goes through orjson; anything else is YAML (safe, dates kept as strings). Hostile
YAML is refused before a tree is built: libyaml's event stream (iterative, so a document
nested 30,000 deep cannot overflow the C stack as composing it would) is scanned once to
measure the nesting depth and how many nodes aliases add (a "billion laughs" document is a
few hundred bytes that alias their way to billions of nodes). Every refusal is a
``SpecError`` naming the file.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml

from gateway.errors import ConfigError

#: deepest nesting of mappings and lists a spec may have (real ones stay under 30)
MAX_DEPTH = 200
#: how many nodes YAML aliases may add to a document when expanded
MAX_ALIAS_NODES = 1_000_000


class SpecError(ConfigError):
    """A spec cannot be read, parsed or used; ``source`` names the file or URL."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(source, [problem])
        self.args = (f"{source}: {problem}",)

    def __str__(self) -> str:
        return f"{self.source}: {self.problems[0]}"


def parse_document(raw: bytes, source: str) -> Any:
    """JSON when it looks like JSON, else YAML; errors give the line (and column)."""
    text_start = raw.lstrip()[:1]
    if text_start in (b"{", b"["):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            if "depth" in e.msg:
                raise SpecError(source, _too_deep()) from None
            if not source.endswith((".yaml", ".yml")):
                raise SpecError(source, f"line {e.lineno}, column {e.colno}: {e.msg}") from None
        else:
            if _depth_over(data, MAX_DEPTH):
                raise SpecError(source, _too_deep())
            return data
    return _parse_yaml(raw, source)


def _parse_yaml(raw: bytes, source: str) -> Any:
    try:
        _scan(raw, source)
        data = yaml.load(raw, Loader=_SpecLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(source, f"{where}{e.problem or e}") from None
    except yaml.YAMLError as e:
        raise SpecError(source, f"not valid YAML: {e}") from None
    return _str_keys(data)


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels (mappings and lists within each other)"


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SpecLoader(_BaseLoader):  # type: ignore[misc]
    """Safe YAML, but dates stay strings: tool schemas must be JSON."""


_SpecLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}

_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _scan(raw: bytes, source: str) -> None:
    """Refuse YAML nested deeper than ``MAX_DEPTH`` or whose aliases add too many nodes.

    Counts nodes as the composer would expand them: an alias adds the size of its anchor's
    node. Syntax errors are left for the loader, which reports them with their position.
    """
    nodes = added = 0
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    opened: list[tuple[str | None, int]] = []  # collections being read: anchor, nodes before
    for event in yaml.parse(raw, Loader=_BaseLoader):
        if isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, _OPEN):
            opened.append((event.anchor, nodes))
            nodes += 1
            if len(opened) > MAX_DEPTH:
                raise SpecError(source, _too_deep())
        elif isinstance(event, _CLOSE):
            anchor, before = opened.pop()
            if anchor:
                sizes[anchor] = nodes - before
        elif isinstance(event, yaml.AliasEvent):
            size = _alias_size(event, sizes, opened, source)
            nodes += size
            added += size
            if added > MAX_ALIAS_NODES:
                raise SpecError(
                    source,
                    f"YAML aliases expand to more than {MAX_ALIAS_NODES} nodes "
                    "(a 'billion laughs' document?)",
                )


def _alias_size(
    event: yaml.AliasEvent, sizes: dict[str, int], opened: list[tuple[str | None, int]], src: str
) -> int:
    anchor = event.anchor or ""
    if any(name == anchor for name, _ in opened):
        raise SpecError(src, f"the YAML alias *{anchor} refers to a node that contains it")
    return sizes.get(anchor, 1)  # an unknown anchor: the loader reports it


def _depth_over(node: Any, limit: int) -> bool:
    stack = [(node, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _str_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _str_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_str_keys(v) for v in node]
    return node
