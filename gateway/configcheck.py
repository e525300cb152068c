"""Problems pydantic cannot see: duplicates and references between entries, tool selection."""

from __future__ import annotations

import importlib.util
from typing import Any

from gateway.config import GatewayConfig


def cross_check(config: GatewayConfig) -> list[str]:
    """Problems pydantic cannot see: duplicates and references between entries."""
    problems = _references(
        [m.id for m in config.models],
        [t.name for t in config.tools],
        [(m.fallbacks, m.tools) for m in config.models],
    )
    if config.metrics.port is not None and config.metrics.port == config.server.port:
        problems.append(
            f"metrics.port: {config.metrics.port} is server.port too; choose another port, "
            "or leave metrics.port out to serve /metrics on the gateway's own port"
        )
    return problems


def selection_problems(config: GatewayConfig) -> list[str]:
    """``tool_selection``: a known embedding model where one is needed, bm25s installed."""
    problems = []
    ids = [m.id for m in config.models]
    for i, m in enumerate(config.models):
        sel = m.tool_selection
        if sel is None:
            continue
        key = f"models[{i}].tool_selection"
        if sel.method != "bm25" and sel.embedding_model is None:
            problems.append(f"{key}.embedding_model: required for method {sel.method!r}")
        elif sel.embedding_model is not None and sel.embedding_model not in ids:
            problems.append(
                f"{key}.embedding_model: unknown model id {sel.embedding_model!r} "
                f"(configured: {', '.join(ids)})"
            )
        if importlib.util.find_spec("bm25s") is None:
            problems.append(
                f"{key}: needs the selection extra, which is not installed: "
                "pip install 'gateway[selection]'"
            )
    return problems


def raw_cross_check(data: dict[str, Any]) -> list[str]:
    """The same checks on the raw entries, so they are reported beside pydantic's errors."""

    def entries(key: str) -> list[Any]:
        value = data.get(key)
        return value if isinstance(value, list) else []

    def field(entry: Any, key: str) -> Any:
        return entry.get(key) if isinstance(entry, dict) else None

    def names(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    models = entries("models")
    return _references(
        [field(m, "id") for m in models],
        [field(t, "name") for t in entries("tools")],
        [(names(field(m, "fallbacks")), names(field(m, "tools"))) for m in models],
    )


def _references(
    ids: list[Any], toolsets: list[Any], refs: list[tuple[list[Any], list[Any]]]
) -> list[str]:
    problems = _duplicates("models", "id", ids) + _duplicates("tools", "name", toolsets)
    known_ids = ", ".join(dict.fromkeys(i for i in ids if isinstance(i, str)))
    known_sets = ", ".join(dict.fromkeys(t for t in toolsets if isinstance(t, str))) or "none"
    for i, (fallbacks, tools) in enumerate(refs):
        for j, fb in enumerate(fallbacks):
            if fb == ids[i]:
                problems.append(f"models[{i}].fallbacks[{j}]: a model cannot fall back to itself")
            elif isinstance(fb, str) and fb not in ids:
                problems.append(
                    f"models[{i}].fallbacks[{j}]: unknown model id {fb!r} (configured: {known_ids})"
                )
        for j, ts in enumerate(tools):
            if isinstance(ts, str) and ts not in toolsets:
                problems.append(
                    f"models[{i}].tools[{j}]: unknown toolset {ts!r} (configured: {known_sets})"
                )
    return problems


def _duplicates(section: str, key: str, values: list[Any]) -> list[str]:
    first: dict[str, int] = {}
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            continue
        if v in first:
            out.append(f"{section}[{i}].{key}: duplicate {v!r} (first at {section}[{first[v]}])")
        else:
            first[v] = i
    return out
