"""One tool call -> the HTTP request its operation describes -> the text of a tool message.

The only code that talks to tool servers. Scheme, host and port come from the toolset's
``base_url`` or the spec's servers, never from the model's arguments; path values are
percent-encoded per segment and may not change the path; redirects are followed only to the
same origin and under the base URL's path. Credentials are applied last, in one place
(``apply_credentials``), and no model-chosen value can override, remove or imitate them.
Every failure (bad arguments, timeout, connection error, error status, a value or redirect
the HTTP stack refuses) becomes a tool message telling the model what happened, so it can
correct itself; every tool message is redacted (``gateway.redact``) before it is cut.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import logging
import posixpath
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from gateway import logs
from gateway.config import BasicAuth, ToolsetConfig
from gateway.credentials import CallCredentials, Credential, CredentialError, ToolsetCredentials
from gateway.facts import Facts
from gateway.openapi.ir import Body, Param, Tool
from gateway.redact import Redactor, is_credential_header

log = logging.getLogger("gateway.toolexec")

MAX_REDIRECTS = 5
_UNRESERVED = "-._~"
#: kept as they are in an ``allowReserved`` query value; ``& = # ; +`` are always encoded,
#: since they would end the value, add parameters or drop the rest of the URL (credentials)
_RESERVED_KEPT = ":/?[]@!$'()*,"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NO_REDACTION = Redactor(())
_TEXTUAL = ("json", "xml", "text/", "javascript", "yaml", "csv", "html", "x-www-form-urlencoded")


class ArgumentError(Exception):
    """The model's arguments cannot make a request; the message goes back to the model."""


@dataclass
class ToolResult:
    content: str
    status: int | None = None
    bytes: int = 0
    #: ok, http_error, timeout, unreachable, redirect_refused, too_many_redirects, rejected,
    #: no_credentials (a per-user value missing, a token endpoint failing)
    outcome: str = "ok"
    #: why the call failed, in a few words (for the log line; the model reads ``content``)
    error: str | None = None


@dataclass(frozen=True)
class Request:
    method: str
    url: str  # fully percent-encoded
    headers: CIMultiDict[str]
    body: bytes | aiohttp.FormData | None
    log_url: str  # without credentials
    base: str  # the server URL: redirects stay under it


class ToolExecutor:
    """Runs calls for one request: knows the toolsets, the session and the limits.

    ``gates`` holds one semaphore per toolset (from the config snapshot, shared by all
    requests): at most ``max_concurrency`` requests to a toolset's server at a time.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        toolsets: dict[str, ToolsetConfig],
        max_bytes: int,
        request_id: str = "",
        *,
        redactor: Redactor = _NO_REDACTION,
        gates: Mapping[str, asyncio.Semaphore] | None = None,
        facts: Facts | None = None,
        credentials: Mapping[str, ToolsetCredentials] | None = None,
        client_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.session = session
        self.toolsets = toolsets
        self.max_bytes = max_bytes
        self.request_id = request_id
        self.redactor = redactor
        self.gates = gates or {}
        self.facts = facts
        self.tracing = facts.obs.tracing if facts is not None else None
        #: per toolset with ``credentials:``; per-user values come from ``client_headers``
        self.credentials = credentials or {}
        self.client_headers = client_headers or {}
        self.executed = 0

    async def run(
        self, tool: Tool, arguments: str, call_id: str = "", round: int = 0
    ) -> ToolResult:
        if self.tracing is None:
            return await self._run(tool, arguments, call_id, round)
        with self.tracing.tool(tool.name, tool.toolset, call_id) as span:
            result = await self._run(tool, arguments, call_id, round)
            if result.outcome != "ok":
                span.set_attribute("error.type", result.outcome)
            return result

    async def _run(self, tool: Tool, arguments: str, call_id: str, round: int) -> ToolResult:
        started = time.perf_counter()
        toolset = self.toolsets[tool.toolset]
        try:
            args = parse_arguments(tool, arguments)
            request, call = await self._prepare(tool, args, toolset)
        except (ArgumentError, CredentialError) as e:
            result = self._not_called(e)
            self._report(tool.name, tool.toolset, call_id, round, None, result, None)
            return result
        self.executed += 1
        result = await self._call(toolset, request, call)
        if result.status == 401 and call.tokens:  # the token may have been revoked: once more
            for source, token in call.tokens:
                source.expire(token)
            try:
                request, call = await self._prepare(tool, args, toolset)
            except (ArgumentError, CredentialError) as e:
                result = self._not_called(e)
            else:
                result = await self._call(toolset, request, call)
        seconds = time.perf_counter() - started
        self._report(tool.name, tool.toolset, call_id, round, request, result, seconds)
        return result

    def _not_called(self, e: ArgumentError | CredentialError) -> ToolResult:
        reason = self.redactor.redact(" ".join(str(e).split()))
        outcome = "rejected" if isinstance(e, ArgumentError) else "no_credentials"
        return ToolResult(self.redactor.redact(f"Error: {e}"), outcome=outcome, error=reason)

    async def _prepare(
        self, tool: Tool, args: dict[str, Any], toolset: ToolsetConfig
    ) -> tuple[Request, CallCredentials]:
        """The request, with the credentials the operation's security asks for (if any)."""
        per_operation = self.credentials.get(tool.toolset)
        if per_operation is None:
            return build_request(tool, args, toolset), CallCredentials()
        call = await per_operation.for_call(tool.operation, self.session, self.client_headers)
        creds = [*credentials_for(toolset), *call.credentials]
        return build_request(tool, args, toolset, creds), call

    async def _call(
        self, toolset: ToolsetConfig, request: Request, call: CallCredentials
    ) -> ToolResult:
        """Send within the toolset's concurrency cap; tokens of this call are redacted too."""
        redactor = self.redactor.including(call.secrets)
        gate = self.gates.get(toolset.name)
        async with gate if gate is not None else contextlib.nullcontext():
            return await self._send(toolset, request, redactor)

    def unknown_function(self, name: str, call_id: str, round: int) -> None:
        """The model called a function it was not offered: logged, counted, not executed."""
        result = ToolResult("", outcome="unknown_function", error="no such function")
        self._report(name[:128], None, call_id, round, None, result, None)

    def _report(
        self,
        function: str,
        toolset: str | None,
        call_id: str,
        round: int,
        request: Request | None,
        result: ToolResult,
        seconds: float | None,
    ) -> None:
        fields = {
            "request_id": self.request_id,
            "model": self.facts.route if self.facts is not None else None,
            "round": round,
            "call_id": call_id[:128],
            "toolset": toolset,
            "function": function,
            "method": request.method if request is not None else None,
            "url": self._log_url(request, toolset),
            "status": result.status,
            "outcome": result.outcome,
            "error": result.error,
            "ms": round_ms(seconds),
            "bytes": result.bytes,
        }
        if self.facts is None:
            logs.event(log, "tool call", fields)
            return
        label = function if toolset is not None else "unknown"
        self.facts.obs.tool_call(fields, toolset or "none", label, result.outcome, seconds)

    def _log_url(self, request: Request | None, toolset: str | None) -> str | None:
        if request is None or toolset is None:
            return None
        return self.redactor.redact(request.log_url)

    async def _send(
        self, toolset: ToolsetConfig, request: Request, redactor: Redactor
    ) -> ToolResult:
        timeout = toolset.timeout
        try:
            result = await self._follow(request, aiohttp.ClientTimeout(total=timeout), redactor)
        except asyncio.TimeoutError:
            return ToolResult(
                f"Error: {request.method} {request.log_url} did not answer within "
                f"{timeout:g} s (the toolset's timeout).",
                outcome="timeout",
                error=f"no answer within {timeout:g} s",
            )
        except aiohttp.ClientError as e:
            reason = _reason(e)
            return ToolResult(
                f"Error: could not reach {urlsplit(request.log_url).netloc} for "
                f"{request.method} {request.log_url}: {reason}.",
                outcome="unreachable",
                error=reason,
            )
        except (ValueError, UnicodeError) as e:  # the HTTP stack refused a value
            reason = redactor.redact(str(e)) if type(e) is ValueError else type(e).__name__
            return ToolResult(
                f"Error: {request.method} {request.log_url} could not be sent: {reason}.",
                outcome="not_sent",
                error=reason,
            )
        if result.outcome == "ok" and result.status is not None and result.status >= 400:
            result.outcome, result.error = "http_error", f"HTTP {result.status}"
        return result

    async def _follow(
        self, request: Request, timeout: aiohttp.ClientTimeout, redactor: Redactor
    ) -> ToolResult:
        method, url, body, headers = request.method, request.url, request.body, request.headers
        if self.request_id or self.tracing is not None:
            headers = CIMultiDict(headers)  # a copy: the request's own may be reused
            if self.request_id:
                headers.setdefault("X-Request-Id", self.request_id)
            if self.tracing is not None:
                self.tracing.propagator.inject(headers)
        for _ in range(MAX_REDIRECTS + 1):
            async with self.session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeout,
            ) as resp:
                location = resp.headers.get("Location")
                if resp.status in (301, 302, 303, 307, 308) and location:
                    target, refused = redirect_target(url, location, request.base)
                    if refused:
                        return ToolResult(
                            f"HTTP {resp.status}\nRedirect to {refused} was not followed.",
                            resp.status,
                            outcome="redirect_refused",
                            error=f"redirect to {_origin(target)} not followed",
                        )
                    if resp.status in (301, 302, 303) and method != "HEAD":
                        method, body = "GET", None
                    url = target
                    continue
                return await read_result(resp, self.max_bytes, redactor)
        return ToolResult(
            f"Error: more than {MAX_REDIRECTS} redirects.",
            outcome="too_many_redirects",
            error=f"more than {MAX_REDIRECTS} redirects",
        )


def round_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def redirect_target(url: str, location: str, base: str) -> tuple[str, str | None]:
    """The URL a redirect points to, and why it is refused (None when it may be followed).

    Followed only to the same scheme, host and port, and under the base URL's path (after
    percent-decoding and resolving ``.``/``..``, as a server would); a ``Location`` that is
    not a valid URL is refused, never an exception.
    """
    try:
        target = urljoin(url, location.strip())
        origin = _origin(target)
        same = origin == _origin(url)
        path = _server_path(urlsplit(target).path)
        URL(target, encoded=True)
    except ValueError:
        return "", "an invalid URL"
    if not same:
        return "", f"another host ({origin})"
    prefix = urlsplit(base).path.rstrip("/")
    if prefix and path != prefix and not path.startswith(prefix + "/"):
        return "", f"a path outside {prefix}/"
    if _CONTROL.search(target) or any(c.isspace() for c in target):
        return "", "an invalid URL"
    return target.partition("#")[0], None


def _server_path(path: str) -> str:
    """A path as a lenient server sees it: decoded (twice), ``\\`` as ``/``, dots resolved."""
    decoded = unquote(unquote(path)).replace("\\", "/")
    return "/" + posixpath.normpath("/" + decoded).lstrip("/")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def _reason(e: aiohttp.ClientError) -> str:
    if isinstance(e, aiohttp.ClientConnectorError) and e.os_error:
        return str(e.os_error.strerror or e.os_error)
    return type(e).__name__


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
    if _CONTROL.search(text):
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
            if _CONTROL.search(str(k)):
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


# --- the response --------------------------------------------------------------------------


async def read_result(
    resp: aiohttp.ClientResponse, max_bytes: int, redactor: Redactor = _NO_REDACTION
) -> ToolResult:
    """Status line and body, JSON compacted, text as text, binary as a note; capped.

    Redacted before it is cut; a body read only up to the cap loses a tail that begins a
    secret (its rest was never read, so the redactor could not see it whole).
    """
    data = bytearray()
    complete = True
    async for chunk in resp.content.iter_chunked(65536):
        data += chunk
        if len(data) > max_bytes:
            complete = False
            break
    ctype = resp.headers.get("Content-Type", "").lower()
    head = f"HTTP {resp.status}"
    if data and not _is_text(ctype, bytes(data[:1024])):
        media = ctype.split(";")[0].strip()  # its parameters are the server's words, unredacted
        note = f"[binary response: {media or 'unknown type'}, {_size(resp, data, complete)}]"
        return ToolResult(f"{head}\n{note}", resp.status, len(data))
    text = _body_text(bytes(data), ctype, complete)
    if not complete:
        text = redactor.drop_partial(text)
    text = redactor.redact(text)
    if len(text.encode()) > max_bytes or not complete:
        text = (
            f"{redactor.cut(text, max_bytes)}\n…[truncated: the response was "
            f"{_size(resp, data, complete)}; only the first {max_bytes} bytes are shown]"
        )
    return ToolResult(f"{head}\n{text}" if text else head, resp.status, len(data))


def _is_text(ctype: str, sample: bytes) -> bool:
    if any(t in ctype for t in _TEXTUAL):
        return True
    if ctype and not ctype.startswith("application/octet-stream"):
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in sample


def _body_text(data: bytes, ctype: str, complete: bool) -> str:
    if complete and "json" in ctype:
        try:
            return orjson.dumps(orjson.loads(data)).decode()
        except orjson.JSONDecodeError:
            pass
    if not complete:  # cut mid-body: a character cut in half is left out, not replaced
        return codecs.getincrementaldecoder("utf-8")("replace").decode(data)
    return data.decode("utf-8", "replace")


def _size(resp: aiohttp.ClientResponse, data: bytearray, complete: bool) -> str:
    if complete:
        return f"{len(data)} bytes"
    length = resp.headers.get("Content-Length")
    return f"{length} bytes" if length else f"more than {len(data) - 1} bytes"
