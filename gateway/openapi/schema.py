"""OpenAPI schemas -> plain JSON Schema (Draft 2020-12) for function parameters.

One walk both resolves ``$ref`` and normalises: 3.0 ``nullable`` / 2.0 ``x-nullable`` and
3.1 ``type: [..., "null"]`` end in one form (a type list), ``allOf`` is merged, ``oneOf``
becomes ``anyOf``, ``readOnly`` properties leave (these schemas describe requests), boolean
``exclusiveMinimum`` becomes the numeric form, every array gets ``items``, and
OpenAPI-only keywords (``discriminator``, ``xml``, ``example``...) are dropped or mapped.
A ref that recurs inside its own expansion is cut there and says so in its description.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from referencing.exceptions import Unresolvable

if TYPE_CHECKING:
    from referencing._core import Resolver

MAX_REF_DEPTH = 24
#: schema objects one parameter or body may expand to; past it, refs are cut (noted)
MAX_NODES = 3000
TYPES = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})
_MAP_KEYS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_ONE_KEYS = frozenset(
    {
        "additionalProperties",
        "not",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "unevaluatedProperties",
        "additionalItems",
    }
)
_LIST_KEYS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_DROP = frozenset(
    {
        "discriminator",
        "xml",
        "externalDocs",
        "$id",
        "id",
        "$schema",
        "$anchor",
        "$dynamicAnchor",
        "$dynamicRef",
        "$defs",
        "definitions",
        "$comment",
        "nullable",
        "x-nullable",
        "example",
        "dependencies",
        "$vocabulary",
        "contentSchema",
    }
)
_NON_NEGATIVE = frozenset(
    {
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "minContains",
        "maxContains",
    }
)
_NUMBERS = frozenset({"minimum", "maximum"})
_STRINGS = frozenset(
    {"format", "pattern", "title", "description", "contentMediaType", "contentEncoding"}
)


_SKIP = object()


class SchemaError(Exception):
    """A schema cannot be used (an unresolvable ref); the operation is skipped."""


class Schemas:
    """Builds request schemas for one spec.

    Each ref is expanded once and shared (a ref cut for recursion stays cut wherever it is
    reused, so the work is bounded by the size of the document). ``MAX_NODES`` bounds what
    one schema expands to; refs past it are cut and say so.
    """

    def __init__(self, max_nodes: int = MAX_NODES) -> None:
        self._memo: dict[str, tuple[dict[str, Any], int]] = {}
        self.cuts = 0
        self.max_nodes = max_nodes
        self._used = 0

    def build(self, node: Any, resolver: Resolver[Any]) -> dict[str, Any]:
        self._used = 0
        out, _ = self._build(node, resolver, ())
        return out if isinstance(out, dict) else ({} if out else {"not": {}})

    def resolve(self, node: Any, resolver: Resolver[Any]) -> tuple[Any, Resolver[Any]]:
        """Follow ``$ref`` (not schemas: parameters, request bodies, path items)."""
        seen = 0
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            seen += 1
            if seen > MAX_REF_DEPTH:
                raise SchemaError(f"$ref chain too long at {node['$ref']}")
            node, resolver = self._lookup(node["$ref"], resolver)
        return node, resolver

    def _lookup(self, ref: str, resolver: Resolver[Any]) -> tuple[Any, Resolver[Any]]:
        try:
            resolved = resolver.lookup(ref)
        except Unresolvable:
            raise SchemaError(f"cannot resolve $ref {ref!r}") from None
        return resolved.contents, resolved.resolver

    def _build(
        self, node: Any, resolver: Resolver[Any], stack: tuple[str, ...]
    ) -> tuple[Any, bool]:
        if isinstance(node, bool):
            return node, False
        if not isinstance(node, dict):
            return {}, False
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._build_ref(node, ref, resolver, stack)
        self._used += 1
        cut = False
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP or key.startswith("x-"):
                continue
            built, c = self._build_keyword(key, value, resolver, stack)
            cut |= c
            if built is not _SKIP:
                out["prefixItems" if key == "items" and isinstance(value, list) else key] = built
        return normalise(out, node), cut

    def _build_keyword(
        self, key: str, value: Any, resolver: Resolver[Any], stack: tuple[str, ...]
    ) -> tuple[Any, bool]:
        """One keyword's value: sub-schemas are built, anything else is kept as it is."""
        cut = False
        if key in _MAP_KEYS:
            if not isinstance(value, dict):
                return _SKIP, False
            built = {}
            for name, sub in value.items():
                built[str(name)], c = self._build(sub, resolver, stack)
                cut |= c
            return built, cut
        if key in _ONE_KEYS or (key == "items" and not isinstance(value, list)):
            if not isinstance(value, (dict, bool)):
                return _SKIP, False
            return self._build(value, resolver, stack)
        if key in _LIST_KEYS or key == "items":
            if not isinstance(value, list):
                return _SKIP, False
            items = []
            for sub in value:
                b, c = self._build(sub, resolver, stack)
                items.append(b)
                cut |= c
            return items, cut
        return value, False

    def _build_ref(
        self, node: dict[str, Any], ref: str, resolver: Resolver[Any], stack: tuple[str, ...]
    ) -> tuple[Any, bool]:
        uri = _absolute(resolver, ref)
        name = ref.rsplit("/", 1)[-1] or ref
        if uri in stack or len(stack) >= MAX_REF_DEPTH:
            self.cuts += 1
            return {"description": f"{name}: recursive schema, not expanded further here"}, False
        memo = self._memo.get(uri)
        if memo is not None and self._used + memo[1] > self.max_nodes:
            memo = None  # too big to reuse here: expand (and cut) afresh
        if self._used >= self.max_nodes:
            self.cuts += 1
            return {"description": f"{name}: not expanded, the schema is too large"}, True
        if memo is None:
            contents, inner = self._lookup(ref, resolver)
            before = self._used
            built, cut = self._build(contents, inner, (*stack, uri))
            if not isinstance(built, dict):
                built = {} if built else {"not": {}}
            if not cut:
                self._memo[uri] = (built, self._used - before)
        else:
            built, cut = memo[0], False
            self._used += memo[1]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if siblings:  # 3.1 allows description etc. beside $ref; they win
            extra, c = self._build(siblings, resolver, stack)
            built = normalise({**built, **extra}, siblings)
            cut |= c
        return built, cut


def _absolute(resolver: Resolver[Any], ref: str) -> str:
    from urllib.parse import urljoin

    return urljoin(resolver._base_uri, ref)  # the base URI the resolver resolves against


def normalise(out: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    """Fix one (already walked) schema object in place and return it."""
    _fix_keywords(out)
    _fix_type(out)
    if "oneOf" in out:
        one = out.pop("oneOf")
        if "anyOf" in out:
            out.setdefault("allOf", []).append({"anyOf": one})
        else:
            out["anyOf"] = one
    if "allOf" in out:
        _merge_all_of(out)
    if original.get("nullable") is True or original.get("x-nullable") is True:
        _make_nullable(out)
    if "example" in original and "examples" not in out:
        out["examples"] = [original["example"]]
    _drop_read_only(out)
    if _is_array(out) and "items" not in out and "prefixItems" not in out:
        out["items"] = {}
    return out


def _fix_keywords(out: dict[str, Any]) -> None:
    """Drop or mend keyword values that would make the schema invalid."""
    _fix_numbers(out)
    for key in [k for k in out if k in _STRINGS]:
        if isinstance(out[key], str):
            continue
        if key in ("title", "description"):
            out[key] = str(out[key])
        else:
            del out[key]
    if "pattern" in out and not _compiles(out["pattern"]):
        del out["pattern"]  # e.g. ECMA-only \p{...}: the model and our validator can't use it
    if "required" in out:
        req = out.pop("required")
        if isinstance(req, list) and req:
            out["required"] = list(dict.fromkeys(str(r) for r in req))
    for key, kind in (("enum", list), ("properties", dict)):
        if key in out and not isinstance(out[key], kind):
            del out[key]
    for key in ("uniqueItems", "readOnly", "writeOnly", "deprecated"):
        if key in out and not isinstance(out[key], bool):
            del out[key]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fix_numbers(out: dict[str, Any]) -> None:
    for key in [k for k in out if k in _NON_NEGATIVE]:
        if _is_number(out[key]) and out[key] >= 0:
            out[key] = int(out[key])
        else:
            del out[key]
    for key in [k for k in out if k in _NUMBERS]:
        if not _is_number(out[key]):
            del out[key]
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        value = out.get(key)
        if isinstance(value, bool):  # OpenAPI 3.0 / 2.0: a flag on minimum/maximum
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            del out[key]
            if value and bound in out:
                out[key] = out.pop(bound)
        elif value is not None and not _is_number(value):
            del out[key]
    if "multipleOf" in out and not (_is_number(out["multipleOf"]) and out["multipleOf"] > 0):
        del out["multipleOf"]


@functools.lru_cache(maxsize=4096)
def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _fix_type(out: dict[str, Any]) -> None:
    if "type" not in out:
        return
    value = out["type"]
    if value == "file":  # Swagger 2.0
        out["type"], out["format"] = "string", "binary"
        return
    values = value if isinstance(value, list) else [value]
    kept = list(dict.fromkeys(v for v in values if isinstance(v, str) and v in TYPES))
    if not kept:
        del out["type"]
    else:
        out["type"] = kept[0] if len(kept) == 1 else kept


def _make_nullable(out: dict[str, Any]) -> None:
    if "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        if "null" not in types:
            out["type"] = [*types, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    elif out and "anyOf" in out:
        if {"type": "null"} not in out["anyOf"]:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    elif out:
        inner = dict(out)
        out.clear()
        out["anyOf"] = [inner, {"type": "null"}]


def _merge_all_of(out: dict[str, Any]) -> None:
    parts = out.pop("allOf")
    if not isinstance(parts, list):
        return
    rest: list[Any] = []
    for part in parts:
        if not isinstance(part, dict) or any(k in part for k in ("anyOf", "not", "if")):
            rest.append(part)
            continue
        for key, value in part.items():
            if key == "properties":
                merged = dict(value)
                merged.update(out.get("properties", {}))
                out["properties"] = merged
            elif key == "required":
                out["required"] = list(dict.fromkeys([*out.get("required", []), *value]))
            else:
                out.setdefault(key, value)
    if rest:
        out["allOf"] = rest


def _drop_read_only(out: dict[str, Any]) -> None:
    props = out.get("properties")
    if not props:
        return
    gone = [k for k, v in props.items() if isinstance(v, dict) and v.get("readOnly") is True]
    if not gone:
        return
    out["properties"] = {k: v for k, v in props.items() if k not in gone}
    if "required" in out:
        out["required"] = [r for r in out["required"] if r not in gone]
        if not out["required"]:
            del out["required"]


def _is_array(out: dict[str, Any]) -> bool:
    t = out.get("type")
    return t == "array" or (isinstance(t, list) and "array" in t)
