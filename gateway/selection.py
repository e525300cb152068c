"""Tool selection: offer a model, per request and per round, the functions that fit.

A model with ``tool_selection`` and more functions than ``max_functions`` gets a
``Selector``, built once when the toolset loads (the BM25 index; the embeddings on first
use). Per request, ``Selector.offering`` ranks the functions against the user's messages
and returns an ``Offering``: the loop calls it each round for the tools to send, and it
answers the gateway's own ``find_tools`` calls. Nothing here does I/O except through the
``Embed`` coroutine it is given.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config import ToolSelectionConfig
from gateway.openapi.compact import plain
from gateway.openapi.ir import Tool

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("gateway.selection")

FIND_TOOLS = "find_tools"
#: the user messages a query is made of, latest first, and the weight of each
QUERY_WEIGHTS = (1.0, 0.5, 0.25)
HYBRID_WEIGHT = 0.5  # of BM25 in ``hybrid`` (the rest is the embeddings')
EMBED_BATCH = 128
DESCRIPTION_CHARS = 400  # of a description, the part indexed (the rest is mostly boilerplate)

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[a-z0-9]+")


class SelectionUnavailable(RuntimeError):
    """The embeddings could not be had for this request (BM25 is used instead)."""


class StillLoading(SelectionUnavailable):
    """The functions' embeddings are being loaded (BM25 meanwhile, without a warning)."""


# --- text -> terms -------------------------------------------------------------------------


#: how users ask for what REST operations are named by (query words -> words to add)
SYNONYMS = {
    "open": "create",
    "new": "create",
    "make": "create",
    "add": "create",
    "start": "create",
    "publish": "create",
    "register": "create",
    "write": "create update",
    "show": "list get",
    "see": "list get",
    "what": "list get",
    "which": "list get",
    "read": "get",
    "fetch": "get",
    "view": "get",
    "find": "list search",
    "close": "update",
    "edit": "update",
    "change": "update",
    "rename": "update",
    "modify": "update",
    "remove": "delete",
    "cancel": "delete",
    "me": "authenticated",
    "my": "authenticated",
    "i": "authenticated",
    "mine": "authenticated",
    "give": "add",
    "invite": "add",
    "trigger": "dispatch create",
    "rerun": "run",
    "pr": "pull request",
    "prs": "pull request",
    "repo": "repository",
}


class Terms:
    """Lower-cased, stemmed words: names split at case changes, ``_``, ``-`` and ``/``."""

    def __init__(self) -> None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        self._stem = Stemmer.Stemmer("english").stemWord
        self._stop = frozenset(STOPWORDS_EN)
        self._cache: dict[str, str] = {}

    def __call__(self, text: str) -> list[str]:
        return self.stems(_WORD.findall(_CAMEL.sub(" ", text).lower()))

    def query(self, text: str) -> list[str]:
        """A user's words and the words operations use for them (``SYNONYMS``), once each."""
        words = _WORD.findall(_CAMEL.sub(" ", text).lower())
        extra = [w for word in words for w in SYNONYMS.get(word, "").split()]
        return list(dict.fromkeys(self.stems(words + extra)))

    def stems(self, words: list[str]) -> list[str]:
        out = []
        for word in words:
            if word in self._stop:
                continue
            stem = self._cache.get(word)
            if stem is None:
                stem = self._cache[word] = self._stem(word)
            out.append(stem)
        return out


def document(tool: Tool) -> str:
    """What a function is found by: name, summary, description, path, tags, parameters."""
    op = tool.operation
    params = tool.parameters.get("properties") or {}
    body = params.get("requestBody") if isinstance(params, dict) else None
    body_props = body.get("properties") if isinstance(body, dict) else None
    parts = [
        tool.name,
        tool.name,
        tool.name,  # the name and summary say what it does: counted more
        op.summary,
        op.summary,
        op.description[:DESCRIPTION_CHARS],
        op.path.replace("{", " ").replace("}", " "),
        " ".join(op.tags),
        " ".join(params) if isinstance(params, dict) else "",
        " ".join(body_props) if isinstance(body_props, dict) else "",
    ]
    return " ".join(p for p in parts if p)


def embedding_text(tool: Tool) -> str:
    """What a function is embedded as: its name in words, summary and description's start."""
    op = tool.operation
    words = " ".join(_WORD.findall(_CAMEL.sub(" ", tool.name).lower()))
    parts = [op.summary, plain(op.description)[:DESCRIPTION_CHARS]]
    return f"{words}: " + ". ".join(p for p in parts if p)


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


# --- ranking -------------------------------------------------------------------------------


class Bm25Index:
    """BM25 (``bm25s``) over the functions' documents, built once."""

    def __init__(self, docs: list[str]) -> None:
        import bm25s

        self.terms = Terms()
        self._bm25 = bm25s.BM25()
        self._bm25.index([self.terms(d) or [""] for d in docs], show_progress=False)
        self._vocab = self._bm25.vocab_dict

    def scores(self, queries: list[str]) -> np.ndarray:
        import numpy as np

        total = np.zeros(self._bm25.scores["num_docs"], dtype=np.float32)
        for query, weight in zip(queries, QUERY_WEIGHTS, strict=False):
            words = [w for w in self.terms.query(query) if w in self._vocab]
            if words:
                total += weight * self._bm25.get_scores(words)
        return total


class EmbeddingIndex:
    """The functions' embeddings (normalised), loaded once through ``Embed``.

    A request never waits for the load: until it is done (or for ``RETRY_AFTER`` seconds
    after it failed) requests rank with BM25. Start-up (``Selector.warm``) and the CLI wait.
    """

    RETRY_AFTER = 30.0

    def __init__(self, docs: list[str]) -> None:
        self.docs = docs
        self.matrix: np.ndarray | None = None
        self._loading: asyncio.Future[None] | None = None
        self._failed_at = float("-inf")
        self._error = ""

    @property
    def loading(self) -> bool:
        return self._loading is not None and not self._loading.done()

    async def ensure(self, embed: Embed, wait: bool = True) -> np.ndarray:
        if self.matrix is not None:
            return self.matrix
        if self._loading is None or self._loading.done():
            waited = time.monotonic() - self._failed_at
            if waited < self.RETRY_AFTER:
                raise SelectionUnavailable(
                    f"the functions' embeddings failed to load {waited:.0f} s ago: {self._error}"
                )
            self._loading = asyncio.ensure_future(self._load(embed))
        if not wait:
            raise StillLoading("the functions' embeddings are still loading")
        await asyncio.shield(self._loading)
        if self.matrix is None:
            raise SelectionUnavailable(f"the functions' embeddings failed to load: {self._error}")
        return self.matrix

    async def _load(self, embed: Embed) -> None:
        try:
            rows: list[list[float]] = []
            for i in range(0, len(self.docs), EMBED_BATCH):
                rows += await embed(self.docs[i : i + EMBED_BATCH])
            self.matrix = normalised(rows, len(self.docs))
        except Exception as e:  # reported by ensure(), tried again after RETRY_AFTER
            self._failed_at = time.monotonic()
            self._error = _short(e)

    async def scores(self, queries: list[str], embed: Embed) -> np.ndarray:
        matrix = await self.ensure(embed, wait=False)
        vectors = normalised(await embed(queries), len(queries))
        import numpy as np

        query = _weights(len(queries)) @ vectors  # one weighted query vector
        # einsum, not `@`: BLAS wakes its threads for a product this size, which costs
        # milliseconds on a busy machine (p95 6 ms against 0.3 ms, 1,223 functions)
        return np.einsum("ij,j->i", matrix, query)  # type: ignore[no-any-return]


def normalised(rows: list[list[float]], expected: int) -> np.ndarray:
    import numpy as np

    try:
        matrix = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise SelectionUnavailable(f"the embeddings are not lists of numbers: {e}") from None
    if matrix.ndim != 2 or matrix.shape[0] != expected or matrix.shape[1] == 0:
        raise SelectionUnavailable(f"expected {expected} embeddings, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


def _weights(n: int) -> np.ndarray:
    import numpy as np

    return np.asarray(QUERY_WEIGHTS[:n], dtype=np.float32)


def top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` best scores, best first (ties: document order)."""
    import numpy as np

    k = min(k, len(scores))
    if k <= 0:
        return []
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:k]]


def fused(lexical: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """``hybrid``: half BM25 (scaled to its best score), half cosine similarity.

    On the bench's evaluation sets this did better than reciprocal rank fusion, which let
    a weaker embedding ranking push good BM25 matches out of the first 24.
    """
    best = float(lexical.max()) if len(lexical) else 0.0
    scaled = lexical / best if best > 0 else lexical
    return HYBRID_WEIGHT * scaled + (1 - HYBRID_WEIGHT) * dense  # type: ignore[no-any-return]


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
                _short(e),
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
                _short(e),
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


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "…"


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
