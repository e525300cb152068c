"""``create_app(config)``: app state, the upstream session's lifetime, and the middlewares.

Middlewares, outermost first: errors (every failure becomes an OpenAI error body), then
client authentication. The request id is set in ``on_response_prepare`` so that streamed
responses carry it too.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as e:
        return json_error(e.status, e.body_bytes())
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = "not_found" if e.status == 404 else None
        message = f"{request.method} {request.path}: {e.reason}"
        return json_error(
            e.status, _dumps(error_body(message, "invalid_request_error", None, code))
        )
    except Exception:
        log.exception(
            "unhandled error in %s %s (request %s)",
            request.method,
            request.path,
            request.get(REQUEST_ID),
        )
        body = error_body("The gateway failed while handling this request.", "server_error")
        return json_error(500, _dumps(body))


def json_error(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def _dumps(obj: object) -> bytes:
    import orjson

    return orjson.dumps(obj)


def auth_middleware(keys: list[bytes]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check_client_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _PUBLIC_PATHS:
            given = request.headers.get("Authorization", "")
            token = given[7:].strip().encode() if given[:7].lower() == "bearer " else b""
            # compare with every key, always, so timing says nothing about which matched
            ok = False
            for key in keys:
                ok |= hmac.compare_digest(token, key)
            if not ok:
                what = "is missing" if not token else "is not valid for this gateway"
                raise AuthenticationFailed(
                    f"The API key {what}. Send one of the keys in server.api_keys as "
                    "'Authorization: Bearer <key>'."
                )
        return await handler(request)

    return check_client_key


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
    return await handler(request)


async def _set_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-request-id"] = request.get(REQUEST_ID) or uuid.uuid4().hex


def create_app(config: GatewayConfig, tools: ToolSet | None = None) -> web.Application:
    """The app; ``tools`` already loaded (the CLI does that), else loaded at start-up."""
    from gateway import handlers

    middlewares: list[Callable[..., Awaitable[web.StreamResponse]]] = [
        request_id_middleware,
        error_middleware,
    ]
    keys = [k.get_secret_value().encode() for k in config.server.api_keys]
    if keys:
        middlewares.append(auth_middleware(keys))
    app = web.Application(middlewares=middlewares, client_max_size=config.server.max_request_bytes)
    app[CONFIG] = config
    app[ROUTER] = Router(config)
    if tools is not None:
        app[TOOLS] = tools
    app.cleanup_ctx.append(_upstream_session)
    app.on_response_prepare.append(_set_request_id)
    handlers.add_routes(app)
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    session = new_session()
    app[UPSTREAM] = Upstream(session)
    if TOOLS not in app:
        app[TOOLS] = await load_tools(app[CONFIG], fetch_with(session))
    yield
    await session.close()
