"""Server-sent events: writing them, reading them, and merging tool-loop rounds into one stream.

No I/O here: ``SSEParser`` is fed bytes, ``ToolCallAccumulator`` and ``StreamMerger`` are
fed parsed chunks, so all of it is tested without sockets.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import GatewayError

DONE = b"data: [DONE]\n\n"


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """An error after the stream started: the openai SDKs raise ``APIError`` on it."""
    return event(error.body())


def comment(text: str) -> bytes:
    return b": " + text.encode() + b"\n\n"


class EventTooLarge(Exception):
    """One SSE event (or line) passed the parser's ``max_event`` bytes."""


class SSEParser:
    """Incremental SSE parser: ``feed(bytes)`` yields each event's data (lines joined).

    Linear in the bytes fed: only the new chunk is searched for line ends, and the parts of
    an unfinished line are joined once, when it ends. An event (its data lines, or a line
    still without its end) longer than ``max_event`` bytes raises ``EventTooLarge``.
    """

    def __init__(self, max_event: int = 32 * 1024 * 1024) -> None:
        self.max_event = max_event
        self._partial: list[bytes] = []  # the pieces of a line without its end yet
        self._partial_size = 0
        self._data: list[bytes] = []
        self._data_size = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        start = 0
        while True:
            cut = chunk.find(b"\n", start)
            if cut < 0:
                self._keep(chunk[start:])
                return
            line = chunk[start:cut]
            start = cut + 1
            if self._partial:
                line = b"".join((*self._partial, line))
                self._partial, self._partial_size = [], 0
            event = self._line(line[:-1] if line.endswith(b"\r") else line)
            if event is not None:
                yield event

    def _keep(self, rest: bytes) -> None:
        if rest:
            self._partial.append(rest)
            self._partial_size += len(rest)
            if self._partial_size + self._data_size > self.max_event:
                raise EventTooLarge(self.max_event)

    def _line(self, line: bytes) -> bytes | None:
        if not line:
            if not self._data:
                return None
            event = b"\n".join(self._data)
            self._data, self._data_size = [], 0
            return event
        if line.startswith(b"data:"):
            data = line[6:] if line[5:6] == b" " else line[5:]
            self._data.append(data)
            self._data_size += len(data) + 1
            if self._data_size > self.max_event:
                raise EventTooLarge(self.max_event)
        # comments (":"), event:, id: and retry: lines carry nothing we need
        return None

    def close(self) -> Iterator[bytes]:
        """What is left when the stream ends without a blank line."""
        if self._partial:
            yield from self.feed(b"\n")
        if self._data:
            yield b"\n".join(self._data)
            self._data, self._data_size = [], 0


def given_call_id(value: Any) -> str:
    """An upstream's tool-call id as a string ('' when it sent none usable)."""
    if isinstance(value, str):
        return value[:128]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: str = ""
    type: str = "function"


class ToolCallAccumulator:
    """Rebuilds whole tool calls from stream deltas, tolerating what real upstreams send.

    Handled: deltas without ``index``; ``index`` 0 for every call but new ids (or, without
    ids, new names); ``id`` and ``name`` repeated in every delta; a whole call in one delta;
    no ``id`` at all.
    """

    def __init__(self) -> None:
        self._calls: list[_Call] = []
        self._by_index: dict[int, int] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            if isinstance(delta, dict):
                self._add(delta)

    def _add(self, delta: dict[str, Any]) -> None:
        fn = delta.get("function")
        if not isinstance(fn, dict):
            fn = {}
        call_id = given_call_id(delta.get("id"))
        index = delta.get("index")
        pos = (
            self._by_index.get(index)
            if isinstance(index, int)
            else (len(self._calls) - 1 if self._calls else None)
        )
        current = self._calls[pos] if pos is not None else None
        name = fn.get("name")
        renamed = (
            isinstance(name, str)
            and name
            and current is not None
            and current.name
            and name != current.name
            and not (call_id and call_id == current.id)
        )
        if current is None or renamed or (call_id and current.id and call_id != current.id):
            current = _Call()
            self._calls.append(current)
            if isinstance(index, int):
                self._by_index[index] = len(self._calls) - 1
        if call_id and not current.id:
            current.id = call_id
        if isinstance(name, str) and name and not current.name:
            current.name = name  # names come whole; a repeated one changes nothing
        args = fn.get("arguments")
        if isinstance(args, str):
            current.arguments += args
        elif isinstance(args, dict):  # some servers send an object
            current.arguments += orjson.dumps(args).decode()

    def calls(self) -> list[dict[str, Any]]:
        """Whole calls in OpenAI's message form; a missing id is generated."""
        return [
            {
                "id": c.id or new_call_id(),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in self._calls
            if c.name
        ]


def add_usage(total: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Sum two usage objects (nested token details too); anything else is ignored."""
    if not usage or not isinstance(usage, dict):
        return total
    if total is None:
        return _copy_usage(usage)
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            total[key] = add_usage(
                total.get(key) if isinstance(total.get(key), dict) else None, value
            )
    return total


def _copy_usage(usage: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_usage(v) if isinstance(v, dict) else v for k, v in usage.items()}


@dataclass
class StreamMerger:
    """Rewrites the chunks of every round into one coherent stream.

    One ``id``/``created``/``model`` (the first round's), one ``role`` delta, no tool-call
    deltas (they are accumulated and decided on at the end of the round), no
    ``finish_reason`` and no usage until ``finish``.
    """

    include_usage: bool = False
    id: str | None = None
    created: int | None = None
    model: str | None = None
    role_sent: bool = False
    usage: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. system_fingerprint
    calls: ToolCallAccumulator = field(default_factory=ToolCallAccumulator)
    finish_reason: str | None = None
    _round_usage: dict[str, Any] | None = None

    def begin_round(self) -> None:
        self.calls = ToolCallAccumulator()
        self.finish_reason = None
        self._round_usage = None

    def end_round(self) -> None:
        self.usage = add_usage(self.usage, self._round_usage)

    def process(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk to forward to the client, or None when nothing in it is for the client."""
        if self.id is None:
            self.id = chunk.get("id") or "chatcmpl-" + uuid.uuid4().hex
            self.created = chunk.get("created")
            self.model = chunk.get("model")
        else:
            chunk["id"], chunk["created"], chunk["model"] = self.id, self.created, self.model
        usage = chunk.pop("usage", None)
        if usage:
            self._round_usage = usage  # the last one of a round is its total
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return None
        kept = [c for c in (self._choice(c) for c in choices if isinstance(c, dict)) if c]
        if not kept:
            return None
        chunk["choices"] = kept
        return chunk

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any] | None:
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        tool_calls = delta.pop("tool_calls", None)
        if tool_calls:
            self.calls.add(tool_calls)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        choice["finish_reason"] = None
        if "role" in delta:
            if self.role_sent:
                del delta["role"]
            else:
                self.role_sent = True
        if not delta and not choice.get("logprobs"):
            return None
        choice["delta"] = delta
        return choice

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if not self.role_sent:
            delta = {"role": "assistant", **delta}
            self.role_sent = True
        return {
            "id": self.id or "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion.chunk",
            "created": self.created or 0,
            "model": self.model or "",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def client_calls_chunk(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        deltas = [{"index": i, **c} for i, c in enumerate(calls)]
        return self.chunk({"tool_calls": deltas})

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created or 0,
            "model": self.model or "",
            "choices": [],
            "usage": self.usage,
        }
