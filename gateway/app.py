"""``create_app(config)``: app state, the upstream session's lifetime, and the middlewares.

One middleware at the edge: the request id, the client key check, and every failure turned
into an OpenAI error body. Handlers that stream set ``x-request-id`` before they prepare their
response (``request_id_header``); the middleware sets it on every other response.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.errors import AuthenticationFailed, GatewayError, error_body
from gateway.openapi.load import fetch_with
from gateway.routing import Router
from gateway.tools import ToolSet, load_tools
from gateway.upstream import Upstream, new_session

log = logging.getLogger("gateway")

CONFIG = web.AppKey("config", GatewayConfig)
ROUTER = web.AppKey("router", Router)
UPSTREAM = web.AppKey("upstream", Upstream)
TOOLS = web.AppKey("tools", ToolSet)
REQUEST_ID: Any = web.RequestKey("request_id", str) if hasattr(web, "RequestKey") else "request_id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PUBLIC_PATHS = frozenset({"/healthz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def edge_middleware(keys: list[bytes]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The one middleware: request id, client key check, every failure as an OpenAI error."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-Id")
        rid = incoming if incoming and _SAFE_ID.match(incoming) else os.urandom(16).hex()
        request[REQUEST_ID] = rid
        try:
            if keys and request.path not in _PUBLIC_PATHS:
                check_client_key(request, keys)
            response = await handler(request)
        except GatewayError as e:
            response = json_error(e.status, e.body_bytes())
        except web.HTTPException as e:
            if e.status < 400:
                raise
            code = "not_found" if e.status == 404 else None
            message = f"{request.method} {request.path}: {e.reason}"
            body = error_body(message, "invalid_request_error", None, code)
            response = json_error(e.status, orjson.dumps(body))
        except Exception:
            log.exception(
                "unhandled error in %s %s (request %s)", request.method, request.path, rid
            )
            body = error_body("The gateway failed while handling this request.", "server_error")
            response = json_error(500, orjson.dumps(body))
        if not response.prepared:  # streaming handlers set it before they prepare
            response.headers["x-request-id"] = rid
        return response

    return edge


def json_error(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def check_client_key(request: web.Request, keys: list[bytes]) -> None:
    given = request.headers.get("Authorization", "")
    token = given[7:].strip().encode() if given[:7].lower() == "bearer " else b""
    ok = False
    for key in keys:  # compare with every key, always: timing says nothing about which
        ok |= hmac.compare_digest(token, key)
    if not ok:
        what = "is missing" if not token else "is not valid for this gateway"
        raise AuthenticationFailed(
            f"The API key {what}. Send one of the keys in server.api_keys as "
            "'Authorization: Bearer <key>'."
        )


def request_id_header(request: web.Request) -> dict[str, str]:
    return {"x-request-id": request[REQUEST_ID]}


def create_app(config: GatewayConfig, tools: ToolSet | None = None) -> web.Application:
    """The app; ``tools`` already loaded (the CLI does that), else loaded at start-up."""
    from gateway import handlers

    keys = [k.get_secret_value().encode() for k in config.server.api_keys]
    app = web.Application(
        middlewares=[edge_middleware(keys)], client_max_size=config.server.max_request_bytes
    )
    app[CONFIG] = config
    app[ROUTER] = Router(config)
    if tools is not None:
        app[TOOLS] = tools
    app.cleanup_ctx.append(_upstream_session)
    handlers.add_routes(app)
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    session = new_session()
    app[UPSTREAM] = Upstream(session)
    if TOOLS not in app:
        app[TOOLS] = await load_tools(app[CONFIG], fetch_with(session))
    yield
    await session.close()
