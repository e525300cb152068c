"""HTTP handlers: ``/v1/chat/completions``, ``/v1/models``, other ``/v1`` POSTs, the probes.

OpenAI's main paths answer without the ``/v1`` prefix too, with the same handlers.

The pass-through path parses the request once (to find the model), rewrites it only when
the route asks for a change, and relays the upstream's bytes to the client untouched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway import codec, loop_handler, stream
from gateway.deadline import Deadline
from gateway.edge import FACTS, REQUEST_ID, SNAPSHOT, Handler, start_stream
from gateway.errors import InvalidRequest, NotFound, UnsupportedMediaType, error_body
from gateway.facts import USAGE_TAIL
from gateway.intake import confined_tail, read_body
from gateway.routing import Route
from gateway.server import expect_continue
from gateway.state import STATE, UPSTREAM
from gateway.upstream import BodyFor, Reply, midstream_error

log = logging.getLogger("gateway.handlers")

#: other ``/v1`` endpoints with a metrics label of their own (any other is ``other_endpoint``)
_ENDPOINTS = {
    t: t.replace("/", "_")
    for t in (
        "completions",
        "embeddings",
        "responses",
        "moderations",
        "rerank",
        "images/generations",
        "audio/speech",
    )
}


#: OpenAI's endpoints whose body names a model, also served without ``/v1`` (as other
#: gateways do, for clients whose base_url lacks it); any other POST needs the prefix
UNPREFIXED = "completions|embeddings|responses|moderations|images|audio|rerank"


def add_routes(app: web.Application, edge: Callable[[Handler], Handler]) -> None:
    """Every route, each handler wrapped in ``edge``; anything else gets an OpenAI 404/405."""
    get = functools.partial(app.router.add_get, expect_handler=expect_continue)
    post = functools.partial(app.router.add_post, expect_handler=expect_continue)
    get("/healthz", edge(healthz))
    get("/readyz", edge(readyz))
    for prefix in ("/v1", ""):
        get(prefix + "/models", edge(list_models))
        get(prefix + "/models/{model_id:.+}", edge(get_model))
        post(prefix + "/chat/completions", edge(chat_completions))
    post("/v1/{tail:[\\s\\S]+}", edge(other_endpoint))  # newlines too: refused
    post("/{tail:(?:" + UNPREFIXED + ")(?:/.+)?}", edge(other_endpoint))
    # last: only what nothing else took (any path, "%0A" in it too: aiohttp's own 404 is text)
    app.router.add_route("*", "/{path:[\\s\\S]*}", edge(no_route), expect_handler=expect_continue)


async def no_route(request: web.Request) -> web.StreamResponse:
    """A path no route has (404), or one that exists for other methods (405)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.canonical != "/{path}":
            allowed |= (await resource.resolve(request))[1]
    where = f"{request.method} {shown_path(request)}"
    if not allowed:
        raise NotFound(
            f"{where}: there is no such endpoint here. The gateway serves the OpenAI API "
            "under /v1 (set your client's base_url to http://<gateway host:port>/v1); "
            "/chat/completions, /models, /embeddings, /completions and /responses also "
            "answer without it."
        )
    methods = ", ".join(sorted(allowed))
    message = f"{where}: method not allowed; use {methods}."
    if allowed == {"POST"}:
        message = f"{where}: method not allowed; use POST. {_CANNOT_PROXY}"
    body = error_body(message, "invalid_request_error", None, "method_not_allowed")
    return web.Response(
        status=405,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Allow": methods},
    )


_CANNOT_PROXY = (
    "The gateway routes every request by the 'model' named in its JSON body, so it can "
    "proxy only POST requests whose body names one of its models (chat/completions, "
    "completions, embeddings, responses, moderations, images, audio/speech, ...), and it "
    "answers GET /v1/models itself. Requests that name no model in a body (listing, "
    "fetching or deleting files, batches, stored responses, fine-tuning jobs) cannot be "
    "routed: send those to the upstream directly."
)


def shown_path(request: web.Request) -> str:
    """The path, for a message: control characters escaped, at most 200 characters."""
    path = request.path
    if len(path) > 200:
        path = path[:200] + "…"
    return path if path.isprintable() else repr(path)[1:-1]


# --- models ------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 while draining; a missing toolset is reported, not a reason to drop out.

    Its models are served without it (and it is retried): taking every replica out of its
    load balancer because one tool API was down at start-up would stop every model.
    """
    snapshot = request[SNAPSHOT]
    if request.app[STATE].draining:
        return web.json_response({"status": "draining"}, status=503)
    if snapshot.missing:
        body = {
            "status": "degraded",
            "config": snapshot.digest,
            "missing_toolsets": sorted(snapshot.missing),
        }
        return web.json_response(body)
    return web.json_response({"status": "ready", "config": snapshot.digest})


async def list_models(request: web.Request) -> web.Response:
    return web.Response(body=request[SNAPSHOT].models_body, content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    snapshot = request[SNAPSHOT]
    card = snapshot.model_cards.get(model_id)
    if card is None:
        snapshot.router.resolve(model_id)  # raises the usual model_not_found error
    return web.Response(body=card, content_type="application/json")


# --- completions -------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    raw, body = await read_json(request)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages' is required and must be a non-empty array of message objects.",
            param="messages",
        )
    route = resolve(request, body)
    if route.toolsets and request[SNAPSHOT].tools.for_model(route.id):
        return await loop_handler.handle(request, route, body)
    return await proxy(request, route, "/chat/completions", raw, body)


async def other_endpoint(request: web.Request) -> web.StreamResponse:
    """Any other OpenAI POST endpoint whose JSON body names a configured model."""
    tail = confined_tail(request)
    if request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType(
            f"POST {request.path}: the gateway proxies JSON requests that name a model; "
            f"uploads ({request.content_type}: files, audio) are not supported."
        )
    request[FACTS].endpoint = _ENDPOINTS.get(tail, "other_endpoint")
    raw, body = await read_json(request)
    route = resolve(request, body)
    return await proxy(request, route, f"/{tail}", raw, body)


async def read_json(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    server = request[SNAPSHOT].config.server
    raw = await read_body(request, server.max_request_bytes, server.body_timeout)
    body = codec.loads(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if codec.keys_disagree(raw, body):
        raw = codec.dumps(body)  # what goes upstream is what the gateway routed on
    return raw, body


def resolve(request: web.Request, body: dict[str, Any]) -> Route:
    model = body.get("model")
    facts = request[FACTS]
    facts.stream = body.get("stream") is True
    if isinstance(model, str):
        facts.model = model
    if model is None or model == "":
        raise InvalidRequest(
            "'model' is required: name one of the gateway's models.", param="model"
        )
    if not isinstance(model, str):
        raise InvalidRequest(
            f"'model' must be a string naming one of the gateway's models, "
            f"got {type(model).__name__}.",
            param="model",
        )
    route = request[SNAPSHOT].router.resolve(model)
    facts.route = route.id
    return route


def body_for(raw: bytes, body: dict[str, Any], path: str) -> BodyFor:
    """What to send to each route: the client's bytes as they are when nothing changes."""

    def build(route: Route) -> bytes:
        if route.upstream_model == body.get("model") and not route.params_for(path):
            return raw
        return codec.dumps(route.rewrite(body, path))

    return build


async def proxy(
    request: web.Request, route: Route, path: str, raw: bytes, body: dict[str, Any]
) -> web.StreamResponse:
    router = request[SNAPSHOT].router
    wants_stream = body.get("stream") is True
    facts = request[FACTS]
    deadline = Deadline(route)
    try:
        async with deadline.scope():
            reply = await request.app[UPSTREAM].call(
                router.chain(route),
                path,
                body_for(raw, body, path),
                stream=wants_stream,
                request_id=request[REQUEST_ID],
                query=request.rel_url.raw_query_string,
                facts=facts,
            )
            if reply.body is None:
                return await relay(request, reply)
    except asyncio.TimeoutError:
        raise deadline.passed() from None  # a started stream ends with it as an event
    facts.usage_from_tail(reply.body)
    return web.Response(status=reply.status, body=reply.body, headers=reply.client_headers())


async def relay(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Forward an upstream SSE stream chunk by chunk, as it arrives."""
    headers = reply.client_headers()
    headers["Cache-Control"] = "no-cache"
    response = web.StreamResponse(status=reply.status, headers=headers)
    facts = request[FACTS]
    previous = last = b""  # the usage chunk, when asked for, is among the last two
    try:
        await start_stream(request, response)
        async for chunk in reply.response.content.iter_any():
            await response.write(chunk)
            previous, last = last, chunk
    except (asyncio.TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
        reply.close()
        if isinstance(e, (ConnectionResetError, aiohttp.ClientConnectionResetError)):
            facts.error = "client_closed_request"
            return response  # the client went away
        error = midstream_error(reply.route, e)
        facts.error = error.code
        await _write_quietly(response, stream.error_event(error))
        return response
    except BaseException:
        reply.close()  # cancelled (client disconnected) or a bug: drop the upstream at once
        raise
    reply.release()
    facts.usage_from_tail(previous[-USAGE_TAIL:] + last)
    await response.write_eof()
    return response


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass
