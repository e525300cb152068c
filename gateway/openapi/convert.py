"""Operations of a loaded spec -> ``Operation`` + OpenAI function tools. Pure; runs at start-up.

Rules (documented in the README):
- Path, query, header and cookie parameters become top-level properties named after the
  parameter; the body is the property ``requestBody``. The first parameter to claim a name
  keeps it, in the order path, query, header, cookie; a later one is renamed
  ``<location>_<name>`` (then ``..._2``, ``_3``). ``requestBody`` always belongs to the body.
  Names outside ``[A-Za-z0-9_.-]`` are replaced by ``_``.
- ``Accept``, ``Content-Type`` and ``Authorization`` header parameters are ignored (as the
  OpenAPI spec says), and so are the parameters the toolset's ``auth`` supplies.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from gateway.config import BasicAuth, BearerAuth, ToolsetConfig
from gateway.openapi.compact import compact, plain
from gateway.openapi.ir import BODY_ARG, Body, Operation, Param, SecurityScheme, Skipped, Tool
from gateway.openapi.load import Spec
from gateway.openapi.schema import SchemaError, Schemas
from gateway.openapi.security import requirements, security_schemes

if TYPE_CHECKING:
    from referencing._core import Resolver

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
LOCATIONS = ("path", "query", "header", "cookie")
IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})
MAX_NAME = 64
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_UNDERSCORES = re.compile(r"__+")
_ARG_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_STYLE_DEFAULT = {"path": "simple", "header": "simple", "query": "form", "cookie": "form"}
_COLLECTION = {
    "csv": ("form", False),
    "ssv": ("spaceDelimited", False),
    "pipes": ("pipeDelimited", False),
    "multi": ("form", True),
    "tsv": ("form", False),
}
_V2_SCHEMA_KEYS = (
    "type",
    "format",
    "items",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "multipleOf",
    "x-nullable",
)


class Converter:
    """Converts the operations of one toolset's spec."""

    def __init__(self, spec: Spec, config: ToolsetConfig, max_description: int = 1024) -> None:
        self.spec = spec
        self.config = config
        self.max_description = max_description
        self.schemas = Schemas()
        self.v2 = spec.version == "2.0"
        self.security_schemes = security_schemes(spec)
        self.security = requirements(spec.document.get("security"))
        self.auth_params = _auth_params(config, self.security_schemes)

    def convert(self) -> tuple[list[tuple[Operation, dict[str, Any]]], list[Skipped]]:
        """Every selected operation with its parameters schema, and what was skipped."""
        done: list[tuple[Operation, dict[str, Any]]] = []
        skipped: list[Skipped] = []
        resolver = self.spec.resolver()
        paths = self.spec.document.get("paths")
        if not isinstance(paths, dict):
            return done, skipped
        for path, item in paths.items():
            for method, op, item_resolver, common in self._operations(
                path, item, resolver, skipped
            ):
                if not self._selected(method, op):
                    continue
                try:
                    done.append(self._operation(path, method, op, item_resolver, common, item))
                except (SchemaError, ValueError, TypeError, KeyError) as e:
                    skipped.append(Skipped(self.config.name, method.upper(), path, str(e)))
        return done, skipped

    def _operations(
        self, path: str, item: Any, resolver: Resolver[Any], skipped: list[Skipped]
    ) -> Iterable[tuple[str, dict[str, Any], Resolver[Any], list[Any]]]:
        try:
            item, resolver = self.schemas.resolve(item, resolver)
        except SchemaError as e:
            skipped.append(Skipped(self.config.name, "*", path, str(e)))
            return
        if not isinstance(item, dict):
            return
        params = item.get("parameters")
        common: list[Any] = params if isinstance(params, list) else []
        for method in METHODS:
            op = item.get(method)
            if isinstance(op, dict):
                yield method, op, resolver, common

    def _selected(self, method: str, op: dict[str, Any]) -> bool:
        keys = {f"method:{method}"} | {
            f"tag:{t}" for t in op.get("tags") or [] if isinstance(t, str)
        }
        if isinstance(op.get("operationId"), str):
            keys.add(op["operationId"])
        if self.config.include and not keys & set(self.config.include):
            return False
        return not keys & set(self.config.exclude)

    # --- one operation -------------------------------------------------------------------

    def _operation(
        self,
        path: str,
        method: str,
        op: dict[str, Any],
        resolver: Resolver[Any],
        common: list[Any],
        item: dict[str, Any],
    ) -> tuple[Operation, dict[str, Any]]:
        raw_params = self._merged_params(common, op.get("parameters") or [], resolver)
        params: list[Param] = []
        body: Body | None = None
        v2_body: list[dict[str, Any]] = []
        for raw, res in raw_params:
            where = raw.get("in")
            if self.v2 and where in ("body", "formData"):
                v2_body.append(raw)
                continue
            param = self._param(raw, res, path)
            if param is not None:
                params.append(param)
        if v2_body:
            body = self._v2_body(v2_body, op, resolver)
        elif "requestBody" in op:
            body = self._body(op["requestBody"], resolver)
        params = _assign_args(params)
        operation = Operation(
            toolset=self.config.name,
            method=method.upper(),
            path=path,
            operation_id=op["operationId"] if isinstance(op.get("operationId"), str) else None,
            summary=_text(op.get("summary")),
            description=_text(op.get("description")),
            tags=tuple(t for t in op.get("tags") or [] if isinstance(t, str)),
            params=tuple(params),
            body=body,
            server=self._server(op, item),
            deprecated=op.get("deprecated") is True,
            security=requirements(op["security"]) if "security" in op else self.security,
        )
        schema = _parameters_schema(params, body)
        return operation, compact(schema) if self.config.schema_detail == "compact" else schema

    def _merged_params(
        self, common: list[Any], own: Any, resolver: Resolver[Any]
    ) -> list[tuple[dict[str, Any], Resolver[Any]]]:
        merged: dict[tuple[str, str], tuple[dict[str, Any], Resolver[Any]]] = {}
        for raw in [*common, *(own if isinstance(own, list) else [])]:
            param, res = self.schemas.resolve(raw, resolver)
            if not isinstance(param, dict) or not isinstance(param.get("name"), str):
                raise ValueError("a parameter has no name")
            merged[(param["name"], str(param.get("in")))] = (param, res)
        return list(merged.values())

    def _param(self, raw: dict[str, Any], resolver: Resolver[Any], path: str) -> Param | None:
        name, where = raw["name"], raw.get("in")
        if where not in LOCATIONS:
            raise ValueError(f"parameter {name!r} has an unknown location {where!r}")
        if where == "header" and name.lower() in IGNORED_HEADERS:
            return None
        if (where, name.lower() if where == "header" else name) in self.auth_params:
            return None
        if where == "path" and "{" + name + "}" not in path:
            return None  # declared but not in the template: nothing to fill
        content_type = None
        if self.v2:
            schema_src = {k: raw[k] for k in _V2_SCHEMA_KEYS if k in raw}
            style, explode = _COLLECTION.get(raw.get("collectionFormat", "csv"), ("form", False))
            if where in ("path", "header"):
                style = "simple"
        else:
            style = raw.get("style") or _STYLE_DEFAULT[where]
            explode = raw.get("explode", style == "form")
            schema_src = raw.get("schema", {})
            if "content" in raw and isinstance(raw["content"], dict) and raw["content"]:
                content_type, media = next(iter(raw["content"].items()))
                schema_src = media.get("schema", {}) if isinstance(media, dict) else {}
        schema = dict(self.schemas.build(schema_src, resolver))
        _describe(schema, raw)
        return Param(
            name=name,
            location=where,
            arg=name,
            required=where == "path" or raw.get("required") is True,
            schema=schema,
            style=str(style),
            explode=bool(explode),
            allow_reserved=raw.get("allowReserved") is True,
            content_type=content_type,
        )

    def _body(self, raw: Any, resolver: Resolver[Any]) -> Body | None:
        raw, resolver = self.schemas.resolve(raw, resolver)
        content = raw.get("content") if isinstance(raw, dict) else None
        if not isinstance(content, dict) or not content:
            return None
        content_type = _pick_media_type(list(content))
        if content_type is None:
            text = _text_body(content, raw, resolver, self.schemas)
            if text is not None:
                return text
            if raw.get("required") is True:
                raise ValueError(
                    f"request body types {', '.join(content)} are not supported "
                    "(only JSON, form, multipart and text)"
                )
            return None
        media = content[content_type] if isinstance(content[content_type], dict) else {}
        schema = dict(self.schemas.build(media.get("schema", {}), resolver))
        if content_type.startswith("multipart/"):
            schema = _without_files(schema)
        if isinstance(raw.get("description"), str) and "description" not in schema:
            schema["description"] = raw["description"]
        raw_encoding = media.get("encoding")
        encoding: dict[str, Any] = raw_encoding if isinstance(raw_encoding, dict) else {}
        return Body(content_type, raw.get("required") is True, schema, encoding)

    def _v2_body(
        self, raws: list[dict[str, Any]], op: dict[str, Any], resolver: Resolver[Any]
    ) -> Body | None:
        consumes = op.get("consumes") or self.spec.document.get("consumes") or []
        body = next((r for r in raws if r.get("in") == "body"), None)
        if body is not None:
            json_type = next((c for c in consumes if "json" in c), None)
            text_type = next((c for c in consumes if is_text_like(c)), None)
            schema = dict(self.schemas.build(body.get("schema", {}), resolver))
            _describe(schema, body)
            if json_type is None and text_type is not None:
                if not _stringy(schema):
                    schema = {"description": f"The request body as {text_type} text."}
                return Body(text_type, body.get("required") is True, {**schema, "type": "string"})
            return Body(json_type or "application/json", body.get("required") is True, schema)
        multipart = any("multipart" in c for c in consumes)
        content_type = "multipart/form-data" if multipart else "application/x-www-form-urlencoded"
        props, required = {}, []
        for raw in raws:
            if raw.get("type") == "file":
                continue
            prop = self.schemas.build({k: raw[k] for k in _V2_SCHEMA_KEYS if k in raw}, resolver)
            _describe(prop := dict(prop), raw)
            props[raw["name"]] = prop
            if raw.get("required") is True:
                required.append(raw["name"])
        if not props:
            return None
        form: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            form["required"] = required
        return Body(content_type, bool(required), form)

    def _server(self, op: dict[str, Any], item: dict[str, Any]) -> str | None:
        if self.v2:
            return _v2_server(self.spec.document, self.spec.uri)
        for servers in (op.get("servers"), item.get("servers"), self.spec.document.get("servers")):
            if isinstance(servers, list) and servers and isinstance(servers[0], dict):
                return _server_url(servers[0], self.spec.uri)
        return _server_url({"url": "/"}, self.spec.uri)


# --- helpers -----------------------------------------------------------------------------


def _auth_params(config: ToolsetConfig, schemes: dict[str, SecurityScheme]) -> set[tuple[str, str]]:
    """(location, name) of the parameters the toolset's ``auth`` or ``credentials`` supply."""
    out = set()
    for name in config.credentials:
        scheme = schemes.get(name)
        if scheme is not None and scheme.type == "apiKey" and scheme.param and scheme.location:
            param = scheme.param.lower() if scheme.location == "header" else scheme.param
            out.add((scheme.location, param))
    auth = config.auth
    if auth is None:
        return out
    if isinstance(auth, (BearerAuth, BasicAuth)):
        return {("header", "authorization")}
    where = auth.type  # header, query, cookie
    name = auth.name.lower() if where == "header" else auth.name
    return {(where, name)}


#: text media types outside ``text/*`` whose body can be given as one string
TEXT_LIKE = frozenset(
    {
        "application/xml",
        "application/x-yaml",
        "application/yaml",
        "application/jwt",
        "application/javascript",
        "application/graphql",
        "application/sql",
        "application/x-ndjson",
        "application/csv",
    }
)


def is_text_like(content_type: str) -> bool:
    low = content_type.lower().split(";")[0].strip()
    return low.startswith("text/") or low in TEXT_LIKE or low.endswith(("+xml", "+yaml", "+jwt"))


def _stringy(schema: dict[str, Any]) -> bool:
    """A string schema, or none at all (only a description, an example...)."""
    kind = schema.get("type")
    if kind is None:
        return not ({"properties", "items", "allOf", "anyOf", "oneOf"} & schema.keys())
    return kind == "string" or kind == ["string"]


def _text_body(
    content: dict[str, Any], raw: dict[str, Any], resolver: Resolver[Any], schemas: Schemas
) -> Body | None:
    """The first text-like body type, offered as one string sent as is.

    A string (or absent) schema keeps its keywords; a structured one (XML or YAML described
    as an object) becomes a string the model writes in that format.
    """
    for content_type, media in content.items():
        if not is_text_like(content_type):
            continue
        media = media if isinstance(media, dict) else {}
        schema = dict(schemas.build(media.get("schema", {}), resolver))
        if not _stringy(schema):
            schema = {"description": f"The request body as {content_type} text."}
        schema["type"] = "string"
        if isinstance(raw.get("description"), str) and "description" not in schema:
            schema["description"] = raw["description"]
        return Body(content_type, raw.get("required") is True, schema)
    return None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _describe(schema: dict[str, Any], raw: dict[str, Any]) -> None:
    if isinstance(raw.get("description"), str) and raw["description"].strip():
        schema["description"] = raw["description"].strip()
    if "example" in raw and "examples" not in schema:
        schema["examples"] = [raw["example"]]
    if raw.get("deprecated") is True:
        schema["deprecated"] = True


def _assign_args(params: list[Param]) -> list[Param]:
    order = sorted(params, key=lambda p: LOCATIONS.index(p.location))
    taken = {BODY_ARG}
    out = []
    for p in order:
        arg = _ARG_BAD.sub("_", p.name)[:MAX_NAME] or "_"
        if arg in taken:
            arg = f"{p.location}_{arg}"[:MAX_NAME]
        n = 2
        base = arg
        while arg in taken:
            arg = f"{base[: MAX_NAME - 4]}_{n}"
            n += 1
        taken.add(arg)
        out.append(replace(p, arg=arg))
    return out


def _parameters_schema(params: list[Param], body: Body | None) -> dict[str, Any]:
    props: dict[str, Any] = {p.arg: p.schema for p in params}
    required = [p.arg for p in params if p.required]
    if body is not None:
        props[BODY_ARG] = body.schema
        if body.required:
            required.append(BODY_ARG)
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


def _pick_media_type(types: list[str]) -> str | None:
    def rank(t: str) -> int:
        low = t.lower().split(";")[0].strip()
        if low == "application/json" or low.endswith("+json") or low == "*/*":
            return 0
        if "json" in low:
            return 1
        if low == "application/x-www-form-urlencoded":
            return 2
        if low == "multipart/form-data":
            return 3
        if low.startswith("text/"):
            return 4
        return 9

    best = min(types, key=rank)
    return best if rank(best) < 9 else None


def _without_files(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    files = {k for k, v in props.items() if isinstance(v, dict) and _is_file(v)}
    if not files:
        return schema
    out = dict(schema)
    out["properties"] = {k: v for k, v in props.items() if k not in files}
    if "required" in out:
        out["required"] = [r for r in out["required"] if r not in files]
        if not out["required"]:
            del out["required"]
    return out


def _is_file(schema: dict[str, Any]) -> bool:
    if schema.get("format") in ("binary", "base64") or "contentMediaType" in schema:
        return True
    items = schema.get("items")
    return isinstance(items, dict) and items.get("format") in ("binary", "base64")


def _server_url(server: dict[str, Any], spec_uri: str) -> str | None:
    url = server.get("url")
    if not isinstance(url, str):
        return None
    for name, var in (server.get("variables") or {}).items():
        if isinstance(var, dict) and "default" in var:
            url = url.replace("{" + name + "}", str(var["default"]))
    if not url.startswith(("http://", "https://")) and spec_uri.startswith("http"):
        url = urljoin(spec_uri, url)
    return url.rstrip("/") if url != "/" else ""


def _v2_server(doc: dict[str, Any], spec_uri: str) -> str | None:
    base_path = doc.get("basePath") if isinstance(doc.get("basePath"), str) else ""
    host = doc.get("host")
    if not isinstance(host, str) or not host:
        return _server_url({"url": base_path or "/"}, spec_uri)
    schemes = doc.get("schemes") or ["https"]
    scheme = "https" if "https" in schemes else schemes[0]
    return f"{scheme}://{host}{base_path}".rstrip("/")


# --- names -------------------------------------------------------------------------------


def function_name(op: Operation, prefix: str) -> str:
    """The name before de-duplication: operationId or method+path, sanitised, prefixed."""
    name = wanted_name(op, prefix)
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}_{_digest(op)}"
    return name


def wanted_name(op: Operation, prefix: str) -> str:
    """operationId or method+path, sanitised and prefixed, however long."""
    base = op.operation_id or f"{op.method.lower()}_{op.path}"
    clean = _UNDERSCORES.sub("_", _NAME_BAD.sub("_", base)).strip("_") or "operation"
    return f"{prefix}{clean}"


def _digest(op: Operation, extra: str = "") -> str:
    key = f"{op.toolset}\0{op.method}\0{op.path}\0{extra}"
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Rename:
    """A function that could not have the name its operation asks for, and why."""

    toolset: str
    label: str  # "GET /path"
    wanted: str
    given: str
    why: str
    model: str | None = None  # set for a clash between the toolsets offered to one model

    def __str__(self) -> str:
        where = f"model {self.model}: " if self.model else ""
        return (
            f"{where}toolset {self.toolset}: {self.label} is named {self.given} "
            f"instead of {self.wanted} ({self.why})"
        )


def fresh_name(op: Operation, name: str, taken: set[str]) -> str:
    """``name``, or if taken a stable variant of it (a digest of the operation)."""
    attempt = 0
    candidate = name
    while candidate in taken:
        candidate = f"{name[: MAX_NAME - 9]}_{_digest(op, str(attempt))}"
        attempt += 1
    return candidate


def description(op: Operation, limit: int, compact: bool = False) -> str:
    parts = [plain(p) if compact else p for p in (op.summary, op.description) if p]
    if len(parts) == 2 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    text = "\n\n".join(parts) or f"{op.method} {op.path}"
    if op.deprecated:
        text = "(deprecated) " + text
    marker = " …[truncated]"
    if len(text) > limit:
        text = text[: limit - len(marker)].rstrip() + marker
    return text


def build_tools(
    converted: list[tuple[Operation, dict[str, Any]]],
    prefix: str,
    limit: int,
    compact: bool = False,
) -> tuple[list[Tool], list[Rename]]:
    """One toolset's operations -> tools with names unique within the toolset.

    The first operation (in spec order) keeps a name; a later one with the same name, or
    a name past 64 characters, gets a stable digest suffix, reported as a ``Rename``.
    """
    taken: set[str] = set()
    tools, renames = [], []
    for op, params in converted:
        wanted = wanted_name(op, prefix)
        name = fresh_name(op, function_name(op, prefix), taken)
        if name != wanted:
            why = (
                "another operation of the toolset has that name"
                if len(wanted) <= MAX_NAME
                else "too long"
            )
            renames.append(Rename(op.toolset, op.label, wanted, name, why))
        taken.add(name)
        tools.append(Tool(name, description(op, limit, compact), params, op))
    return tools, renames
