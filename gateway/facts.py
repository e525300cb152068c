"""What one request did: a small mutable record the edge puts on the request.

The edge creates it (request id, method, path, start time) and reads it once more at the end,
for the access line, the metrics and the request span. In between, whoever learns something
fills it in: the handlers (the model asked for, the route), the upstream client (the model
that served, its status, every attempt), the tool loop (rounds, calls, tokens). Nothing here
does I/O; ``obs`` is the app's observer (``gateway.observe``), reached through the record
so that the upstream client and the tool executor need no other handle.
"""

from __future__ import annotations

import re
from typing import Any

#: ``"prompt_tokens": 12`` and ``"completion_tokens": 3`` in the tail of a JSON body
_TOKENS = re.compile(rb'"(prompt|completion)_tokens"\s*:\s*(\d+)')
#: how far from the end of a reply its usage object is looked for
USAGE_TAIL = 1024


class Facts:
    """One request's facts; ``None`` where a fact is unknown or does not apply."""

    __slots__ = (
        "request_id",
        "method",
        "path",
        "endpoint",
        "start",
        "ttfb",
        "model",
        "route",
        "served",
        "status",
        "upstream_status",
        "stream",
        "prompt_tokens",
        "completion_tokens",
        "tool_rounds",
        "tool_calls",
        "error",
        "key",
        "obs",
        "span",
    )

    def __init__(
        self, request_id: str, method: str, path: str, endpoint: str, start: float, obs: Any
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        #: the handler's name: a bounded label
        self.endpoint = endpoint
        self.start = start
        #: seconds from start to the first byte of a streamed response
        self.ttfb: float | None = None
        #: the model id the client asked for (its own string) and the route it named
        self.model: str | None = None
        self.route: str | None = None
        #: the route that answered (after fallbacks) and its HTTP status
        self.served: str | None = None
        self.upstream_status: int | None = None
        self.status = 0
        self.stream = False
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.tool_rounds: int | None = None
        self.tool_calls: int | None = None
        self.error: str | None = None
        #: the client key's configured name or short hash
        self.key: str | None = None
        self.obs = obs
        #: the request's tracing span, when tracing is on
        self.span: Any = None

    def usage(self, usage: Any) -> None:
        """Take the token counts of an OpenAI ``usage`` object."""
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int):
                self.prompt_tokens = prompt
            if isinstance(completion, int):
                self.completion_tokens = completion

    def usage_from_tail(self, data: bytes) -> None:
        """Token counts from the end of a body or a stream, without parsing all of it."""
        for kind, value in _TOKENS.findall(data[-USAGE_TAIL:]):
            if kind == b"prompt":
                self.prompt_tokens = int(value)
            else:
                self.completion_tokens = int(value)
