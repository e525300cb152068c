"""The built-in mock model (``base_url: mock://``): a scripted OpenAI server, no network.

It is a real aiohttp server on 127.0.0.1 (an ephemeral port), started the first time a
route needs it and stopped with the app. ``mock://`` becomes ``http://mock.gateway.invalid/v1``
in the route, and the upstream session's resolver (``MockResolver``) maps that one host to
the server: the upstream code stays the only code that talks to LLM servers, the hot path
has no special case, and a mock model goes through retries, fallbacks, the tool loop and
streaming exactly as a real one. (``.invalid`` never resolves anywhere else.)

What it answers (the convention is in the README, "The built-in mock model"):
- chat completions: the last user message echoed; a line ``/call NAME {json}`` in it calls
  the function NAME (it must be offered in ``tools``); after tool results, a text that
  quotes them. Stream and non-stream, usage counted at about 4 characters a token.
- legacy completions: the prompt echoed. Embeddings: deterministic unit vectors (a hash of
  the text), ``dimensions`` honoured (default 16), float or base64.
- anything else: an OpenAI-shaped 404 saying what the mock implements.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import re
import socket
import struct
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from gateway.errors import error_body

MOCK_HOST = "mock.gateway.invalid"
MOCK_BASE_URL = f"http://{MOCK_HOST}/v1"
DEFAULT_DIMENSIONS = 16
_CALL = re.compile(r"^\s*/call\s+([A-Za-z0-9_.-]+)\s*(.*?)\s*$")
_ids = itertools.count(1)


def upstream_url(base_url: str) -> str:
    """Where a route sends requests: the mock's address for ``mock://``, else ``base_url``."""
    return MOCK_BASE_URL if base_url.startswith("mock:") else base_url


# --- the script (no I/O) -------------------------------------------------------------------


def chat_reply(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message for a chat request (``content`` or ``tool_calls``)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    offered = _offered(body.get("tools"))
    if messages and messages[-1].get("role") == "tool":
        return {"role": "assistant", "content": _tool_summary(messages)}
    text = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    calls = [m for m in (_CALL.match(line) for line in text.splitlines()) if m]
    if not calls:
        forced = _forced(body.get("tool_choice"), offered)
        if forced is None:
            return {"role": "assistant", "content": text or "(mock: nothing to echo)"}
        calls_made = [(forced, "{}")]
    else:
        calls_made = []
        for m in calls:
            name, args = m.group(1), m.group(2) or "{}"
            problem = _call_problem(name, args, offered)
            if problem:
                return {"role": "assistant", "content": problem}
            calls_made.append((name, args))
    base = len(messages)
    tool_calls = [
        {"id": f"call_mock_{base}_{i}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, (n, a) in enumerate(calls_made)
    ]
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}


def _offered(tools: Any) -> list[str]:
    out = []
    for t in tools if isinstance(tools, list) else []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out.append(fn["name"])
    return out


def _forced(choice: Any, offered: list[str]) -> str | None:
    """``tool_choice`` "required" (the first function) or naming one: call it with ``{}``."""
    if choice == "required" and offered:
        return offered[0]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return name if name in offered else None
    return None


def _call_problem(name: str, args: str, offered: list[str]) -> str | None:
    if name not in offered:
        listed = ", ".join(offered) or "none"
        return f"(mock: no function named {name!r} is offered; offered: {listed})"
    try:
        parsed = orjson.loads(args)
    except orjson.JSONDecodeError as e:
        return f"(mock: the arguments of /call {name} are not valid JSON: {e})"
    if not isinstance(parsed, dict):
        return f"(mock: the arguments of /call {name} must be a JSON object)"
    return None


def _tool_summary(messages: list[dict[str, Any]]) -> str:
    """The trailing tool results, each under the name of the function that produced it."""
    names: dict[str, str] = {}
    for m in messages:
        for call in m.get("tool_calls") or []:
            if isinstance(call, dict):
                names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
    results = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        name = names.get(str(m.get("tool_call_id")), "a tool")
        results.append(f"{name} returned: {_text(m)}")
    return "\n".join(reversed(results))


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def tokens(text: str) -> int:
    """A rough count, about 4 characters a token (OpenAI's rule of thumb for English)."""
    return max(1, (len(text) + 3) // 4) if text else 0


def chat_usage(body: dict[str, Any], reply: dict[str, Any], n: int = 1) -> dict[str, int]:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    prompt = sum(tokens(_text(m)) + 3 for m in messages)
    out = reply.get("content") or orjson.dumps(reply.get("tool_calls") or []).decode()
    done = tokens(out) * n
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``: equal texts, equal vectors."""
    raw = b""
    for block in itertools.count():
        if len(raw) >= 4 * dimensions:
            break
        raw += hashlib.sha256(f"{block}:{text}".encode()).digest()
    values = [(v / 2**31) - 1.0 for v in struct.unpack(f"<{dimensions}I", raw[: 4 * dimensions])]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


# --- the server ------------------------------------------------------------------------------


def create_mock_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_route("*", "/{tail:.*}", _not_implemented)
    return app


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    if isinstance(body, web.Response):
        return body
    reply = chat_reply(body)
    asked = body.get("n")
    n = asked if isinstance(asked, int) and 1 <= asked <= 16 else 1
    usage = chat_usage(body, reply, n)
    finish = "tool_calls" if reply.get("tool_calls") else "stop"
    head = _head(body, "chat.completion")
    if body.get("stream") is not True:
        message = {**reply, "refusal": None}
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(n)
        ]
        return _json_response({**head, "choices": choices, "usage": usage})
    chunk = {**head, "object": "chat.completion.chunk"}
    events = [
        {**chunk, "choices": [{"index": i, "delta": d, "logprobs": None, "finish_reason": f}]}
        for d, f in _deltas(reply, finish)
        for i in range(n)
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**chunk, "choices": [], "usage": usage})
    return await _sse(request, events)


def _deltas(reply: dict[str, Any], finish: str) -> list[tuple[dict[str, Any], str | None]]:
    """A reply as stream deltas: the role, a word at a time, each call whole, the finish."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in re.findall(r"\s*\S+\s*", reply.get("content") or "")]
    calls = reply.get("tool_calls") or []
    deltas += [{"tool_calls": [{"index": i, **c}]} for i, c in enumerate(calls)]
    return [(d, None) for d in deltas] + [({}, finish)]


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    if isinstance(body, web.Response):
        return body
    prompt = body.get("prompt")
    text = (
        prompt
        if isinstance(prompt, str)
        else "\n".join(p for p in prompt or [] if isinstance(p, str))
    )
    usage = {"prompt_tokens": tokens(text), "completion_tokens": tokens(text)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
    result = {**_head(body, "text_completion"), "choices": [choice], "usage": usage}
    if body.get("stream") is True:
        return await _sse(request, [result])
    return _json_response(result)


async def _embeddings(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    if isinstance(body, web.Response):
        return body
    dims = body.get("dimensions") or DEFAULT_DIMENSIONS
    if not isinstance(dims, int) or not 0 < dims <= 4096:
        return _error(400, "'dimensions' must be an integer from 1 to 4096.", "dimensions")
    raw = body.get("input")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    data = []
    for i, item in enumerate(inputs):
        vector = embedding(item if isinstance(item, str) else orjson.dumps(item).decode(), dims)
        value: Any = vector
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    used = sum(tokens(str(x)) for x in inputs)
    usage = {"prompt_tokens": used, "total_tokens": used}
    return _json_response(
        {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
    )


async def _not_implemented(request: web.Request) -> web.Response:
    return _error(
        404,
        f"The built-in mock model does not implement {request.method} {request.path}; it "
        "answers POST /v1/chat/completions, /v1/completions and /v1/embeddings.",
        None,
        "not_found",
    )


async def _json(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "The mock model expects a JSON object body.")
    return body if isinstance(body, dict) else _error(400, "The body must be a JSON object.")


def _head(body: dict[str, Any], kind: str) -> dict[str, Any]:
    prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
    return {
        "id": f"{prefix}-mock{next(_ids)}",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model") if isinstance(body.get("model"), str) else "mock",
    }


async def _sse(request: web.Request, events: list[dict[str, Any]]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _json_response(data: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> web.Response:
    body = error_body(message, "invalid_request_error", param, code)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


# --- how the upstream session reaches it ---------------------------------------------------


class MockResolver(AbstractResolver):
    """The session's resolver: ``MOCK_HOST`` is the mock server (started on first use)."""

    def __init__(self) -> None:
        self._default = DefaultResolver()
        self._runner: web.AppRunner | None = None
        self._port: asyncio.Future[int] | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != MOCK_HOST:
            return await self._default.resolve(host, port, family)
        if self._port is None:
            self._port = asyncio.ensure_future(self._start())
        mock_port = await asyncio.shield(self._port)
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=mock_port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def _start(self) -> int:
        runner = web.AppRunner(create_mock_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        return int(runner.addresses[0][1])

    async def close(self) -> None:
        await self._default.close()
        if self._port is not None:
            if not self._port.done():
                self._port.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._port
        if self._runner is not None:
            await self._runner.cleanup()
