"""The tool set: every toolset loaded and converted once, and what each model is offered."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from gateway.config import GatewayConfig, ToolsetConfig
from gateway.openapi.convert import Converter, build_tools
from gateway.openapi.ir import Operation, Skipped, Tool
from gateway.openapi.load import Fetch, Spec, load_spec

log = logging.getLogger("gateway.tools")
OPENAI_MAX_TOOLS = 128


@dataclass
class ToolsetReport:
    name: str
    spec: str
    version: str
    converted: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # include/exclude entries matching nothing
    cuts: int = 0  # recursive schemas cut
    no_server: list[str] = field(default_factory=list)  # operations with nowhere to send calls


@dataclass
class ToolSet:
    """All tools by name, and per model the list offered (ready to send)."""

    tools: dict[str, Tool]
    by_model: dict[str, list[Tool]]
    reports: list[ToolsetReport]
    specs: dict[str, Spec]
    _openai: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._openai = {m: [t.openai() for t in ts] for m, ts in self.by_model.items()}

    def for_model(self, model_id: str) -> list[Tool]:
        return self.by_model.get(model_id, [])

    def openai_tools(self, model_id: str) -> list[dict[str, Any]]:
        return self._openai.get(model_id, [])

    def warnings(self) -> list[str]:
        out = [str(s) for r in self.reports for s in r.skipped]
        for r in self.reports:
            out += [f"toolset {r.name}: filter {u!r} matches no operation" for u in r.unmatched]
            if r.no_server:
                out.append(
                    f"toolset {r.name}: no absolute server URL in the spec for "
                    f"{len(r.no_server)} operation(s) (e.g. {r.no_server[0]}); their calls "
                    "will fail until the toolset sets base_url"
                )
        for model_id, tools in self.by_model.items():
            if len(tools) > OPENAI_MAX_TOOLS:
                out.append(
                    f"model {model_id} is offered {len(tools)} functions; OpenAI accepts "
                    f"at most {OPENAI_MAX_TOOLS} (narrow it with include/exclude)"
                )
        return out


EMPTY = ToolSet({}, {}, [], {})


async def load_tools(config: GatewayConfig, fetch: Fetch | None = None) -> ToolSet:
    """Load every toolset's spec (concurrently) and convert them, in config order."""
    if not config.tools:
        return EMPTY
    specs = await asyncio.gather(
        *(
            load_spec(t.spec, config.base_dir, allow_remote_refs=t.allow_remote_refs, fetch=fetch)
            for t in config.tools
        )
    )
    return convert_all(config, dict(zip([t.name for t in config.tools], specs, strict=True)))


def convert_all(config: GatewayConfig, specs: dict[str, Spec]) -> ToolSet:
    converted: list[tuple[Operation, dict[str, Any], str]] = []
    reports = []
    limit = config.limits.max_description_length
    for ts in config.tools:
        spec = specs[ts.name]
        conv = Converter(spec, ts, limit)
        done, skipped = conv.convert()
        report = ToolsetReport(
            ts.name,
            ts.spec,
            spec.version,
            len(done),
            skipped,
            _unmatched(ts, [op for op, _ in done]),
            conv.schemas.cuts,
            [] if ts.base_url else [op.label for op, _ in done if not _absolute(op.server)],
        )
        reports.append(report)
        converted += [(op, params, ts.prefix) for op, params in done]
    tools = build_tools(converted, limit)
    by_toolset: dict[str, list[Tool]] = {}
    for tool in tools:
        by_toolset.setdefault(tool.toolset, []).append(tool)
    by_model = {
        m.id: [t for name in m.tools for t in by_toolset.get(name, [])]
        for m in config.models
        if m.tools
    }
    result = ToolSet({t.name: t for t in tools}, by_model, reports, specs)
    for warning in result.warnings():
        log.warning("%s", warning)
    return result


def _absolute(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("http://", "https://"))


def _unmatched(ts: ToolsetConfig, ops: list[Operation]) -> list[str]:
    if not ts.include:
        return []
    keys: set[str] = set()
    for op in ops:
        keys |= {f"method:{op.method.lower()}", *(f"tag:{t}" for t in op.tags)}
        if op.operation_id:
            keys.add(op.operation_id)
    return [entry for entry in ts.include if entry not in keys]


def listing(
    toolset: ToolSet, *, model: str | None = None, name: str | None = None
) -> list[dict[str, Any]]:
    """The ``gateway tools`` JSON: one item per function, in a stable order."""
    if model is not None:
        tools = toolset.for_model(model)
    else:
        tools = [t for t in toolset.tools.values() if name is None or t.toolset == name]
    return [
        {
            "toolset": t.toolset,
            "operationId": t.operation.operation_id,
            "method": t.operation.method,
            "path": t.operation.path,
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]
