"""The loop's logic with a scripted backend and tool runner: no sockets at all."""

from __future__ import annotations

from typing import Any

from gateway.loop import LoopSettings, ToolLoop

TOOLS = [
    {
        "type": "function",
        "function": {"name": "ours", "parameters": {"type": "object", "properties": {}}},
    }
]


class Script:
    def __init__(self, *replies: dict[str, Any]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(body)
        return self.replies.pop(0)

    async def open_stream(self, body: dict[str, Any]):  # pragma: no cover - not used here
        raise NotImplementedError


def reply(content: str | None = None, *names: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if names:
        message["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": "{}"}}
            for i, n in enumerate(names)
        ]
    return {
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if names else "stop"}
        ],
        "usage": {"total_tokens": 1},
    }


async def run(script: Script, body: dict[str, Any], max_rounds: int = 8):
    ran: list[str] = []

    async def run_call(name: str, arguments: str, call_id: str) -> str:
        ran.append(name)
        return f"result of {name}"

    loop = ToolLoop(
        {"messages": [{"role": "user", "content": "hi"}], **body},
        TOOLS,
        script,
        run_call,
        LoopSettings(max_rounds=max_rounds),
    )
    return await loop.complete(), ran, loop


async def test_rounds_until_an_answer_with_usage_summed():
    script = Script(reply(None, "ours"), reply(None, "ours", "ours"), reply("done"))
    result, ran, loop = await run(script, {})
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "done"}
    assert result["usage"] == {"total_tokens": 3}
    assert ran == ["ours", "ours", "ours"] and loop.calls_executed == 3
    assert [m["role"] for m in script.requests[2]["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
    ]


async def test_round_limit_removes_gateway_tools_and_ignores_late_calls():
    script = Script(reply(None, "ours"), reply("still wants", "ours"))
    result, ran, _ = await run(
        script, {"tool_choice": {"type": "function", "function": {"name": "ours"}}}, max_rounds=1
    )
    assert ran == ["ours"]
    assert "tools" not in script.requests[1] and "tool_choice" not in script.requests[1]
    message = result["choices"][0]["message"]
    assert "tool_calls" not in message and result["choices"][0]["finish_reason"] == "stop"


async def test_unknown_names_are_ours_so_the_model_hears_about_them():
    script = Script(reply(None, "made_up"), reply("ok"))
    _, ran, _ = await run(script, {})
    assert ran == ["made_up"]  # run_call answers with an error message for the model


async def test_a_forced_tool_choice_is_relaxed_after_the_first_round():
    """`required` or a named gateway function would force a call every round until the limit."""
    for choice in ("required", {"type": "function", "function": {"name": "ours"}}):
        script = Script(reply(None, "ours"), reply("answer"))
        result, ran, _ = await run(script, {"tool_choice": choice})
        assert ran == ["ours"] and result["choices"][0]["message"]["content"] == "answer"
        assert script.requests[0]["tool_choice"] == choice
        assert script.requests[1]["tool_choice"] == "auto"
    script = Script(reply(None, "ours"), reply("answer"))
    await run(script, {"tool_choice": "none"})  # anything else is the client's, every round
    assert [r["tool_choice"] for r in script.requests] == ["none", "none"]


async def test_round_limit_with_no_text_answers_length_with_a_message_not_null():
    script = Script(reply(None, "ours"), reply(None, "ours"))
    result, ran, loop = await run(script, {}, max_rounds=1)
    assert ran == ["ours"]
    choice = result["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "limits.max_tool_rounds" in choice["message"]["content"]
    last = script.requests[1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "user"]
    assert "tool-call limit" in last[-1]["content"]
    assert loop.messages[-1]["role"] == "tool"  # the note was for that round only


async def test_round_limit_with_an_answer_keeps_the_answer():
    script = Script(reply(None, "ours"), reply("what I have", "ours"))
    result, _, _ = await run(script, {}, max_rounds=1)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == "what I have"


async def test_a_gateway_failure_while_running_a_call_is_a_tool_message():
    """The tool boundary: whatever a call raises, the model gets a message, not the client a 500."""
    script = Script(reply(None, "ours"), reply("ok"))

    async def run_call(name: str, arguments: str) -> str:
        raise RuntimeError("a bug")

    loop = ToolLoop(
        {"messages": [{"role": "user", "content": "hi"}]}, TOOLS, script, run_call, LoopSettings()
    )
    await loop.complete()
    [tool] = [m for m in script.requests[1]["messages"] if m["role"] == "tool"]
    assert tool["content"].startswith("Error: the gateway failed while running ours")


async def test_non_string_tool_call_id_from_upstream_still_reports_the_call():
    """An upstream sending ``"id": 5`` must not lose the result of a call that ran."""
    first = reply(None, "ours")
    first["choices"][0]["message"]["tool_calls"][0]["id"] = 5
    script = Script(first, reply("done"))
    seen: list[str] = []

    async def run_call(name: str, arguments: str, call_id: str) -> str:
        seen.append(call_id)
        return "result"

    loop = ToolLoop(
        {"messages": [{"role": "user", "content": "hi"}]}, TOOLS, script, run_call, LoopSettings()
    )
    await loop.complete()
    [tool] = [m for m in script.requests[1]["messages"] if m["role"] == "tool"]
    assert seen == ["5"] and tool["tool_call_id"] == "5" and tool["content"] == "result"
