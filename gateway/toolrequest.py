"""One tool call's arguments -> the HTTP request its operation describes.

Scheme, host and port come from the toolset's ``base_url`` or the spec's servers, never from
the model's arguments; path values are percent-encoded per segment and may not change the
path. Credentials are applied last, in one place (``apply_credentials``), and no model-chosen
value can override, remove or imitate them. Arguments that cannot make a request raise
``ArgumentError``, whose message goes back to the model.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDict

from gateway.config import BasicAuth, ToolsetConfig
from gateway.credentials import Credential
from gateway.openapi.ir import Body, Param, Tool
from gateway.redact import is_credential_header

_UNRESERVED = "-._~"
#: kept as they are in an ``allowReserved`` query value; ``& = # ; +`` are always encoded,
#: since they would end the value, add parameters or drop the rest of the URL (credentials)
_RESERVED_KEPT = ":/?[]@!$'()*,"
#: refused in header values, form field names and redirect targets
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ArgumentError(Exception):
    """The model's arguments cannot make a request; the message goes back to the model."""


@dataclass(frozen=True)
class Request:
    method: str
    url: str  # fully percent-encoded
    headers: CIMultiDict[str]
    body: bytes | aiohttp.FormData | None
    log_url: str  # without credentials
    base: str  # the server URL: redirects stay under it


# --- arguments -----------------------------------------------------------------------------


def parse_arguments(tool: Tool, arguments: str) -> dict[str, Any]:
    """JSON-decode and validate against the function's schema, with exact messages."""
    try:
        args = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError as e:
        raise ArgumentError(
            f"the arguments of {tool.name} are not valid JSON ({e}). Send a "
            "JSON object that matches the function's parameters."
        ) from None
    if not isinstance(args, dict):
        raise ArgumentError(
            f"the arguments of {tool.name} must be a JSON object, not {type(args).__name__}."
        )
    errors = sorted(tool.validator.iter_errors(args), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"- {'/'.join(map(str, e.absolute_path)) or '(arguments)'}: {e.message}"
            for e in errors[:5]
        ]
        more = f"\n(and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ArgumentError(
            f"the arguments of {tool.name} do not match its parameters:\n" + "\n".join(lines) + more
        )
    return args


# --- the request ---------------------------------------------------------------------------


def build_request(
    tool: Tool,
    args: dict[str, Any],
    toolset: ToolsetConfig,
    credentials: Sequence[Credential] | None = None,
) -> Request:
    """The request for one call; ``credentials`` default to the toolset's (``credentials_for``)."""
    op = tool.operation
    base = toolset.base_url or op.server
    if not base or not base.startswith(("http://", "https://")):
        raise ArgumentError(
            f"toolset {toolset.name} has no server URL for {op.label}; "
            "the gateway's config must set its base_url."
        )
    creds = credentials_for(toolset) if credentials is None else credentials
    path = op.path
    query: list[tuple[str, str, bool]] = []  # name, value, allow_reserved
    headers: CIMultiDict[str] = CIMultiDict()
    cookies: list[str] = []
    for param in op.params:
        if param.arg not in args or args[param.arg] is None:
            continue
        value = args[param.arg]
        if param.location == "path":
            path = path.replace("{" + param.name + "}", path_value(param, value))
        elif param.location == "query":
            query += [(k, v, param.allow_reserved) for k, v in query_pairs(param, value)]
        elif param.location == "header":
            headers[param.name] = header_value(param, value)
        else:
            cookies.append(f"{param.name}={quote(_scalar(value, param), safe='')}")
    _refuse_claimed(creds, query, headers, cookies)
    headers.update(toolset.headers)  # configured headers win over the model's
    body, content_type = (None, None)
    if op.body is not None and args.get(op.body.arg) is not None:
        body, content_type = encode_body(op.body, args[op.body.arg])
    if content_type:
        headers["Content-Type"] = content_type
    log_query = _query_string(query)
    apply_credentials(creds, headers, cookies, query)
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    qs = _query_string(query)
    url = base.rstrip("/") + path + (f"?{qs}" if qs else "")
    log_url = base.rstrip("/") + path + (f"?{log_query}" if log_query else "")
    for cred in creds:
        if cred.location == "query":
            log_url += ("&" if "?" in log_url else "?") + f"{_enc(cred.name)}=[redacted]"
    return Request(op.method, url, headers, body, log_url, base)


def credentials_for(toolset: ToolsetConfig) -> list[Credential]:
    """The toolset's credentials: its ``auth``, and its configured credential headers."""
    creds = [
        Credential("header", name, value)
        for name, value in toolset.headers.items()
        if is_credential_header(name)
    ]
    auth = toolset.auth
    if auth is None:
        return creds
    if auth.type == "bearer":
        return [
            *creds,
            Credential("header", "Authorization", f"Bearer {auth.token.get_secret_value()}"),
        ]
    if auth.type == "basic":
        return [*creds, Credential("header", "Authorization", "Basic " + _basic_token(auth))]
    return [*creds, Credential(auth.type, auth.name, auth.value.get_secret_value())]


def _refuse_claimed(
    creds: Sequence[Credential],
    query: list[tuple[str, str, bool]],
    headers: CIMultiDict[str],
    cookies: list[str],
) -> None:
    """A model-chosen parameter named like a credential would override or shadow it."""
    chosen = [("query", name) for name, _, _ in query]
    chosen += [("header", name) for name in headers]
    chosen += [("cookie", c.partition("=")[0]) for c in cookies]
    for location, name in chosen:
        if any(cred.claims(location, name) for cred in creds):
            raise ArgumentError(
                f"the {location} parameter {name!r} is set by the gateway's configuration "
                "and cannot be chosen in the arguments; leave it out."
            )


def _basic_token(auth: BasicAuth) -> str:
    raw = f"{auth.username}:{auth.password.get_secret_value()}".encode()
    return base64.b64encode(raw).decode()


def apply_credentials(
    creds: Sequence[Credential],
    headers: CIMultiDict[str],
    cookies: list[str],
    query: list[tuple[str, str, bool]],
) -> None:
    """The one place credentials go into a request: last, replacing anything of their name."""
    for cred in creds:
        if cred.location == "header":
            headers[cred.name] = cred.value
        elif cred.location == "cookie":
            cookies.append(f"{cred.name}={quote(cred.value, safe='')}")
        else:
            query.append((cred.name, cred.value, False))


def _enc(text: str, allow_reserved: bool = False) -> str:
    return quote(text, safe=_UNRESERVED + (_RESERVED_KEPT if allow_reserved else ""))


def _query_string(pairs: list[tuple[str, str, bool]]) -> str:
    return "&".join(f"{_enc(k)}={_enc(v, reserved)}" for k, v, reserved in pairs)


def _scalar(value: Any, param: Param | None = None) -> str:
    if param is not None and param.content_type:
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def path_value(param: Param, value: Any) -> str:
    """A path segment: per style, every piece percent-encoded, never a path of its own."""
    pieces = _pieces(param, value)
    for piece in pieces:
        if piece in ("", ".", "..") or "/" in piece:
            raise ArgumentError(
                f"the path parameter {param.arg} may not be {piece!r}: it would change the path."
            )
    encoded = [_enc(p) for p in pieces]
    explode_pairs = param.explode and isinstance(value, dict)
    if param.style == "label":
        return "." + ("." if param.explode else ",").join(_join_pairs(encoded, explode_pairs))
    if param.style == "matrix":
        if isinstance(value, list) and param.explode:
            return "".join(f";{_enc(param.name)}={p}" for p in encoded)
        if explode_pairs:
            return "".join(f";{p}" for p in _join_pairs(encoded, True))
        return f";{_enc(param.name)}=" + ",".join(encoded)
    return ",".join(_join_pairs(encoded, explode_pairs))


def _pieces(param: Param, value: Any) -> list[str]:
    if param.content_type:
        return [_scalar(value, param)]
    if isinstance(value, list):
        return [_scalar(v) for v in value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), _scalar(v))]
    return [_scalar(value)]


def _join_pairs(pieces: list[str], explode: bool) -> list[str]:
    if not explode:
        return pieces
    return [f"{pieces[i]}={pieces[i + 1]}" for i in range(0, len(pieces), 2)]


def query_pairs(param: Param, value: Any) -> list[tuple[str, str]]:
    """(name, value) pairs for one query parameter, by style and explode."""
    name = param.name
    if param.content_type or not isinstance(value, (list, dict)):
        return [(name, _scalar(value, param))]
    if param.style == "deepObject" and isinstance(value, dict):
        return _deep_pairs(name, value)
    if isinstance(value, list):
        items = [_scalar(v) for v in value]
        if param.style == "spaceDelimited":
            return [(name, " ".join(items))]
        if param.style == "pipeDelimited":
            return [(name, "|".join(items))]
        return [(name, v) for v in items] if param.explode else [(name, ",".join(items))]
    if param.explode:
        return [(str(k), _scalar(v)) for k, v in value.items()]
    return [(name, ",".join(s for k, v in value.items() for s in (str(k), _scalar(v))))]


def _deep_pairs(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _deep_pairs(f"{prefix}[{k}]", v)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _deep_pairs(f"{prefix}[{i}]", v)]
    return [(prefix, _scalar(value))]


def header_value(param: Param, value: Any) -> str:
    if param.content_type or not isinstance(value, (list, dict)):
        text = _scalar(value, param)
    elif isinstance(value, list):
        text = ",".join(_scalar(v) for v in value)
    elif param.explode:
        text = ",".join(f"{k}={_scalar(v)}" for k, v in value.items())
    else:
        text = ",".join(s for k, v in value.items() for s in (str(k), _scalar(v)))
    if CONTROL_CHARS.search(text):
        raise ArgumentError(
            f"the header parameter {param.arg} may not contain line breaks or other control "
            "characters."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError(
            f"the header parameter {param.arg} contains characters that cannot be sent."
        ) from None
    return text


def encode_body(body: Body, value: Any) -> tuple[bytes | aiohttp.FormData, str | None]:
    ctype = body.content_type.split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        if not isinstance(value, dict):
            raise ArgumentError("requestBody must be an object for a form body.")
        pairs = [p for k, v in value.items() for p in _form_pairs(body, str(k), v)]
        return "&".join(f"{_enc(k)}={_enc(v)}" for k, v in pairs).encode(), ctype
    if ctype.startswith("multipart/"):
        if not isinstance(value, dict):
            raise ArgumentError("requestBody must be an object for a multipart body.")
        form = aiohttp.FormData(default_to_multipart=True)
        for k, v in value.items():
            if CONTROL_CHARS.search(str(k)):
                raise ArgumentError(f"the form field name {str(k)!r} has control characters.")
            for item in v if isinstance(v, list) else [v]:
                form.add_field(str(k), _scalar(item))
        return form, None  # aiohttp sets the boundary
    if "json" in ctype or ctype == "*/*":
        return orjson.dumps(value), "application/json" if ctype == "*/*" else body.content_type
    return _scalar(value).encode(), body.content_type


def _form_pairs(body: Body, key: str, value: Any) -> list[tuple[str, str]]:
    encoding = body.encoding.get(key) or {}
    if isinstance(encoding, dict) and "json" in str(encoding.get("contentType", "")):
        return [(key, orjson.dumps(value).decode())]
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return [(key, _scalar(v)) for v in value]
    if isinstance(value, (dict, list)):
        return _deep_pairs(key, value)
    return [(key, _scalar(value))]
