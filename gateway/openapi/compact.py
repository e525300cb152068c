"""``schema_detail: compact``: a function's parameters without what the model does not need.

Runs once at start-up on each function's parameters schema and returns a new one (the
input, shared with the executor, is never changed). Left out: ``examples``, a ``title``
that only repeats the property name, a ``description`` that repeats the one above it (or
the property name), and every description deeper than ``DESCRIBED_DEPTH`` levels of
properties; in the descriptions kept (and the function's own), markdown links keep only
their text and HTML tags go. Validation keywords (types, enums, required, formats,
bounds, patterns, defaults) all stay, so a model's arguments are checked as before.
"""

from __future__ import annotations

import re
from typing import Any

#: levels of ``properties`` whose descriptions are kept: 1 is the function's own arguments
#: (path/query parameters and ``requestBody``), 2 the body's fields
DESCRIBED_DEPTH = 2
_DROP = frozenset({"examples", "example"})
_MAPS = frozenset({"properties", "patternProperties"})
_ONE = frozenset(
    {"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"}
)
_LISTS = frozenset({"anyOf", "allOf", "oneOf", "prefixItems"})
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_LINK = re.compile(r"\[([^\]\n]*)\]\([^)\s]*\)")
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SPACES = re.compile(r"[ \t]+")


def plain(text: str) -> str:
    """A description without link targets, HTML tags and runs of spaces."""
    return _SPACES.sub(" ", _TAG.sub("", _LINK.sub(r"\1", text))).strip()


def compact(schema: dict[str, Any]) -> dict[str, Any]:
    """The compact form of a function's ``parameters`` schema."""
    return _node(schema, 0, None, None)


def _node(node: Any, depth: int, name: str | None, above: str | None) -> Any:
    if not isinstance(node, dict):
        return node
    own = node.get("description") if isinstance(node.get("description"), str) else None
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "title" and name is not None and _same(value, name):
            continue
        if key == "description":
            if not _redundant(value, depth, name, above):
                out[key] = plain(value)
            continue
        if key in _MAPS and isinstance(value, dict):
            out[key] = {k: _node(v, depth + 1, k, own) for k, v in value.items()}
        elif key in _ONE:
            out[key] = _node(value, depth, name, own or above)
        elif key in _LISTS and isinstance(value, list):
            out[key] = [_node(v, depth, name, own or above) for v in value]
        else:
            out[key] = value
    return out


def _redundant(text: Any, depth: int, name: str | None, above: str | None) -> bool:
    if not isinstance(text, str) or depth > DESCRIBED_DEPTH:
        return True
    return (above is not None and _same(text, above)) or (name is not None and _same(text, name))


def _same(a: Any, b: str) -> bool:
    return isinstance(a, str) and _NOT_WORD.sub("", a.lower()) == _NOT_WORD.sub("", b.lower())
