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
from gateway.loop_handler import warm_embeddings
from gateway.mock import MockResolver
from gateway.observe import OBSERVER, Observer, add_metrics_routes, start_metrics_port
from gateway.openapi.load import fetch_with
from gateway.state import STATE, UPSTREAM, Snapshot, State
from gateway.tools import ToolSet, load_tools
from gateway.upstream import Upstream, new_session

CONFIG_AT_START = web.AppKey("config_at_start", GatewayConfig)


def create_app(
    config: GatewayConfig, tools: ToolSet | None = None, *, state: State | None = None
) -> web.Application:
    """The app, on ``state`` (``serve`` builds it, and reloads swap its snapshot), or on
    ``config`` and ``tools``: already loaded, else loaded at start-up."""
    app = web.Application(
        client_max_size=config.server.max_request_bytes,
        handler_args=server.handler_args(config.server),
    )
    server.answer_protocol_errors(app)
    app[CONFIG_AT_START] = config
    app[OBSERVER] = Observer(config)
    if state is not None:
        app[STATE] = state
    elif tools is not None or not config.tools:
        app[STATE] = State(Snapshot.build(config, tools))
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_warm_selection)
    app.cleanup_ctx.append(_observing)
    wrap = edge()
    add_metrics_routes(app, wrap)  # before the handlers' catch-all route
    handlers.add_routes(app, wrap)
    return app


async def _observing(app: web.Application) -> AsyncIterator[None]:
    """The config's digest shown from the start; a metrics port of its own; spans flushed."""
    observer = app[OBSERVER]
    snapshot = app[STATE].current
    observer.config_loaded(snapshot.digest)
    observer.toolsets(snapshot.toolsets, snapshot.missing)
    runner = await start_metrics_port(app)
    yield
    if runner is not None:
        await runner.cleanup()
    if observer.tracing is not None:
        observer.tracing.shutdown()


async def _warm_selection(app: web.Application) -> AsyncIterator[None]:
    """``tool_selection`` with embeddings: every function embedded once, at start-up."""
    tasks = warm_embeddings(app[STATE].current, app[UPSTREAM])
    yield
    for task in tasks:
        task.cancel()


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
