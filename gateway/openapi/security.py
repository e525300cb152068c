"""A document's security schemes and an operation's security requirements, version-free.

Swagger 2.0's ``securityDefinitions`` (``basic``, ``apiKey``, ``oauth2`` with a ``flow``)
and 3.x's ``components.securitySchemes`` become the same ``SecurityScheme``; ``$ref``s
among 3.x schemes are followed. Requirements become tuples of alternatives, each the
scheme names that must all be sent together (scopes are the config's business).
"""

from __future__ import annotations

from typing import Any

from gateway.openapi.ir import Requirements, SecurityScheme
from gateway.openapi.load import Spec
from gateway.openapi.schema import SchemaError, Schemas


def security_schemes(spec: Spec) -> dict[str, SecurityScheme]:
    """Every well-formed scheme of the document by name; malformed ones are left out."""
    doc = spec.document
    if spec.version == "2.0":
        raw = doc.get("securityDefinitions")
    else:
        components = doc.get("components")
        raw = components.get("securitySchemes") if isinstance(components, dict) else None
    if not isinstance(raw, dict):
        return {}
    schemes = {}
    resolver = spec.resolver()
    for name, node in raw.items():
        try:
            node, _ = Schemas().resolve(node, resolver)
        except SchemaError:
            continue
        scheme = _scheme(str(name), node, spec.version == "2.0") if isinstance(node, dict) else None
        if scheme is not None:
            schemes[scheme.name] = scheme
    return schemes


def _scheme(name: str, node: dict[str, Any], v2: bool) -> SecurityScheme | None:
    kind = node.get("type")
    if kind == "apiKey":
        where, param = node.get("in"), node.get("name")
        if where not in ("header", "query", "cookie") or not isinstance(param, str) or not param:
            return None
        return SecurityScheme(name, "apiKey", location=where, param=param)
    if kind == "basic" and v2:
        return SecurityScheme(name, "http", http_scheme="basic")
    if kind == "http":
        scheme = node.get("scheme")
        return SecurityScheme(name, "http", http_scheme=str(scheme or "bearer").lower())
    if kind == "oauth2":
        return SecurityScheme(name, "oauth2", token_url=_token_url(node, v2))
    if kind in ("openIdConnect", "mutualTLS"):
        return SecurityScheme(name, kind)
    return None


def _token_url(node: dict[str, Any], v2: bool) -> str | None:
    if v2:
        url = node.get("tokenUrl") if node.get("flow") == "application" else None
    else:
        flows = node.get("flows")
        flow = flows.get("clientCredentials") if isinstance(flows, dict) else None
        url = flow.get("tokenUrl") if isinstance(flow, dict) else None
    return url if isinstance(url, str) and url else None


def requirements(raw: Any) -> Requirements:
    """``security`` as alternatives of scheme names; ``[]`` (or absent) needs none."""
    if not isinstance(raw, list):
        return ()
    out = []
    for alternative in raw:
        if isinstance(alternative, dict):
            out.append(tuple(str(name) for name in alternative))
    return tuple(out)
