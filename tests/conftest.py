"""Shared fixtures: a scripted fake OpenAI upstream, and a gateway started on 127.0.0.1.

Everything runs on the test's own event loop, on loopback, with free ports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.configload import build_config


@dataclass
class Reply:
    """One scripted upstream answer."""

    json: Any = None
    status: int = 200
    chunks: list[Any] | None = None  # SSE: dicts become data lines; bytes go out raw
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the status line
    chunk_delay: float = 0.0
    content_type: str = "application/json"
    then_hang: bool = False  # stream: keep the connection open after the chunks


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]
    body: Any
    raw: bytes
    query: str


def completion(content: str = "Hello!", model: str = "up-model", **extra: Any) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    body.update(extra)
    return body


def chunk(
    delta: dict[str, Any], finish: str | None = None, model: str = "up-model", **extra: Any
) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    body.update(extra)
    return body


def text_stream(parts: list[str], model: str = "up-model") -> list[Any]:
    chunks: list[Any] = [chunk({"role": "assistant", "content": ""}, model=model)]
    chunks += [chunk({"content": p}, model=model) for p in parts]
    chunks.append(chunk({}, "stop", model=model))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


class FakeUpstream:
    """An OpenAI-compatible server that answers from a script and records what it got."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[Reply | Callable[[Received], Reply]] = []
        self.default: Reply | Callable[[Received], Reply] = Reply(json=completion())
        self.url = ""
        self.active = 0  # requests being answered right now
        self.cancelled = 0  # answers cut short because the gateway went away
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def push(self, *replies: Reply | Callable[[Received], Reply]) -> None:
        self.script.extend(replies)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        rec = Received(request.path, CIMultiDict(request.headers), body, raw, request.query_string)
        self.received.append(rec)
        reply = self.script.pop(0) if self.script else self.default
        if callable(reply):
            reply = reply(rec)
        self.active += 1
        try:
            return await self._answer(request, reply)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.chunks is None:
            body = reply.raw if reply.raw is not None else orjson.dumps(reply.json)
            return web.Response(
                status=reply.status,
                body=body,
                headers=reply.headers,
                content_type=reply.content_type,
            )
        resp = web.StreamResponse(status=reply.status, headers=reply.headers)
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        for item in reply.chunks:
            data = item if isinstance(item, bytes) else b"data: " + orjson.dumps(item) + b"\n\n"
            await resp.write(data)
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        if reply.then_hang:
            await asyncio.sleep(3600)
        await resp.write_eof()
        return resp


async def start_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def fake_upstream() -> AsyncIterator[Callable[[], Any]]:
    """Factory: ``up = await fake_upstream()`` starts one more fake upstream."""
    runners = []

    async def make() -> FakeUpstream:
        up = FakeUpstream()
        runner, up.url = await start_app(up.app)
        runners.append(runner)
        return up

    yield make
    for runner in runners:
        await runner.cleanup()


@dataclass
class Gateway:
    url: str
    config: GatewayConfig
    app: web.Application

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``gw = await make_gateway({"models": [...]})`` starts a gateway on loopback."""
    runners = []

    async def make(raw: dict[str, Any], base_dir: Path | None = None) -> Gateway:
        config = build_config(raw, "test-config", base_dir or tmp_path)
        app = create_app(config)
        runner, url = await start_app(app)
        runners.append(runner)
        return Gateway(url, config, app)

    yield make
    for runner in runners:
        await runner.cleanup()


def model(id: str, upstream: FakeUpstream, **kw: Any) -> dict[str, Any]:
    return {"id": id, "base_url": upstream.url + "/v1", "api_key": "sk-upstream-secret", **kw}


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def oai() -> AsyncIterator[Callable[..., openai.AsyncOpenAI]]:
    """Factory for async openai clients pointed at a gateway; closed after the test."""
    clients: list[openai.AsyncOpenAI] = []

    def make(gw: Gateway, api_key: str = "client-key", **kw: Any) -> openai.AsyncOpenAI:
        c = openai.AsyncOpenAI(base_url=gw.v1, api_key=api_key, max_retries=0, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()
