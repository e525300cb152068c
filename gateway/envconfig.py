"""Environment overrides of the config (``GATEWAY_SERVER__PORT=9000``) and the config's shape.

A variable ``GATEWAY_A__B__0__C`` sets the key path ``a.b[0].c`` of the parsed file before
it is validated; a number is an index into a list the file (or an earlier variable)
already has. What a value means depends on the key's type: objects and lists of objects
are JSON, lists of strings are JSON or comma-separated, values inside free-form mappings
(``params``) are JSON when they parse as JSON, everything else is taken as written and
converted by validation. ``overlay`` records which variable set which path, so that a
validation error is reported against the variable, not the file.

``field_at`` walks the pydantic models along a key path; it also feeds "did you mean".
"""

from __future__ import annotations

import copy
import difflib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

Path = tuple[str | int, ...]
Origins = dict[Path, str]


@dataclass
class Overlay:
    data: dict[str, Any]
    origins: Origins = field(default_factory=dict)  # key path -> variable that set it
    problems: list[str] = field(default_factory=list)


# --- the config's shape --------------------------------------------------------------------


def field_at(root: type[BaseModel], path: Path) -> tuple[Any, FieldInfo | None] | None:
    """The annotation (and field) at ``path``; None when the path names no key."""
    typ: Any = root
    info: FieldInfo | None = None
    for seg in path:
        typ = _strip(typ)
        origin = typing.get_origin(typ)
        if isinstance(seg, int):
            if origin is not list:
                return None
            typ, info = typing.get_args(typ)[0], None
        elif origin is dict:
            typ, info = typing.get_args(typ)[1], None
        else:
            found = _model_field(typ, seg)
            if found is None:
                return None
            typ, info = found.annotation, found
    return typ, info


def keys_at(root: type[BaseModel], path: Path) -> list[str]:
    """The keys a mapping at ``path`` may have (empty when it is free-form or unknown)."""
    found = field_at(root, path)
    if found is None:
        return []
    return sorted({name for m in models_in(found[0]) for name in m.model_fields})


def suggest(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _strip(typ: Any) -> Any:
    """``X | None`` -> X; ``Annotated[X, ...]`` -> X."""
    while True:
        if typing.get_origin(typ) is typing.Annotated:
            typ = typing.get_args(typ)[0]
            continue
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if _is_union(typ) and len(args) == 1:
            typ = args[0]
            continue
        return typ


def _is_union(typ: Any) -> bool:
    return typing.get_origin(typ) in (typing.Union, types.UnionType)


def models_in(typ: Any) -> list[type[BaseModel]]:
    typ = _strip(typ)
    if isinstance(typ, type) and issubclass(typ, BaseModel):
        return [typ]
    if _is_union(typ):
        return [m for a in typing.get_args(typ) for m in models_in(a)]
    return []


def _model_field(typ: Any, name: str) -> FieldInfo | None:
    for m in models_in(typ):
        if name in m.model_fields:
            return m.model_fields[name]
    return None


# --- overrides -----------------------------------------------------------------------------


def overlay(
    data: dict[str, Any],
    environ: Mapping[str, str],
    root: type[BaseModel],
    prefix: str,
    reserved: frozenset[str] = frozenset(),
) -> Overlay:
    """Apply every ``<prefix>...`` variable that names a config key to ``data`` (a copy)."""
    top = [k for k in root.model_fields if k not in reserved]
    result = Overlay(copy.deepcopy(data))
    wanted = []
    for name, value in environ.items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if "__" in rest or rest.lower() in top:  # others (GATEWAY_CONFIG) are not keys
            wanted.append((rest.count("__"), name, rest, value))
    for _, name, rest, value in sorted(wanted):  # a whole list before one of its entries
        problem = _apply(result, root, top, prefix, name, rest, value)
        if problem:
            result.problems.append(f"{name}: {problem}")
    return result


def _apply(
    result: Overlay,
    root: type[BaseModel],
    top: list[str],
    prefix: str,
    name: str,
    rest: str,
    value: str,
) -> str | None:
    path: Path = tuple(int(s) if s.isdigit() else s.lower() for s in rest.split("__"))
    problem = _check_path(root, top, prefix, path)
    if problem:
        return problem
    typ, info = field_at(root, path) or (Any, None)
    parsed, problem = _parse(name, path, typ, info, value)
    if problem:
        return problem
    problem = _place(result.data, path, parsed)
    if problem:
        return problem
    result.origins[path] = name
    return None


def _check_path(root: type[BaseModel], top: list[str], prefix: str, path: Path) -> str | None:
    for i, seg in enumerate(path):
        if isinstance(seg, int) or field_at(root, path[: i + 1]) is not None:
            continue
        parent = path[:i]
        if not isinstance(seg, str) or (i and field_at(root, parent) is None):
            return "does not name a config key"
        choices = top if i == 0 else keys_at(root, parent)
        where = _dotted(parent) or "the top level"
        close = suggest(seg, choices)
        fixed = path[:i] + ((close,) if close else ()) + path[i + 1 :]
        hint = f"; did you mean {env_name(prefix, fixed)}?" if close else ""
        return f"{seg!r} is not a key of {where} (keys: {', '.join(choices)}){hint}"
    return None


def _parse(name: str, path: Path, typ: Any, info: FieldInfo | None, value: str) -> tuple[Any, str]:
    """The value for the key, or a problem saying what was expected, with an example."""
    kind = value_kind(typ)
    if kind == "scalar":
        return value, ""
    if kind == "any":
        try:
            return json.loads(value), ""
        except ValueError:
            return value, ""
    if kind == "strings" and not value.lstrip().startswith("["):
        return [v.strip() for v in value.split(",") if v.strip()], ""
    try:
        return json.loads(value), ""
    except ValueError as e:
        what = "a JSON array" if kind in ("strings", "list") else "a JSON object"
        return None, (
            f"is not valid JSON ({e}); expected {what}, e.g. {name}='{example(path, typ, info)}'"
        )


def value_kind(typ: Any) -> str:
    typ = _strip(typ)
    if typ is Any:
        return "any"
    origin = typing.get_origin(typ)
    if origin is list:
        return "list" if value_kind(typing.get_args(typ)[0]) != "scalar" else "strings"
    if origin is dict or models_in(typ):
        return "object"
    return "scalar"


def _place(data: dict[str, Any], path: Path, value: Any) -> str | None:
    """Set ``path`` in ``data``; list entries must exist already, mappings are created."""
    node: Any = data
    for i, seg in enumerate(path):
        if isinstance(seg, int) and (not isinstance(node, list) or not -1 < seg < len(node)):
            return _no_entry(path[:i], seg, node)
        if i == len(path) - 1:
            node[seg] = value
            return None
        nxt = path[i + 1]
        empty: Any = [] if isinstance(nxt, int) else {}
        child = node[seg] if isinstance(seg, int) else node.get(seg)
        if not isinstance(child, type(empty)):
            node[seg] = child = empty
        node = child
    return None


def _no_entry(path: Path, index: int, node: Any) -> str:
    count = len(node) if isinstance(node, list) else 0
    where = _dotted(path)
    return (
        f"{where} has {count} entr{'y' if count == 1 else 'ies'}, so there is no {where}[{index}] "
        f"to change; add it in the file, or set the whole list as JSON in "
        f"GATEWAY_{'__'.join(str(s).upper() for s in path)}"
    )


def example(path: Path, typ: Any, info: FieldInfo | None = None) -> str:
    """An example value for the key at ``path`` (its default when it has a plain one)."""
    if path in (("models",), ("tools",)):
        return _LIST_EXAMPLES[str(path[0])]
    kind = value_kind(typ)
    if kind == "strings":
        return "k1,k2"
    if kind == "list":
        return '[{"key": "value"}]'
    if kind in ("object", "any"):
        return '{"key": "value"}'
    default = info.default if info is not None else None
    if isinstance(default, (int, float, str)) and not isinstance(default, bool) and default != "":
        return str(default)
    typ = _strip(typ)
    if str(path[-1] if path else "").endswith("url"):
        return "http://127.0.0.1:8000/v1"
    if typ in (int, float):
        return "1"
    return "true" if typ is bool else "text"


_LIST_EXAMPLES = {
    "models": '[{"id": "m", "base_url": "http://127.0.0.1:8000/v1"}]',
    "tools": '[{"name": "pets", "spec": "specs/pets.yaml"}]',
}


def env_name(prefix: str, path: Path) -> str:
    return prefix + "__".join(str(s).upper() for s in path)


def _dotted(path: Path) -> str:
    out = ""
    for seg in path:
        out = f"{out}[{seg}]" if isinstance(seg, int) else (f"{out}.{seg}" if out else seg)
    return out


def origin_of(origins: Origins, loc: Path) -> tuple[Path, str] | None:
    """The variable that set ``loc``, one of its parents, or something inside it."""
    for n in range(len(loc), 0, -1):
        name = origins.get(loc[:n])
        if name is not None:
            return loc[:n], name
    return next(((path, name) for path, name in origins.items() if path[: len(loc)] == loc), None)
