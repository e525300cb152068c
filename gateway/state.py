"""Everything derived from the config, as one immutable ``Snapshot``, and the app's state.

A request takes ``State.current`` once, at its start (the edge puts it on the request as
``SNAPSHOT``), and uses only that snapshot to its end. A reload builds a whole new snapshot
(config checked, specs fetched and converted) and ``State.swap`` replaces the old one in one
assignment: requests in flight finish on the config they started with.

Whatever is derived from the config and lives as long as it (routes, tool sets, selection
indexes, credential caches, per-toolset limits) belongs in the snapshot, never in a module
global or a separate app key.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import SecretStr

from gateway.config import ClientKey, GatewayConfig, ToolsetConfig
from gateway.credentials import ToolsetCredentials
from gateway.redact import Redactor
from gateway.routing import Router
from gateway.tools import EMPTY, ToolSet
from gateway.upstream import Upstream


@dataclass(frozen=True)
class Snapshot:
    """One loaded config and all that is derived from it; never changed once built."""

    config: GatewayConfig
    router: Router
    tools: ToolSet
    #: client keys (``server.api_keys``) as bytes, ready for the constant-time compare
    client_keys: tuple[bytes, ...]
    #: what logs and metrics say for each client key: its name, else a short hash of it
    client_key_names: tuple[str, ...]
    #: toolset configs by name
    toolsets: dict[str, ToolsetConfig]
    #: per toolset, at most ``max_concurrency`` tool requests at a time (all requests share it)
    tool_gates: dict[str, asyncio.Semaphore]
    #: per toolset with ``credentials:``: values by scheme, and its OAuth2 token caches
    credentials: dict[str, ToolsetCredentials]
    #: every secret of the config in every wire form (``gateway.redact``); the router's
    redactor: Redactor
    #: ``GET /v1/models`` and ``GET /v1/models/{id}`` bodies, serialised once
    models_body: bytes
    model_cards: dict[str, bytes]
    #: a short hash of the config, to tell loaded configs apart (logs, metrics)
    digest: str
    #: toolsets whose spec could not be loaded (name -> why): served without, retried
    missing: dict[str, str] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def build(
        cls,
        config: GatewayConfig,
        tools: ToolSet | None = None,
        missing: dict[str, str] | None = None,
    ) -> Snapshot:
        created = int(time.time())
        cards = {
            m.id: {"id": m.id, "object": "model", "created": created, "owned_by": "gateway"}
            for m in config.models
        }
        router = Router(config)
        tools = tools if tools is not None else EMPTY
        toolsets = {t.name: t for t in config.tools}
        return cls(
            config=config,
            router=router,
            tools=tools,
            client_keys=tuple(k.get_secret_value().encode() for k in config.server.api_keys),
            client_key_names=tuple(key_name(k) for k in config.server.api_keys),
            toolsets=toolsets,
            tool_gates={t.name: asyncio.Semaphore(t.max_concurrency) for t in config.tools},
            credentials={
                r.name: ToolsetCredentials(toolsets[r.name], r.schemes)
                for r in tools.reports
                if r.name in toolsets and toolsets[r.name].credentials
            },
            redactor=router.redactor,
            models_body=orjson.dumps({"object": "list", "data": list(cards.values())}),
            model_cards={k: orjson.dumps(v) for k, v in cards.items()},
            digest=config_digest(config),
            missing=dict(missing or {}),
        )


def key_name(key: ClientKey) -> str:
    """A client key's configured name, else ``key-`` and 8 hex digits of its SHA-256."""
    if key.name:
        return key.name
    return "key-" + hashlib.sha256(key.get_secret_value().encode()).hexdigest()[:8]


def config_digest(config: GatewayConfig) -> str:
    """12 hex digits over the whole config (secrets included, so a key change shows)."""
    data = config.model_dump(exclude={"base_dir", "key_hints"})
    raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=_plain)
    return hashlib.sha256(raw).hexdigest()[:12]


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


class State:
    """The app's current snapshot (``swap`` is the only way it changes), and its lifecycle.

    ``inflight`` counts the requests between the edge's start and end, so that a drain knows
    when the last one is done; ``draining`` is set once on SIGTERM (``/readyz`` says 503 and
    every response closes its connection from then on).
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        self.inflight = 0
        self.draining = False

    def swap(self, snapshot: Snapshot) -> Snapshot:
        """Serve ``snapshot`` from now on; return the one it replaces."""
        old, self.current = self.current, snapshot
        return old


STATE = web.AppKey("state", State)
UPSTREAM = web.AppKey("upstream", Upstream)
