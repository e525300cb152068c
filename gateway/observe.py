"""The app's observer: the access line, the metrics and the traces of every request.

The edge calls ``begin`` when a request arrives and ``end`` when it is over (in its
``finally``, whatever happened); in between the request's ``Facts`` collect what the
handlers, the upstream client and the tool loop learnt. The upstream client reports each
attempt and the tool executor each call here, through ``facts.obs``. Each part can be off:
``logging.access: false``, ``metrics.enabled: false``, no tracing endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from aiohttp import web

from gateway import logs
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.facts import Facts
from gateway.metrics import NONE, UNKNOWN, Metrics

access_log = logging.getLogger("gateway.access")
tool_log = logging.getLogger("gateway.toolexec")

#: probes and scrapes: their access lines are written at debug level only
QUIET_ENDPOINTS = frozenset({"healthz", "readyz", "metrics"})
_MAX_FIELD = 256

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Observer:
    """Built once per app from the config's ``logging``, ``metrics`` and ``tracing``."""

    def __init__(self, config: GatewayConfig) -> None:
        self.access = config.logging.access
        self.metrics = Metrics() if config.metrics.enabled else None
        self.metrics_host = config.metrics.host or config.server.host
        self.metrics_port = config.metrics.port
        from gateway import tracing

        self.tracing = tracing.from_config(config.tracing)

    # --- a request -----------------------------------------------------------------------

    def begin(self, facts: Facts, request: web.Request) -> None:
        if self.metrics is not None:
            self.metrics.request_started()
        if self.tracing is not None:
            self.tracing.begin(facts, request.headers)

    def stream_started(self, facts: Facts) -> None:
        facts.ttfb = time.perf_counter() - facts.start
        if self.metrics is not None:
            self.metrics.stream_started()

    def end(self, facts: Facts) -> None:
        seconds = time.perf_counter() - facts.start
        if self.access:
            level = logging.DEBUG if facts.endpoint in QUIET_ENDPOINTS else logging.INFO
            logs.event(access_log, "request", AccessFields(facts, seconds), level)
        if self.metrics is not None:
            self._count(self.metrics, facts, seconds)
        if self.tracing is not None:
            self.tracing.end(facts)

    def _count(self, metrics: Metrics, facts: Facts, seconds: float) -> None:
        model = facts.route or UNKNOWN
        served = facts.served or NONE
        metrics.request_done(facts.endpoint, model, served, facts.status, seconds, facts.ttfb)
        if facts.prompt_tokens or facts.completion_tokens:
            metrics.tokens_used(served, facts.prompt_tokens, facts.completion_tokens)
        if facts.tool_rounds is not None:
            metrics.rounds(model, facts.tool_rounds)

    # --- parts of a request --------------------------------------------------------------

    def attempt(self, model: str, outcome: str) -> None:
        """One call to an upstream ended: ok, retried, fell_back, timeout, unreachable, 4xx, 5xx."""
        if self.metrics is not None:
            self.metrics.attempt(model, outcome)

    def tool_call(
        self,
        fields: dict[str, Any],
        toolset: str,
        function: str,
        outcome: str,
        seconds: float | None,
    ) -> None:
        """One tool call ended or was refused (``seconds`` None: nothing was sent)."""
        logs.event(tool_log, "tool call", fields)
        if self.metrics is not None:
            self.metrics.tool_call(toolset, function, outcome, seconds)

    def config_loaded(self, digest: str) -> None:
        if self.metrics is not None:
            self.metrics.config_loaded(digest)

    def toolsets(self, configured: Iterable[str], missing: Collection[str]) -> None:
        """For the reloader: which toolsets are missing (their specs are being retried)."""
        if self.metrics is not None:
            self.metrics.toolsets(configured, missing)

    def reloaded(self, ok: bool, digest: str | None = None) -> None:
        """For the reloader: count a reload, and on success show the new config's digest."""
        if self.metrics is not None:
            self.metrics.reloaded(ok, digest)


class AccessFields(logs.Fields):
    """The access line's fields: a text line is written straight from the facts."""

    __slots__ = ("facts", "seconds")

    def __init__(self, facts: Facts, seconds: float) -> None:
        self.facts = facts
        self.seconds = seconds

    def as_dict(self) -> dict[str, Any]:
        return access_fields(self.facts, self.seconds)

    def __str__(self) -> str:
        f, q = self.facts, logs.plain
        return (
            f"request_id={q(f.request_id)} method={q(f.method)} path={q(f.path[:_MAX_FIELD])} "
            f"model={q(f.model[:_MAX_FIELD] if f.model is not None else None)} "
            f"served_model={q(f.served)} status={f.status} "
            f"upstream_status={_number(f.upstream_status)} "
            f"stream={'true' if f.stream else 'false'} duration_ms={self.seconds * 1000:.1f} "
            f"ttfb_ms={'-' if f.ttfb is None else f'{f.ttfb * 1000:.1f}'} "
            f"prompt_tokens={_number(f.prompt_tokens)} "
            f"completion_tokens={_number(f.completion_tokens)} "
            f"tool_rounds={_number(f.tool_rounds)} tool_calls={_number(f.tool_calls)} "
            f"error={q(f.error)} client_key={q(f.key)}"
        )


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def access_fields(facts: Facts, seconds: float) -> dict[str, Any]:
    """The access line's fields, in a stable order with stable names."""
    return {
        "request_id": facts.request_id,
        "method": facts.method,
        "path": facts.path[:_MAX_FIELD],
        "model": facts.model[:_MAX_FIELD] if facts.model is not None else None,
        "served_model": facts.served,
        "status": facts.status,
        "upstream_status": facts.upstream_status,
        "stream": facts.stream,
        "duration_ms": round(seconds * 1000, 1),
        "ttfb_ms": round(facts.ttfb * 1000, 1) if facts.ttfb is not None else None,
        "prompt_tokens": facts.prompt_tokens,
        "completion_tokens": facts.completion_tokens,
        "tool_rounds": facts.tool_rounds,
        "tool_calls": facts.tool_calls,
        "error": facts.error,
        "client_key": facts.key,
    }


OBSERVER = web.AppKey("observer", Observer)


def add_metrics_routes(app: web.Application, wrap: Callable[[Handler], Handler]) -> None:
    """``GET /metrics`` on the gateway's own port (unless off or on a port of its own)."""
    observer = app[OBSERVER]
    if observer.metrics is None or observer.metrics_port is not None:
        return
    handle = observer.metrics.handle

    async def metrics(request: web.Request) -> web.StreamResponse:
        return await handle(request)

    app.router.add_get("/metrics", wrap(metrics))


async def start_metrics_port(app: web.Application) -> web.AppRunner | None:
    """Serve ``GET /metrics`` alone on ``metrics.port``, when the config sets one."""
    observer = app[OBSERVER]
    if observer.metrics is None or observer.metrics_port is None:
        return None
    side = web.Application()
    side.router.add_get("/metrics", observer.metrics.handle)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    # workers share the port as they share the gateway's, and any of them answers the sum
    host, port = observer.metrics_host, observer.metrics_port
    site = web.TCPSite(
        runner, host, port, reuse_port=True if observer.metrics.multiprocess else None
    )
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(
            f"{host}:{port}",
            [
                f"metrics.port: {e.strerror or e}; choose another metrics.port, or leave it "
                "out to serve /metrics on the gateway's own port"
            ],
            headline="cannot listen",
        ) from None
    return runner
