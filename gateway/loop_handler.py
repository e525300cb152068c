"""``/v1/chat/completions`` for a model with tools: the loop wired to aiohttp and the upstream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway import codec
from gateway.deadline import Deadline
from gateway.edge import FACTS, REQUEST_ID, SNAPSHOT, start_stream
from gateway.errors import GatewayError, InvalidRequest
from gateway.facts import Facts
from gateway.loop import LoopSettings, Offer, ToolLoop
from gateway.openapi.ir import Tool
from gateway.ranking import Embed, SelectionUnavailable
from gateway.redact import Redactor
from gateway.routing import Route
from gateway.selection import FIND_TOOLS, Offering
from gateway.state import UPSTREAM, Snapshot
from gateway.stream import EventTooLarge, SSEParser
from gateway.toolexec import ToolExecutor
from gateway.upstream import Upstream, midstream_error, too_large

log = logging.getLogger("gateway.loop")
TOOL_CALLS_HEADER = "x-gateway-tool-calls"


async def handle(request: web.Request, route: Route, body: dict[str, Any]) -> web.StreamResponse:
    refuse_several_choices(body, route)
    app = request.app
    snapshot = request[SNAPSHOT]
    config = snapshot.config
    toolset = snapshot.tools
    offered = toolset.named(route.id)
    request_id = request[REQUEST_ID]
    facts = request[FACTS]
    executor = ToolExecutor(
        app[UPSTREAM].session,
        snapshot.toolsets,
        config.limits.max_tool_response_bytes,
        request_id,
        redactor=snapshot.redactor,
        gates=snapshot.tool_gates,
        facts=facts,
        credentials=snapshot.credentials,
        client_headers=request.headers,  # per-user tokens (credentials with from_header)
    )

    offering = await _offering(request, route, body)

    async def run_call(name: str, arguments: str, call_id: str) -> str:
        if offering is not None and name == FIND_TOOLS and offering.selector.find_tools:
            executor.executed += 1  # counted like other calls
            return offering.find(arguments)  # the gateway's own function
        tool: Tool | None = offered.get(name)
        if tool is None:
            executor.unknown_function(name, call_id, loop.rounds + 1)
            return _no_such_function(name, list(offered), offering)
        return (await executor.run(tool, arguments, call_id, loop.rounds + 1)).content

    backend = UpstreamBackend(app[UPSTREAM], snapshot.router.chain(route), request_id, facts)
    settings = LoopSettings(
        config.limits.max_tool_rounds,
        config.limits.keepalive_interval,
        config.limits.max_tool_calls_per_round,
    )
    gateway_tools: list[dict[str, Any]] | Offer = (
        toolset.openai_tools(route.id) if offering is None else offering
    )
    loop = ToolLoop(body, gateway_tools, backend, run_call, settings, request_id, route.id)
    deadline = Deadline(route)
    try:
        async with deadline.scope():
            return await _run(request, loop, backend, executor, body.get("stream") is True)
    except asyncio.TimeoutError:
        raise loop.after_calls(deadline.passed()) from None
    except GatewayError as e:
        raise loop.after_calls(e) from None
    except Exception:
        if not loop.ran:
            raise
        log.exception("request %s: the gateway failed after tool calls ran", request_id)
        failed = GatewayError("The gateway failed while handling this request.")
        raise loop.after_calls(failed) from None
    finally:
        facts.tool_rounds, facts.tool_calls = loop.rounds, executor.executed
        facts.usage(loop.usage)
        facts.error = facts.error or loop.error


async def _run(
    request: web.Request,
    loop: ToolLoop,
    backend: UpstreamBackend,
    executor: ToolExecutor,
    wants_stream: bool,
) -> web.StreamResponse:
    if wants_stream:
        out = SSEOutput(request, backend)
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await loop.stream(out)  # a client that went away ends it; all under it is cancelled
        return await out.close()
    response = await loop.complete()
    headers = {**backend.headers, TOOL_CALLS_HEADER: str(executor.executed)}
    headers["Content-Type"] = "application/json"
    return web.Response(body=_reply_bytes(response, loop.model), headers=headers)


def _reply_bytes(response: dict[str, Any], model: str) -> bytes:
    """The final completion as bytes; one nested past what JSON writers go is the upstream's."""
    try:
        return codec.dumps(response)
    except InvalidRequest:
        raise GatewayError(
            f"The upstream of model {model!r} sent a chat completion nested too deeply for "
            "the gateway to pass on.",
            status=502,
            type="upstream_error",
            code="upstream_bad_response",
        ) from None


def _no_such_function(name: str, offered: list[str], offering: Offering | None) -> str:
    if offering is None:
        return (
            f"Error: there is no function named {name!r}. "
            f"Available functions: {', '.join(offered) or 'none'}."
        )
    hint = " Call find_tools to search for others." if offering.selector.find_tools else ""
    return (
        f"Error: there is no function named {name!r}. "
        f"Functions offered now: {', '.join(offering.names())}.{hint}"
    )


async def _offering(request: web.Request, route: Route, body: dict[str, Any]) -> Offering | None:
    """This request's selection of functions, for a model with ``tool_selection``."""
    snapshot = request[SNAPSHOT]
    selector = snapshot.tools.selectors.get(route.id)
    if selector is None:
        return None
    embed = None
    model = selector.config.embedding_model
    if selector.embeddings is not None and model is not None:
        chain = snapshot.router.chain(snapshot.router.resolve(model))
        embed = embedder(request.app[UPSTREAM], chain, request[REQUEST_ID])
    return await selector.offering(body["messages"], embed)


def warm_embeddings(snapshot: Snapshot, upstream: Upstream) -> list[asyncio.Future[None]]:
    """Start embedding the functions of every model that ranks with embeddings."""
    tasks: list[asyncio.Future[None]] = []
    for selector in snapshot.tools.selectors.values():
        model = selector.config.embedding_model
        if selector.embeddings is None or model is None:
            continue
        chain = snapshot.router.chain(snapshot.router.resolve(model))
        tasks.append(asyncio.ensure_future(selector.warm(embedder(upstream, chain, "start-up"))))
    return tasks


def embedder(upstream: Upstream, chain: list[Route], request_id: str) -> Embed:
    """Texts -> vectors through a model of this config, on ``/v1/embeddings``."""

    async def embed(texts: list[str]) -> list[list[float]]:
        reply = await upstream.call(
            chain,
            "/embeddings",
            lambda route: orjson.dumps({"model": route.upstream_model, "input": texts}),
            stream=False,
            request_id=request_id,
        )
        data = _json_object(reply.body or b"", reply.route).get("data")
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise SelectionUnavailable("the embeddings reply has no data list")
        ordered = sorted(data, key=lambda d: d.get("index", 0))
        return [d.get("embedding") for d in ordered]  # checked by the selector

    return embed


def refuse_several_choices(body: dict[str, Any], route: Route) -> None:
    """``n > 1`` with gateway tools: each choice would need its own loop; say so, never drop."""
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        raise InvalidRequest(
            f"'n' is {n}, but model {route.id!r} has gateway tools, and the gateway runs its "
            "tool loop for one choice only. Send n=1 (or leave 'n' out) and make several "
            "requests for several answers.",
            param="n",
        )


class SSEOutput:
    """The client's SSE response, prepared only once the first round has connected."""

    def __init__(self, request: web.Request, backend: UpstreamBackend) -> None:
        self.request = request
        self.backend = backend
        self.response = web.StreamResponse()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Send the headers: the first round's upstream headers, and ours."""
        self.response.headers.update(self.backend.headers)
        self.response.headers.update(
            {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await start_stream(self.request, self.response)

    async def write(self, data: bytes) -> None:
        async with self._lock:  # keepalive comments never cut into an event
            await self.response.write(data)

    async def close(self) -> web.StreamResponse:
        if self.response.prepared:
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                await self.response.write_eof()
        return self.response


class UpstreamBackend:
    """One round against the model's route chain (retries and fallbacks per round)."""

    def __init__(
        self, upstream: Upstream, chain: list[Route], request_id: str, facts: Facts | None = None
    ) -> None:
        self.upstream = upstream
        self.chain = chain
        self.request_id = request_id
        self.facts = facts
        #: the last round's upstream headers worth passing on (rate limits, openai-*)
        self.headers: dict[str, str] = {}

    def _body_for(self, body: dict[str, Any]) -> Any:
        return lambda route: codec.dumps(route.rewrite(body))

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.upstream.call(
            self.chain,
            "/chat/completions",
            self._body_for(body),
            stream=False,
            request_id=self.request_id,
            facts=self.facts,
        )
        self.headers = reply.client_headers()
        return _json_object(reply.body or b"", reply.route)

    async def open_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        reply = await self.upstream.call(
            self.chain,
            "/chat/completions",
            self._body_for(body),
            stream=True,
            request_id=self.request_id,
            facts=self.facts,
        )
        self.headers = reply.client_headers()
        if reply.body is not None:  # the upstream answered a stream request with JSON
            return _as_chunks(_json_object(reply.body, reply.route))
        return self._chunks(reply)

    async def _chunks(self, reply: Any) -> AsyncIterator[dict[str, Any]]:
        """The round's chunks; at most ``max_response_bytes`` in all and in one event.

        The loop keeps a round's text and tool-call arguments until the round ends, so a
        round is capped as a whole: an endless stream ends with an error, not more memory.
        """
        route = reply.route
        parser = SSEParser(route.max_response_bytes)
        size = since_yield = 0
        try:
            async for data in reply.response.content.iter_any():
                size += len(data)
                if size > route.max_response_bytes:
                    raise too_large(route)
                for payload in parser.feed(data):
                    if payload.strip() == b"[DONE]":
                        return
                    chunk = _parse_chunk(payload, route.redactor)
                    if chunk is not None and "error" in chunk:  # passed on: may echo a key
                        chunk = route.redactor.redact_json(chunk)
                    if isinstance(chunk, dict):
                        yield chunk
                since_yield += len(data)
                if since_yield >= 1 << 20:  # one fast upstream never holds the loop
                    since_yield = 0
                    await asyncio.sleep(0)
        except (asyncio.TimeoutError, aiohttp.ClientError) as e:
            raise midstream_error(route, e) from None
        except EventTooLarge:
            raise too_large(route, "a stream event") from None
        finally:
            reply.close()


def _parse_chunk(payload: bytes, redactor: Redactor) -> dict[str, Any] | None:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        shown = redactor.redact(payload.decode("utf-8", "replace"))  # logged: may echo a key
        log.warning("skipping a stream event that is not JSON: %.200r", shown)
        return None
    return chunk if isinstance(chunk, dict) else None


def _json_object(raw: bytes, route: Route) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise GatewayError(
            f"The upstream of model {route.id!r} answered with something that "
            "is not a chat completion",
            status=502,
            type="upstream_error",
            code="upstream_bad_response",
        )
    return data


async def _as_chunks(completion: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """A whole completion as one chunk (for upstreams that ignore ``stream``)."""
    choices = []
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        delta = {k: v for k, v in message.items() if v is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
        choices.append(
            {
                "index": choice.get("index", 0),
                "delta": delta,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    yield {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
        "choices": choices,
        **({"usage": completion["usage"]} if completion.get("usage") else {}),
    }
