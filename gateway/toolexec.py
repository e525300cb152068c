"""One tool call -> its request sent to the tool server -> a tool message.

The only code that talks to tool servers. The request is built by ``gateway.toolrequest``
and the response read by ``gateway.toolresult``; here it is sent, within the toolset's
timeout and concurrency cap, and redirects are followed only to the same origin and under
the base URL's path. Every failure (bad arguments, timeout, connection error, error status,
a value or redirect the HTTP stack refuses) becomes a tool message telling the model what
happened, so it can correct itself; every tool message is redacted (``gateway.redact``)
before it is cut. Each call is logged and reported (``gateway.observe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway import logs
from gateway.config import ToolsetConfig
from gateway.credentials import CallCredentials, CredentialError, ToolsetCredentials
from gateway.facts import Facts
from gateway.openapi.ir import Tool
from gateway.redact import Redactor
from gateway.toolrequest import (
    CONTROL_CHARS,
    ArgumentError,
    Request,
    build_request,
    credentials_for,
    parse_arguments,
)
from gateway.toolresult import ToolResult, read_result

log = logging.getLogger("gateway.toolexec")

MAX_REDIRECTS = 5
_NO_REDACTION = Redactor(())


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
    if CONTROL_CHARS.search(target) or any(c.isspace() for c in target):
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
