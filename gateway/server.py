"""The HTTP server's own settings and errors, before any handler runs.

- ``handler_args(config)``: the per-connection settings given to aiohttp: a request's
  headers must arrive within ``server.header_timeout`` of the connection opening (or of its
  previous response; the same timer closes idle keep-alive connections), so slow-header
  (slowloris) connections are closed; header size limits; and no automatic request
  decompression (``gateway.intake`` inflates bodies itself, after the key check, to a cap).
- ``expect_continue``: the ``Expect`` handler of every route: ``100-continue`` is answered
  as HTTP/1.1 says; any other expectation is a 417 OpenAI error (aiohttp's own answer is
  plain text that repeats the header).
- ``answer_protocol_errors(app)``: what aiohttp answers by itself, before any handler (a
  header line too long, a bad ``Content-Length``, a control character in the path), is
  sent as an OpenAI error body instead of aiohttp's plain text, and never echoes the input.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import ERROR

from gateway.config import ServerConfig
from gateway.errors import error_body

#: longest request line and header line aiohttp reads (its default)
MAX_LINE = 8190


def handler_args(server: ServerConfig) -> dict[str, Any]:
    return {
        "keepalive_timeout": server.header_timeout,
        "max_line_size": MAX_LINE,
        "max_field_size": MAX_LINE,
        "auto_decompress": False,
    }


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Let a client that waits for ``100 Continue`` send its body; refuse other expectations."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None
    body = error_body(
        "The Expect header is not supported; only 'Expect: 100-continue' is.",
        "invalid_request_error",
        None,
        "expectation_failed",
    )
    return web.Response(status=417, body=orjson.dumps(body), content_type="application/json")


def answer_protocol_errors(app: web.Application) -> None:
    """Make aiohttp's own error answers for ``app`` OpenAI-shaped (see the module doc)."""
    make_request: Callable[..., web.Request] = app._make_request

    def request_factory(message: Any, *args: Any, **kw: Any) -> web.Request:
        if message is ERROR:  # aiohttp could not parse the request: it answers by itself
            return make_request(message, *args, _cls=_UnparsableRequest, **kw)
        return make_request(message, *args, **kw)

    app._make_request = request_factory  # type: ignore[method-assign]


class _UnparsableRequest(web.Request):
    """The request aiohttp's own error answer is prepared for; its text becomes JSON."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if isinstance(response, web.Response) and response.status >= 400:
            body = orjson.dumps(protocol_error_body(response.status, response.text or ""))
            response.body = body
            response.content_type = "application/json"
            response.headers["Content-Length"] = str(len(body))
            response.headers["x-request-id"] = os.urandom(12).hex()  # no edge ran to give one
        await super()._prepare_hook(response)


def protocol_error_body(status: int, text: str) -> dict[str, Any]:
    """An OpenAI error for what aiohttp refused; aiohttp's text is only classified."""
    low = text.lower()
    if status >= 500:
        why = "The gateway could not handle this request."
    elif "got more than" in low or "too long" in low or "too large" in low:
        why = (
            f"The request line or a header is longer than {MAX_LINE} bytes, or there are "
            "too many headers."
        )
    elif "content-length" in low:
        why = "The Content-Length header is not a valid length."
    elif "transfer-encoding" in low or "chunk" in low:
        why = "The Transfer-Encoding header or the chunked body is not valid."
    elif "url" in low or "path" in low or "target" in low:
        why = "The request path is not valid (control characters or malformed escapes)."
    else:
        why = "The request is not valid HTTP/1.1 (malformed request line or headers)."
    etype = "server_error" if status >= 500 else "invalid_request_error"
    return error_body(why, etype, None, "bad_http_request" if status < 500 else None)
