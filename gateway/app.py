"""``create_app(config)``: the app's state, the upstream session's lifetime, the routes.

The config and everything derived from it live in one immutable ``Snapshot``
(``gateway.state``), held by the app's ``State``; the edge (``gateway.edge``) gives each
request the snapshot that is current when it starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway import handlers, server
from gateway.config import GatewayConfig
from gateway.edge import edge
from gateway.mock import MockResolver
from gateway.openapi.load import fetch_with
from gateway.state import STATE, UPSTREAM, Snapshot, State
from gateway.tools import ToolSet, load_tools
from gateway.upstream import Upstream, new_session

CONFIG_AT_START = web.AppKey("config_at_start", GatewayConfig)


def create_app(config: GatewayConfig, tools: ToolSet | None = None) -> web.Application:
    """The app; ``tools`` already loaded (the CLI does that), else loaded at start-up."""
    app = web.Application(
        client_max_size=config.server.max_request_bytes,
        handler_args=server.handler_args(config.server),
    )
    server.answer_protocol_errors(app)
    app[CONFIG_AT_START] = config
    if tools is not None or not config.tools:
        app[STATE] = State(Snapshot.build(config, tools))
    app.cleanup_ctx.append(_upstream_session)
    handlers.add_routes(app, edge())
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    resolver = MockResolver()  # mock:// models reach the built-in mock through it
    session = new_session(resolver)
    app[UPSTREAM] = Upstream(session)
    if STATE not in app:
        config = app[CONFIG_AT_START]
        app[STATE] = State(Snapshot.build(config, await load_tools(config, fetch_with(session))))
    yield
    await session.close()
    await resolver.close()
