"""Tool selection: offer a model, per request and per round, the functions that fit.

A model with ``tool_selection`` and more functions than ``max_functions`` gets a
``Selector``, built once when the toolset loads (its BM25 index; its functions' embeddings
at start-up). Per request, ``Selector.offering`` ranks the functions (``gateway.ranking``)
against the user's messages and returns an ``Offering``: the loop calls it each round for
the tools to send, and it answers the gateway's own ``find_tools`` calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.config import ToolSelectionConfig
from gateway.openapi.compact import plain
from gateway.openapi.ir import Tool
from gateway.ranking import (
    QUERY_WEIGHTS,
    Bm25Index,
    Embed,
    EmbeddingIndex,
    StillLoading,
    brief,
    document,
    embedding_text,
    fused,
    top,
)

log = logging.getLogger("gateway.selection")

FIND_TOOLS = "find_tools"


def one_line(tool: Tool, limit: int = 160) -> str:
    """A function's first line of summary or description, for ``find_tools`` answers."""
    op = tool.operation
    text = plain(op.summary or op.description or tool.description).split("\n", 1)[0]
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def user_queries(messages: Sequence[Any]) -> list[str]:
    """The text of the latest user messages, latest first (as many as QUERY_WEIGHTS)."""
    out: list[str] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        text = _text(message.get("content"))
        if text:
            out.append(text)
            if len(out) == len(QUERY_WEIGHTS):
                break
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def called_names(messages: Sequence[Any]) -> list[str]:
    """Every function the assistant called in the conversation, first call first."""
    out: dict[str, None] = {}
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                out[fn["name"]] = None
    return list(out)


# --- per model and per request -------------------------------------------------------------


def find_tools_function(max_functions: int) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": FIND_TOOLS,
            "description": (
                "Search all the functions available to you by what you want to do, when none "
                f"of the functions offered fits. Returns up to {max_functions} matching "
                "functions (name and what each does); they are offered to you in the next step."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "what you want to do, in words"}
                },
                "required": ["query"],
            },
        },
    }


class Selector:
    """One model's functions, ranked per request; built once per loaded config."""

    def __init__(self, model: str, tools: list[Tool], config: ToolSelectionConfig) -> None:
        self.model = model
        self.tools = tools
        self.config = config
        self.openai = [t.openai() for t in tools]
        self.index = {t.name: i for i, t in enumerate(tools)}
        docs = [document(t) for t in tools]
        self.bm25 = Bm25Index(docs)
        self.embeddings = (
            EmbeddingIndex([embedding_text(t) for t in tools]) if config.method != "bm25" else None
        )
        self.find_tools = find_tools_function(config.max_functions) if config.search else None

    async def warm(self, embed: Embed) -> None:
        """Embed every function now (at start-up) rather than on the first request."""
        if self.embeddings is None:
            return
        try:
            await self.embeddings.ensure(embed)
        except Exception as e:  # the first requests rank with BM25 and try again later
            log.warning(
                "model %s: the functions' embeddings could not be loaded at start-up (%s); "
                "ranking with bm25 until they are",
                self.model,
                brief(e),
            )

    def rank_bm25(self, queries: list[str], k: int) -> list[int]:
        return top(self.bm25.scores(queries), k)

    async def rank(self, queries: list[str], k: int, embed: Embed | None = None) -> list[int]:
        """The best ``k`` functions for these queries with the configured method.

        A failing embedding call falls back to BM25 for this request, with a log line.
        """
        if not queries:
            return list(range(min(k, len(self.tools))))
        if self.embeddings is None or embed is None:
            return self.rank_bm25(queries, k)
        try:
            dense = await self.embeddings.scores(queries, embed)
        except StillLoading:
            log.debug("model %s: embeddings still loading; ranking with bm25", self.model)
            return self.rank_bm25(queries, k)
        except Exception as e:  # whatever went wrong with the embeddings, BM25 still works
            log.warning(
                "model %s: embeddings unavailable (%s); ranking functions with bm25 for this "
                "request",
                self.model,
                brief(e),
            )
            return self.rank_bm25(queries, k)
        if self.config.method == "embeddings":
            return top(dense, k)
        return top(fused(self.bm25.scores(queries), dense), k)

    async def offering(self, messages: Sequence[Any], embed: Embed | None = None) -> Offering:
        ranked = await self.rank(user_queries(messages), self.config.max_functions, embed)
        return Offering(self, [self.tools[i].name for i in ranked])

    def search(self, query: str) -> list[Tool]:
        """``find_tools``: the functions that best match the model's own words (BM25)."""
        scores = self.bm25.scores([query])
        return [self.tools[i] for i in top(scores, self.config.max_functions) if scores[i] > 0]


@dataclass
class Offering:
    """What one request offers each round: called, then found, then ranked functions."""

    selector: Selector
    ranked: list[str]
    found: list[str] = field(default_factory=list)

    def __call__(self, messages: Sequence[Any]) -> list[dict[str, Any]]:
        sel = self.selector
        tools = [sel.openai[sel.index[n]] for n in self.names(messages)]
        if sel.find_tools is not None:
            tools.append(sel.find_tools)
        return tools

    def names(self, messages: Sequence[Any] = ()) -> list[str]:
        """The functions offered: called ones, then found ones, then the best ranked."""
        sel = self.selector
        pinned = [n for n in called_names(messages) if n in sel.index]
        names = list(dict.fromkeys([*pinned, *self.found, *self.ranked]))
        return names[: max(sel.config.max_functions, len(pinned) + len(self.found))]

    def find(self, arguments: str) -> str:
        """Answer a ``find_tools`` call; what is found is offered from the next round on."""
        query = _query_argument(arguments)
        if query is None:
            return 'Error: find_tools needs {"query": "<what you want to do>"}.'
        found = self.selector.search(query)
        if not found:
            return f"No function matches {query!r}. Try other words."
        latest = dict.fromkeys([*(t.name for t in found), *self.found])
        self.found = list(latest)[: self.selector.config.max_functions]
        lines = [f"- {t.name}: {one_line(t)}" for t in found]
        return "Functions found (you can call them now):\n" + "\n".join(lines)


def _query_argument(arguments: str) -> str | None:
    try:
        args = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return None
    query = args.get("query") if isinstance(args, dict) else None
    return query.strip() if isinstance(query, str) and query.strip() else None


def build_selectors(models: Sequence[Any], by_model: dict[str, list[Tool]]) -> dict[str, Selector]:
    """A ``Selector`` for each model with ``tool_selection`` and more functions than it offers."""
    out = {}
    for m in models:
        sel = m.tool_selection
        tools = by_model.get(m.id, [])
        if sel is not None and len(tools) > sel.max_functions:
            out[m.id] = Selector(m.id, tools, sel)
    return out
