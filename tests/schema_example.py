"""A small valid value for a JSON schema: the arguments a test (or the Prism bench) sends."""

from __future__ import annotations

from typing import Any


def example(schema: dict[str, Any]) -> Any:
    """A small value that satisfies ``schema`` (required properties only)."""
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return example(schema[key][0])
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), "string") if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: example(props.get(k, {})) for k in schema.get("required", [])}
    if kind == "array":
        return [example(schema.get("items", {}))]
    return {"integer": 1, "number": 1, "boolean": True}.get(str(kind), "x")
