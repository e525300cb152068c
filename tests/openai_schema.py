"""Validate instances against OpenAI's published OpenAPI document (see fixtures/SOURCES.md)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).parent / "fixtures" / "openai-openapi.yaml"
URN = "urn:openai-openapi"


def _rewrite_nullable(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _rewrite_nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) is True:
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_rewrite_nullable(v) for v in node]
    return node


@functools.cache
def _registry() -> Registry:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = _rewrite_nullable(yaml.load(SPEC.read_text(encoding="utf-8"), Loader=loader))
    return Registry().with_resource(URN, Resource.from_contents(doc, DRAFT202012))


@functools.cache
def validator(name: str) -> Draft202012Validator:
    ref = {"$ref": f"{URN}#/components/schemas/{name}"}
    return Draft202012Validator(ref, registry=_registry())


def assert_valid(name: str, instance: Any) -> None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"not a valid {name}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]
    )
