"""The tool set: every toolset loaded and converted once, and what each model is offered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway import credentials
from gateway.config import GatewayConfig, ModelConfig, ToolsetConfig
from gateway.errors import ConfigError
from gateway.openapi.convert import Converter, Rename, build_tools, fresh_name
from gateway.openapi.ir import Operation, SecurityScheme, Skipped, Tool
from gateway.openapi.load import Fetch, Spec, SpecError, is_url, load_spec
from gateway.selection import FIND_TOOLS, Offering, Selector, build_selectors

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
    #: operations whose security no configured credentials satisfy (called without)
    unsatisfied: list[str] = field(default_factory=list)
    schemes: dict[str, SecurityScheme] = field(default_factory=dict)


@dataclass
class ToolSet:
    """Every toolset's functions, and per model the list offered (ready to send).

    Names are unique within what one model is offered: a toolset's functions keep their
    names unless two toolsets of the same model clash, and every rename is in ``renames``.
    """

    by_toolset: dict[str, list[Tool]]
    by_model: dict[str, list[Tool]]
    reports: list[ToolsetReport]
    specs: dict[str, Spec]
    renames: list[Rename] = field(default_factory=list)
    #: per model with ``tool_selection`` (and more functions than it offers at once)
    selectors: dict[str, Selector] = field(default_factory=dict)
    #: models with ``tool_selection`` (never offered more than their ``max_functions``)
    selective: frozenset[str] = frozenset()
    _openai: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _named: dict[str, dict[str, Tool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._openai = {m: [t.openai() for t in ts] for m, ts in self.by_model.items()}
        self._named = {m: {t.name: t for t in ts} for m, ts in self.by_model.items()}

    def named(self, model_id: str) -> dict[str, Tool]:
        """A model's functions by name (built once; a request only looks up)."""
        return self._named.get(model_id, {})

    @property
    def tools(self) -> dict[str, Tool]:
        """Every function by its toolset's name for it (an earlier toolset wins a clash)."""
        out: dict[str, Tool] = {}
        for tools in self.by_toolset.values():
            for t in tools:
                out.setdefault(t.name, t)
        return out

    def for_model(self, model_id: str) -> list[Tool]:
        return self.by_model.get(model_id, [])

    def openai_tools(self, model_id: str) -> list[dict[str, Any]]:
        return self._openai.get(model_id, [])

    def warnings(self) -> list[str]:
        out = [str(s) for r in self.reports for s in r.skipped]
        for r in self.reports:
            out += [f"toolset {r.name}: filter {u!r} matches no operation" for u in r.unmatched]
            if r.unsatisfied:
                out.append(
                    f"toolset {r.name}: no configured credentials satisfy the security of "
                    f"{len(r.unsatisfied)} operation(s), called without credentials: "
                    + ", ".join(r.unsatisfied)
                )
            if r.no_server:
                out.append(
                    f"toolset {r.name}: no absolute server URL in the spec for "
                    f"{len(r.no_server)} operation(s) (e.g. {r.no_server[0]}); their calls "
                    "will fail until the toolset sets base_url"
                )
        for model_id, tools in self.by_model.items():
            if len(tools) > OPENAI_MAX_TOOLS and model_id not in self.selective:
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
    specs, problems = await load_specs(config, fetch)
    if problems:
        count = f"{len(problems)} of {len(config.tools)} toolset spec(s)"
        raise ConfigError("tools", list(problems.values()), headline=f"{count} could not be loaded")
    return convert_all(config, specs)


async def load_specs(
    config: GatewayConfig, fetch: Fetch | None = None, names: Collection[str] | None = None
) -> tuple[dict[str, Spec], dict[str, str]]:
    """The specs of the toolsets (all, or those ``names``) that load, and a problem line for
    each that does not, both by toolset name."""
    wanted = [(i, t) for i, t in enumerate(config.tools) if names is None or t.name in names]
    loaded = await asyncio.gather(
        *(
            load_spec(
                t.spec,
                config.base_dir,
                allow_remote_refs=t.allow_remote_refs,
                fetch=fetch,
                headers={k: v.get_secret_value() for k, v in t.spec_headers.items()},
            )
            for _, t in wanted
        ),
        return_exceptions=True,
    )
    specs: dict[str, Spec] = {}
    problems: dict[str, str] = {}
    for (i, ts), result in zip(wanted, loaded, strict=True):
        if isinstance(result, SpecError):
            problems[ts.name] = _spec_problem(i, ts, result, config.base_dir)
        elif isinstance(result, BaseException):
            raise result
        else:
            specs[ts.name] = result
    return specs, problems


def _spec_problem(i: int, ts: ToolsetConfig, e: SpecError, base_dir: Path) -> str:
    """Every bad spec, named by its toolset, its key and the file or URL actually read."""
    where = ts.spec if is_url(ts.spec) else str((base_dir / ts.spec).resolve())
    inner = "" if e.source in (ts.spec, where) else f"in {e.source}: "
    return f"toolset {ts.name} (tools[{i}].spec = {where}): {inner}{e.problems[0]}"


def convert_all(config: GatewayConfig, specs: dict[str, Spec]) -> ToolSet:
    """Convert the toolsets whose spec is in ``specs`` (a missing one offers nothing)."""
    by_toolset: dict[str, list[Tool]] = {}
    renames: list[Rename] = []
    reports = []
    limit = config.limits.max_description_length
    problems = []
    for ts in config.tools:
        if (spec := specs.get(ts.name)) is None:
            continue
        conv = Converter(spec, ts, limit)
        problems += credentials.check(ts, conv.security_schemes)
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
            credentials.unsatisfied(ts, [op for op, _ in done]),
            conv.security_schemes,
        )
        reports.append(report)
        compact = ts.schema_detail == "compact"
        by_toolset[ts.name], renamed = build_tools(done, ts.prefix, limit, compact)
        renames += renamed
    if problems:
        raise ConfigError("credentials", problems, "credentials do not fit the documents")
    by_model = {}
    for m in config.models:
        if m.tools:
            by_model[m.id], renamed = model_tools(m, by_toolset)
            renames += renamed
    result = ToolSet(
        by_toolset,
        by_model,
        reports,
        specs,
        renames,
        build_selectors(config.models, by_model),
        selective=frozenset(m.id for m in config.models if m.tool_selection is not None),
    )
    for warning in result.warnings():
        log.warning("%s", warning)
    return result


def model_tools(
    model: ModelConfig, by_toolset: dict[str, list[Tool]]
) -> tuple[list[Tool], list[Rename]]:
    """The functions one model is offered, named uniquely among themselves.

    The first of its toolsets (in the model's ``tools`` order) keeps a name; a later one
    gets a stable digest suffix. ``find_tools`` is the gateway's own when the model can
    search, so a function of that name is renamed too.
    """
    sel = model.tool_selection
    taken = {FIND_TOOLS} if sel is not None and sel.search else set()
    owner = dict.fromkeys(taken, "the gateway")
    out, renames = [], []
    for toolset in model.tools:
        for tool in by_toolset.get(toolset, []):
            name = fresh_name(tool.operation, tool.name, taken)
            if name != tool.name:
                why = f"{owner[tool.name]} has that name"
                renames.append(
                    Rename(toolset, tool.operation.label, tool.name, name, why, model.id)
                )
                tool = replace(tool, name=name)
            taken.add(name)
            owner[name] = f"toolset {toolset}"
            out.append(tool)
    return out, renames


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
        tools = [t for ts, tools in toolset.by_toolset.items() if name in (None, ts) for t in tools]
    return [_item(t) for t in tools]


def _item(t: Tool) -> dict[str, Any]:
    return {
        "toolset": t.toolset,
        "operationId": t.operation.operation_id,
        "method": t.operation.method,
        "path": t.operation.path,
        "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
    }


def offered_listing(selector: Selector, offering: Offering) -> list[dict[str, Any]]:
    """``gateway tools --query``: the functions offered first, as ``listing`` shows them."""
    items = [_item(selector.tools[selector.index[name]]) for name in offering.ranked]
    if selector.find_tools is not None:
        fn = selector.find_tools["function"]
        items.append(
            {"toolset": None, "operationId": None, "method": None, "path": None, "function": fn}
        )
    return items
