"""Ranking functions against text: BM25 terms and index, embeddings, and their fusion.

``Terms`` turns names and sentences into stemmed words; ``Bm25Index`` and
``EmbeddingIndex`` score every function of a model for a list of queries (latest first,
weighted by ``QUERY_WEIGHTS``). The libraries (``bm25s``, ``PyStemmer``, ``numpy``: the
``selection`` extra) are imported only when an index is built. The only I/O is through the
``Embed`` coroutine an ``EmbeddingIndex`` is given.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.openapi.compact import plain
from gateway.openapi.ir import Tool

if TYPE_CHECKING:
    import numpy as np

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


# --- scores ---------------------------------------------------------------------------------


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
            self._error = brief(e)

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


def brief(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "…"
