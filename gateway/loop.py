"""The tool loop: ask the model, run the gateway's calls concurrently, append, ask again.

No aiohttp here. The loop talks to a ``Backend`` (one upstream round, whole or streamed)
and a ``run_call`` coroutine (one tool call -> the text of its tool message), and writes a
stream through ``Output``; the tests script all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import stream
from gateway.errors import GatewayError, UpstreamError
from gateway.stream import StreamMerger, add_usage, given_call_id, new_call_id

log = logging.getLogger("gateway.loop")

#: (function name, arguments, call id) -> the text of the tool message
RunCall = Callable[[str, str, str], Awaitable[str]]
#: the gateway's functions to offer this round, given the conversation so far
Offer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]

#: appended to the last round's messages (that round only): the tools are gone, answer now
LIMIT_NOTE = (
    "[gateway] The tool-call limit for this request has been reached: no more tools can be "
    "called. Answer the last request now with the information you already have, and say "
    "briefly what you could not find out."
)


class Backend(Protocol):
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def open_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Connect (errors raise here, before anything is sent) and return the chunks."""
        ...


class Output(Protocol):
    async def start(self) -> None: ...

    async def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    max_rounds: int = 8
    keepalive_interval: float = 10.0
    max_calls_per_round: int = 16


class ToolLoop:
    """One client request that may take several upstream rounds."""

    def __init__(
        self,
        body: dict[str, Any],
        gateway_tools: list[dict[str, Any]] | Offer,
        backend: Backend,
        run_call: RunCall,
        settings: LoopSettings,
        request_id: str = "",
        model: str = "",
    ) -> None:
        self.body = body
        tools = body.get("tools")
        self.client_tools: list[Any] = tools if isinstance(tools, list) else []
        self.client_names = {_tool_name(t) for t in self.client_tools} - {None}
        # a client tool with the same name as a gateway function wins
        self.offer: Offer = (
            gateway_tools if callable(gateway_tools) else _fixed(gateway_tools, self.client_names)
        )
        self.backend = backend
        self.run_call = run_call
        self.settings = settings
        self.request_id = request_id
        self.model = model  # the client's model id, for error messages
        self.messages = list(body["messages"])
        self.rounds = 0  # rounds whose gateway calls were executed
        self.calls_executed = 0
        #: every gateway call started for this request, as "name (HTTP 201)"
        self.ran: list[str] = []
        #: the summed usage of all rounds, when the upstream reported it
        self.usage: dict[str, Any] | None = None
        #: the code of an error that ended a stream early
        self.error: str | None = None

    # --- shared --------------------------------------------------------------------------

    @property
    def final(self) -> bool:
        """The last round offers no gateway tools, so the model must answer."""
        return self.rounds >= self.settings.max_rounds

    def gateway_tools(self) -> list[dict[str, Any]]:
        """This round's gateway functions (a client tool of the same name wins)."""
        return [t for t in self.offer(self.messages) if _tool_name(t) not in self.client_names]

    def request(self) -> dict[str, Any]:
        body = dict(self.body)
        body["messages"] = self.messages + [_LIMIT_MESSAGE] if self.final else self.messages
        tools = self.client_tools + ([] if self.final else self.gateway_tools())
        if tools:
            body["tools"] = tools
            choice = body.get("tool_choice")
            forced_ours = isinstance(choice, dict) and _tool_name(choice) not in self.client_names
            if self.final and forced_ours:
                body.pop("tool_choice")
            elif self.rounds and (forced_ours or choice == "required"):
                # the model did use a tool as asked; forcing it again would only loop
                body["tool_choice"] = "auto"
        else:
            for key in ("tools", "tool_choice", "parallel_tool_calls"):
                body.pop(key, None)
        return body

    def split(self, calls: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict]]:
        """(gateway calls, client calls); a name the client did not send is the gateway's."""
        client = [c for c in calls if c["function"]["name"] in self.client_names]
        ours = [c for c in calls if c["function"]["name"] not in self.client_names]
        if ours and self.final:
            log.warning(
                "request %s: the model called %s after the round limit; not executed",
                self.request_id,
                ", ".join(c["function"]["name"] for c in ours),
            )
            ours = []
        return ours, client

    async def run_calls(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All calls of a round at once (up to the cap); one tool message per call, in order."""
        limit = self.settings.max_calls_per_round
        run, excess = calls[:limit], calls[limit:]
        if excess:
            log.warning(
                "request %s: the model made %d calls in one round; the %d past "
                "max_tool_calls_per_round (%d) were not executed",
                self.request_id,
                len(calls),
                len(excess),
                limit,
            )
        first = len(self.ran)
        self.ran += [f"{c['function']['name']} (started, no result yet)" for c in run]
        results = await asyncio.gather(*(self._run_one(c) for c in run))
        self.ran[first:] = [
            f"{c['function']['name']} ({_outcome(r)})" for c, r in zip(run, results, strict=True)
        ]
        self.calls_executed += len(run)
        results += [_not_run(c, limit) for c in excess]
        return [
            {"role": "tool", "tool_call_id": c["id"], "content": r}
            for c, r in zip(calls, results, strict=True)
        ]

    async def _run_one(self, call: dict[str, Any]) -> str:
        """One call; a failure inside the gateway is a tool message too (the tool boundary)."""
        name = call["function"]["name"]
        try:
            return await self.run_call(name, call["function"]["arguments"], call["id"])
        except Exception:
            log.exception("request %s: running %s failed inside the gateway", self.request_id, name)
            return (
                f"Error: the gateway failed while running {name} (an internal error, logged "
                "there); the call may not have reached the tool's server."
            )

    def after_calls(self, error: GatewayError) -> GatewayError:
        """``error``, saying which tool calls already ran, once any has (retrying reruns them).

        The response gets ``x-should-retry: false`` (the openai SDKs then do not retry it);
        the message names each call and its outcome.
        """
        if self.ran and "x-should-retry" not in error.headers:
            error.message += (
                f" The gateway had already run these tool calls for this request: "
                f"{', '.join(self.ran)}. Sending the request again would run them again."
            )
            error.headers["x-should-retry"] = "false"
        return error

    async def next_round(
        self, content: str | None, calls: list[dict[str, Any]], results: list[dict[str, Any]]
    ) -> None:
        self.messages.append({"role": "assistant", "content": content, "tool_calls": calls})
        self.messages.extend(results)
        self.rounds += 1
        if self.final:
            log.warning(
                "request %s: tool round limit (%d) reached; asking the model to answer "
                "without gateway tools",
                self.request_id,
                self.settings.max_rounds,
            )

    def limit_reached(self) -> str:
        """The client's answer when the model still wrote nothing after the last round."""
        log.warning(
            "request %s: the model gave no answer after the tool round limit (%d); "
            "answering finish_reason=length",
            self.request_id,
            self.settings.max_rounds,
        )
        return (
            f"The gateway's tool-round limit ({self.settings.max_rounds} rounds, "
            "limits.max_tool_rounds) was reached before the model gave an answer. Ask a "
            "narrower question, or raise limits.max_tool_rounds in the gateway config."
        )

    # --- non-stream ----------------------------------------------------------------------

    async def complete(self) -> dict[str, Any]:
        usage: dict[str, Any] | None = None
        while True:
            response = await self.backend.complete(self.request())
            usage = add_usage(usage, response.get("usage"))
            choice = _first_choice(response, self.model)
            message = choice.get("message") or {}
            if not isinstance(message, dict):
                raise _malformed(self.model, "its choices[0].message is not an object")
            calls = _with_ids(message.get("tool_calls"))
            ours, client = self.split(calls)
            if ours and not client:
                results = await self.run_calls(ours)
                await self.next_round(message.get("content"), ours, results)
                continue
            if ours:  # mixed: run ours first, hand the client its own calls
                await self.run_calls(ours)
            _show_only(choice, message, client)
            if self.final and not client and not _has_text(message.get("content")):
                message["content"] = self.limit_reached()
                choice["finish_reason"] = "length"
            break
        if usage is not None:
            response["usage"] = self.usage = usage
        return response

    # --- stream --------------------------------------------------------------------------

    async def stream(self, out: Output) -> None:
        options = self.body.get("stream_options")
        merger = StreamMerger(
            include_usage=isinstance(options, dict) and options.get("include_usage") is True
        )
        chunks = await self.backend.open_stream(self.request())
        await out.start()
        while True:
            merger.begin_round()
            content: list[str] = []
            try:
                async for chunk in chunks:
                    if isinstance(chunk.get("error"), dict):
                        self.error = _error_code(chunk["error"].get("code"))
                        await out.write(stream.event({"error": chunk["error"]}))
                        return
                    forward = merger.process(chunk)
                    if forward is not None:
                        content.extend(_contents(forward))
                        await out.write(stream.event(forward))
            except GatewayError as e:
                await self._fail(out, self.after_calls(e))
                return
            merger.end_round()
            ours, client = self.split(merger.calls.calls())
            if ours and not client:
                results = await self.keepalive(self.run_calls(ours), out)
                await self.next_round("".join(content) or None, ours, results)
                try:
                    chunks = await self.keepalive(self.backend.open_stream(self.request()), out)
                except GatewayError as e:
                    await self._fail(out, self.after_calls(e))
                    return
                continue
            if ours:
                await self.keepalive(self.run_calls(ours), out)
            await self._finish(out, merger, client, answered=_has_text("".join(content)))
            return

    async def _fail(self, out: Output, error: GatewayError) -> None:
        self.error = error.code or error.type
        await out.write(stream.error_event(error))

    async def _finish(
        self, out: Output, merger: StreamMerger, client: list[dict], answered: bool
    ) -> None:
        self.usage = merger.usage
        if client:
            await out.write(stream.event(merger.client_calls_chunk(client)))
        reason = "tool_calls" if client else merger.finish_reason
        if reason in (None, "tool_calls") and not client:
            reason = "stop"
        if self.final and not client and not answered:
            # text of earlier rounds already went out: the note starts a paragraph of its own
            earlier = self.messages[len(self.body["messages"]) :]
            sep = "\n\n" if any(_has_text(m.get("content")) for m in earlier) else ""
            await out.write(stream.event(merger.chunk({"content": sep + self.limit_reached()})))
            reason = "length"
        await out.write(stream.event(merger.chunk({}, reason)))
        if merger.include_usage and merger.usage is not None:
            await out.write(stream.event(merger.usage_chunk()))
        await out.write(stream.DONE)

    async def keepalive(self, awaitable: Awaitable[Any], out: Output) -> Any:
        """Await while writing an SSE comment every ``keepalive_interval`` seconds."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.settings.keepalive_interval)
                if done:
                    return task.result()
                await out.write(stream.comment("keepalive"))
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


_LIMIT_MESSAGE = {"role": "user", "content": LIMIT_NOTE}


def _has_text(content: Any) -> bool:
    """A message content with something in it (a string, or a list of content parts)."""
    if isinstance(content, str):
        return bool(content.strip())
    return bool(content)


def _fixed(tools: list[dict[str, Any]], client_names: set[str | None]) -> Offer:
    """The same functions every round (a model without tool selection)."""
    kept = [t for t in tools if _tool_name(t) not in client_names]
    return lambda messages: kept


def _not_run(call: dict[str, Any], limit: int) -> str:
    return (
        f"Error: {call['function']['name']} was not called: at most {limit} function calls "
        "are run per round (the gateway's limits.max_tool_calls_per_round). Call it again "
        "in a later round if you still need it."
    )


def _outcome(content: str) -> str:
    """A tool message's outcome in a few words: its status line, or that it failed."""
    head = content.split("\n", 1)[0]
    if head.startswith("HTTP ") and len(head) <= 12:
        return head
    return "failed" if head.startswith("Error") else "done"


def _tool_name(tool: Any) -> str | None:
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
        name = tool["function"].get("name")
        return name if isinstance(name, str) else None
    return None


def _first_choice(response: dict[str, Any], model: str) -> dict[str, Any]:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _malformed(model, "it has no choices")
    return choices[0]


def _malformed(model: str, why: str) -> UpstreamError:
    return UpstreamError(
        f"The upstream of model {model!r} sent a chat completion the gateway cannot use: {why}",
        status=502,
        code="upstream_bad_response",
    )


def _with_ids(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else []:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        args = fn.get("arguments")
        if not isinstance(args, str):
            import orjson

            args = orjson.dumps(args if args is not None else {}).decode()
        out.append(
            {
                "id": given_call_id(call.get("id")) or new_call_id(),
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return out


def _show_only(choice: dict[str, Any], message: dict[str, Any], client: list[dict]) -> None:
    if client:
        message["tool_calls"] = client
        choice["finish_reason"] = "tool_calls"
    else:
        message.pop("tool_calls", None)
        if choice.get("finish_reason") in (None, "tool_calls"):
            choice["finish_reason"] = "stop"


def _contents(chunk: dict[str, Any]) -> list[str]:
    return [
        c["delta"]["content"]
        for c in chunk["choices"]
        if isinstance(c.get("delta", {}).get("content"), str)
    ]


def _error_code(code: Any) -> str:
    """An upstream's error code, for logs and metrics: a short plain token, else generic."""
    text = str(code) if isinstance(code, (str, int)) else ""
    if 0 < len(text) <= 64 and text.replace("_", "").replace("-", "").isalnum():
        return text
    return "upstream_error"
