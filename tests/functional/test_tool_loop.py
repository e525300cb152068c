"""The tool loop end to end: the openai SDK -> gateway -> scripted upstream + real tool API."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from conftest import Reply, chunk, completion, model, start_app, wait_for
from openai_schema import assert_valid
from toolapi import SPEC, TOKEN, ToolAPI

USER = [{"role": "user", "content": "What's the weather in Paris?"}]
CLIENT_TOOL = {
    "type": "function",
    "function": {
        "name": "client_lookup",
        "description": "the client's own tool",
        "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
    },
}


# --- scripted upstream replies --------------------------------------------------------------


def _usage(n: int = 1) -> dict[str, int]:
    return {"prompt_tokens": 10 * n, "completion_tokens": n, "total_tokens": 11 * n}


def _wants_usage(rec) -> bool:
    return bool((rec.body.get("stream_options") or {}).get("include_usage"))


def calls(*specs: tuple[str, Any], style: str = "normal", content: str | None = None):
    """The model calls functions: specs are (name, arguments as dict or raw string)."""
    items = [
        (name, args if isinstance(args, str) else json.dumps(args), f"call_{i}")
        for i, (name, args) in enumerate(specs)
    ]

    def reply(rec) -> Reply:
        if not rec.body.get("stream"):
            msg = {
                "role": "assistant",
                "content": content,
                "tool_calls": [
                    {"id": cid, "type": "function", "function": {"name": n, "arguments": a}}
                    for n, a, cid in items
                ],
            }
            return Reply(
                json=completion(
                    choices=[{"index": 0, "message": msg, "finish_reason": "tool_calls"}],
                    usage=_usage(),
                )
            )
        chunks: list[Any] = [chunk({"role": "assistant", "content": None})]
        if content:
            chunks.append(chunk({"content": content}))
        chunks += _call_chunks(items, style)
        finish = "stop" if style == "stop_with_calls" else "tool_calls"
        chunks.append(chunk({}, finish))
        if _wants_usage(rec):
            chunks.append({**chunk({}), "choices": [], "usage": _usage()})
        chunks.append(b"data: [DONE]\n\n")
        return Reply(chunks=chunks)

    return reply


def _call_chunks(items, style: str) -> list[dict]:
    out = []
    for i, (name, args, cid) in enumerate(items):
        half = len(args) // 2
        parts = [args[:half], args[half:]]
        if style == "whole":
            out.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": cid,
                                "type": "function",
                                "function": {"name": name, "arguments": args},
                            }
                        ]
                    }
                )
            )
            continue
        first: dict[str, Any] = {
            "index": i,
            "id": cid,
            "type": "function",
            "function": {"name": name, "arguments": parts[0]},
        }
        rest: dict[str, Any] = {"index": i, "function": {"arguments": parts[1]}}
        if style == "no_index":
            first.pop("index"), rest.pop("index")
        elif style == "index_zero":
            first["index"] = rest["index"] = 0
        elif style == "repeated":
            rest.update({"id": cid, "type": "function"})
            rest["function"]["name"] = name
        elif style == "no_id":
            first.pop("id")
        out += [chunk({"tool_calls": [first]}), chunk({"tool_calls": [rest]})]
    return out


def answer(text: str = "It is sunny in Paris.", parts: int = 3):
    def reply(rec) -> Reply:
        if not rec.body.get("stream"):
            return Reply(json=completion(text, usage=_usage(2)))
        size = max(1, len(text) // parts)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        chunks: list[Any] = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": p}) for p in pieces]
        chunks.append(chunk({}, "stop"))
        if _wants_usage(rec):
            chunks.append({**chunk({}), "choices": [], "usage": _usage(2)})
        chunks.append(b"data: [DONE]\n\n")
        return Reply(chunks=chunks)

    return reply


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def tool_api(tmp_path):
    api = ToolAPI()
    runner, api.url = await start_app(api.app)
    (tmp_path / "api.json").write_text(json.dumps(SPEC))
    yield api
    await runner.cleanup()


@pytest.fixture
def setup(fake_upstream, make_gateway, tool_api, oai):
    async def make(toolset: dict | None = None, limits: dict | None = None, **model_kw):
        up = await fake_upstream()
        ts = {
            "name": "api",
            "spec": "api.json",
            "base_url": tool_api.url,
            "auth": {"type": "bearer", "token": TOKEN},
            **(toolset or {}),
        }
        raw = {"tools": [ts], "models": [model("m", up, tools=["api"], **model_kw)]}
        if limits:
            raw["limits"] = limits
        gw = await make_gateway(raw)
        return up, gw, oai(gw)

    return make


async def collect(stream) -> tuple[str, list]:
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def tool_messages(rec) -> list[dict]:
    return [m for m in rec.body["messages"] if m.get("role") == "tool"]


async def raw_stream(gw, body: dict) -> tuple[bytes, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.v1 + "/chat/completions", json={**body, "stream": True}) as r,
    ):
        return await r.read(), r.headers.copy()


def events(raw: bytes) -> list[dict]:
    out = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: {"):
            out.append(orjson.loads(block[6:]))
    return out


# --- the loop -------------------------------------------------------------------------------


async def test_single_call_non_stream(setup, tool_api):
    up, gw, client = await setup()
    up.push(calls(("getWeather", {"location": "Paris"})), answer())
    res = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert res.headers["x-gateway-tool-calls"] == "1"
    done = res.parse()
    assert done.choices[0].message.content == "It is sunny in Paris."
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens == 30 and done.usage.total_tokens == 33  # summed
    first, second = up.received
    assert [t["function"]["name"] for t in first.body["tools"]][:2] == ["getWeather", "echoGet"]
    assert tool_api.calls == ["GET /weather?location=Paris"]
    [msg] = tool_messages(second)
    assert msg["tool_call_id"] == "call_0"
    assert msg["content"] == 'HTTP 200\n{"location":"Paris","temp_c":21,"sky":"clear"}'
    assistant = second.body["messages"][1]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == "call_0"
    assert TOKEN not in first.raw.decode() + second.raw.decode()
    assert_valid("CreateChatCompletionResponse", json.loads(res.http_response.text))


async def test_single_call_stream_is_one_coherent_stream(setup, tool_api):
    up, gw, client = await setup()
    up.push(calls(("getWeather", {"location": "Paris"})), answer())
    raw, headers = await raw_stream(
        gw, {"model": "m", "messages": USER, "stream_options": {"include_usage": True}}
    )
    assert headers["Content-Type"].startswith("text/event-stream")
    assert len(headers["x-request-id"]) == 32  # a prepared stream carries it too
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b"\nid:" not in raw and b"event:" not in raw
    chunks = events(raw)
    for c in chunks:
        assert_valid("CreateChatCompletionStreamResponse", c)
    assert {c["id"] for c in chunks} == {"chatcmpl-123"}
    assert len({(c["created"], c["model"]) for c in chunks}) == 1
    deltas = [ch["delta"] for c in chunks for ch in c["choices"]]
    assert sum("role" in d for d in deltas) == 1
    assert not any("tool_calls" in d for d in deltas)
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["stop"]
    assert "".join(d.get("content") or "" for d in deltas) == "It is sunny in Paris."
    usage = [c for c in chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0]["choices"] == []
    assert usage[0]["usage"]["total_tokens"] == 33
    # round two asked for usage too: client params go on every round
    assert up.received[1].body["stream_options"] == {"include_usage": True}


async def test_stream_and_non_stream_agree(setup):
    up, gw, client = await setup()
    up.push(
        calls(("getWeather", {"location": "Paris"})),
        answer(),
        calls(("getWeather", {"location": "Paris"})),
        answer(),
    )
    whole = await client.chat.completions.create(model="m", messages=USER)
    text, chunks = await collect(
        await client.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == [whole.choices[0].finish_reason]
    assert (
        tool_messages(up.received[1])[0]["content"] == tool_messages(up.received[3])[0]["content"]
    )


async def test_first_round_content_is_streamed_before_tools_run(setup, tool_api):
    up, gw, client = await setup(limits={"keepalive_interval": 5})
    up.push(calls(("slow", {"seconds": 0.8}), content="Checking..."), answer("Done."))
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    first_text_at, text = None, ""
    async for c in stream:
        if c.choices and c.choices[0].delta.content:
            first_text_at = first_text_at or loop.time() - started
            text += c.choices[0].delta.content
    assert text == "Checking...Done."
    assert first_text_at < 0.6  # not held back until the tool finished


async def test_parallel_calls_run_concurrently_and_answer_in_order(setup, tool_api):
    up, gw, client = await setup()
    up.push(
        calls(
            ("slow", {"seconds": 0.6}),
            ("getWeather", {"location": "Oslo"}),
            ("slow", {"seconds": 0.6}),
        ),
        answer(),
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    res = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert loop.time() - started < 1.1
    assert res.headers["x-gateway-tool-calls"] == "3"
    msgs = tool_messages(up.received[1])
    assert [m["tool_call_id"] for m in msgs] == ["call_0", "call_1", "call_2"]
    assert "Oslo" in msgs[1]["content"] and "done" in msgs[0]["content"]


async def test_several_rounds(setup, tool_api):
    up, gw, client = await setup()
    up.push(
        calls(("getWeather", {"location": "A"})),
        calls(("getWeather", {"location": "B"})),
        calls(("getText", {})),
        answer("three rounds"),
    )
    for stream in (False, True):
        if stream:
            up.push(
                calls(("getWeather", {"location": "A"})),
                calls(("getWeather", {"location": "B"})),
                calls(("getText", {})),
                answer("three rounds"),
            )
            text, _ = await collect(
                await client.chat.completions.create(model="m", messages=USER, stream=True)
            )
        else:
            text = (
                (await client.chat.completions.create(model="m", messages=USER))
                .choices[0]
                .message.content
            )
        assert text == "three rounds"
    last = up.received[3]
    assert [m["role"] for m in last.body["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    assert len(tool_api.calls) == 6


@pytest.mark.parametrize("stream", [False, True])
async def test_round_limit_ends_with_a_round_without_gateway_tools(setup, caplog, stream):
    up, gw, client = await setup(limits={"max_tool_rounds": 2})
    looping = calls(("getWeather", {"location": "X"}))
    up.push(looping, looping, answer("forced answer"))
    caplog.set_level(logging.WARNING, "gateway.loop")
    kw = {"tools": [CLIENT_TOOL], "tool_choice": "auto"}
    if stream:
        text, _ = await collect(
            await client.chat.completions.create(model="m", messages=USER, stream=True, **kw)
        )
    else:
        text = (
            (await client.chat.completions.create(model="m", messages=USER, **kw))
            .choices[0]
            .message.content
        )
    assert text == "forced answer"  # an answer after the limit is the answer, as it is
    assert len(up.received) == 3
    assert [t["function"]["name"] for t in up.received[2].body["tools"]] == ["client_lookup"]
    assert "round limit (2) reached" in caplog.text


@pytest.mark.parametrize("stream", [False, True])
async def test_round_limit_is_never_a_silent_empty_answer(setup, caplog, stream):
    """A model still calling tools after the limit: finish_reason length and a message saying so."""
    up, gw, client = await setup(limits={"max_tool_rounds": 1})
    looping = calls(("getWeather", {"location": "X"}))
    earlier = calls(("getWeather", {"location": "X"}), content="Looking.")
    up.push(earlier, looping)  # the last round calls again instead of answering
    caplog.set_level(logging.WARNING, "gateway.loop")
    if stream:
        raw, _ = await raw_stream(gw, {"model": "m", "messages": USER})
        chunks = events(raw)
        for c in chunks:
            assert_valid("CreateChatCompletionStreamResponse", c)
        deltas = [ch["delta"] for c in chunks for ch in c["choices"]]
        text = "".join(d.get("content") or "" for d in deltas)
        finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"]]
        assert [f for f in finishes if f] == ["length"]
        assert sum("role" in d for d in deltas) == 1 and raw.endswith(b"data: [DONE]\n\n")
        assert text.startswith("Looking.\n\nThe gateway's tool-round limit")
    else:
        done = await client.chat.completions.create(model="m", messages=USER)
        assert done.choices[0].finish_reason == "length"
        assert done.choices[0].message.tool_calls is None
        text = done.choices[0].message.content
        assert text.startswith("The gateway's tool-round limit")  # the last round's message only
    assert "tool-round limit (1 rounds, limits.max_tool_rounds) was reached" in text
    assert "no answer after the tool round limit (1)" in caplog.text
    # the last round told the model the tools are exhausted, that round only
    last = up.received[1].body["messages"]
    assert last[-1]["role"] == "user" and "tool-call limit" in last[-1]["content"]
    first = up.received[0].body["messages"]
    assert not any("tool-call limit" in str(m.get("content")) for m in first)


@pytest.mark.parametrize("stream", [False, True])
async def test_n_above_one_with_gateway_tools_is_a_400_not_one_silent_choice(setup, stream):
    up, gw, client = await setup()
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="m", messages=USER, n=3, stream=stream)
    err = e.value.body
    assert err["param"] == "n" and "'n' is 3" in err["message"] and "n=1" in err["message"]
    assert_valid("ErrorResponse", e.value.response.json())
    assert up.received == []  # nothing was sent upstream
    up.push(answer("one"))
    done = await client.chat.completions.create(model="m", messages=USER, n=1)
    assert done.choices[0].message.content == "one"


async def test_round_limit_without_client_tools_drops_tool_keys(setup):
    up, gw, client = await setup(limits={"max_tool_rounds": 1})
    up.push(calls(("getWeather", {"location": "X"})), answer("ok"))
    await client.chat.completions.create(model="m", messages=USER, parallel_tool_calls=True)
    final = up.received[1].body
    assert "tools" not in final and "parallel_tool_calls" not in final


@pytest.mark.parametrize("stream", [False, True])
async def test_mixed_client_and_gateway_calls(setup, tool_api, stream):
    up, gw, client = await setup()
    up.push(calls(("getWeather", {"location": "Rome"}), ("client_lookup", {"key": "k"})))
    kw = {"tools": [CLIENT_TOOL], "tool_choice": "auto", "parallel_tool_calls": True}
    if stream:
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="m", messages=USER, stream=True, **kw
            )
        ]
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        shown = [tc for d in deltas for tc in (d.tool_calls or [])]
        assert [(t.index, t.function.name, t.function.arguments) for t in shown] == [
            (0, "client_lookup", '{"key": "k"}')
        ]
        assert [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ] == ["tool_calls"]
    else:
        res = await client.chat.completions.create(model="m", messages=USER, **kw)
        choice = res.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert [t.function.name for t in choice.message.tool_calls] == ["client_lookup"]
    assert tool_api.calls == ["GET /weather?location=Rome"]  # ours ran first, unseen
    sent = up.received[0].body
    assert [t["function"]["name"] for t in sent["tools"]][0] == "client_lookup"
    assert sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True
    assert len(up.received) == 1


async def test_client_tool_with_a_gateway_name_wins(setup, tool_api):
    up, gw, client = await setup()
    mine = {
        "type": "function",
        "function": {"name": "getWeather", "parameters": {"type": "object", "properties": {}}},
    }
    up.push(calls(("getWeather", {"location": "X"})))
    res = await client.chat.completions.create(model="m", messages=USER, tools=[mine])
    assert res.choices[0].message.tool_calls[0].function.name == "getWeather"
    assert tool_api.calls == []
    names = [t["function"]["name"] for t in up.received[0].body["tools"]]
    assert names.count("getWeather") == 1 and names[0] == "getWeather"


async def test_model_without_tools_stays_on_the_fast_path(setup, fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("plain", up)]})
    await oai(gw).chat.completions.create(model="plain", messages=USER)
    assert "tools" not in up.received[0].body


# --- executing calls: serialisation ---------------------------------------------------------


async def run_one(setup, name: str, args: Any, **setup_kw) -> str:
    up, gw, client = await setup(**setup_kw)
    up.push(calls((name, args)), answer())
    await client.chat.completions.create(model="m", messages=USER)
    return tool_messages(up.received[1])[0]["content"]


def echoed(content: str) -> dict:
    status, _, body = content.partition("\n")
    assert status == "HTTP 200", content
    return json.loads(body)


async def test_parameters_go_where_the_spec_says(setup):
    content = await run_one(
        setup,
        "echoGet",
        {
            "id": "a b&c",
            "tags": ["x", "y"],
            "q": "",
            "n": 0,
            "flag": False,
            "ids": [1, 2],
            "multi": ["m1", "m2"],
            "space": ["s1", "s2"],
            "pipe": ["p1", "p2"],
            "filter": {"a": "v", "b": 2},
            "X-Trace": "trace-1",
            "session": "s=1",
        },
    )
    got = echoed(content)
    assert got["path"] == "/echo/a%20b%26c/x,y"
    assert got["query"] == (
        "q=&n=0&flag=false&ids=1%2C2&multi=m1&multi=m2&space=s1%20s2"
        "&pipe=p1%7Cp2&filter%5Ba%5D=v&filter%5Bb%5D=2"
    )
    assert got["x_trace"] == "trace-1"
    assert got["cookie"] == "session=s%3D1"


async def test_json_body(setup):
    got = echoed(
        await run_one(
            setup,
            "createItem",
            {"requestBody": {"name": "n", "tags": ["t"], "meta": {"color": "red"}}},
        )
    )
    assert got["content_type"] == "application/json"
    assert json.loads(got["body"]) == {"name": "n", "tags": ["t"], "meta": {"color": "red"}}


async def test_form_body_with_nested_keys(setup):
    got = echoed(
        await run_one(
            setup,
            "postForm",
            {"requestBody": {"name": "a b", "count": 0, "opts": {"x": "1"}, "list": ["p", "q"]}},
        )
    )
    assert got["content_type"] == "application/x-www-form-urlencoded"
    assert got["body"] == "name=a%20b&count=0&opts%5Bx%5D=1&list=p&list=q"


async def test_multipart_text_fields(setup):
    got = echoed(await run_one(setup, "postMultipart", {"requestBody": {"title": "hello"}}))
    assert got["content_type"] == "multipart/form-data"
    assert 'name="title"' in got["body"] and "hello" in got["body"]


async def test_path_values_that_would_change_the_path_are_rejected(setup, tool_api):
    for bad in ("..", "a/b", "."):
        content = await run_one(setup, "echoGet", {"id": bad, "tags": ["t"]})
        assert content.startswith("Error: the path parameter id may not be")
    assert tool_api.calls == []


# --- executing calls: auth, errors, limits --------------------------------------------------


async def test_bearer_auth_is_applied_and_never_shown(setup):
    assert await run_one(setup, "secure", {}) == 'HTTP 200\n{"secret":"granted"}'
    content = await run_one(setup, "secure", {}, toolset={"auth": None})
    assert content.startswith("HTTP 401")


@pytest.mark.parametrize(
    "args, fragment",
    [
        ("{not json", "are not valid JSON"),
        ("[1]", "must be a JSON object"),
        ({}, "- (arguments): 'location' is a required property"),
        ({"location": 5}, "- location: 5 is not of type 'string'"),
    ],
)
async def test_bad_arguments_become_a_message_for_the_model(setup, tool_api, args, fragment):
    content = await run_one(setup, "getWeather", args)
    assert content.startswith("Error: the arguments of getWeather")
    assert fragment in content
    assert tool_api.calls == []


async def test_unknown_function_is_a_message_for_the_model(setup):
    content = await run_one(setup, "noSuchTool", {})
    assert content.startswith("Error: there is no function named 'noSuchTool'")
    assert "getWeather" in content


async def test_error_status_text_binary_and_big_responses(setup):
    assert await run_one(setup, "fail", {}) == 'HTTP 500\n{"error":"boom","hint":"try again"}'
    assert await run_one(setup, "getText", {}) == "HTTP 200\nplain text answer"
    binary = await run_one(setup, "binary", {})
    assert binary == "HTTP 200\n[binary response: image/png, 1032 bytes]"
    big = await run_one(setup, "big", {}, limits={"max_tool_response_bytes": 1000})
    head, _, rest = big.partition("\n")
    assert head == "HTTP 200"
    assert rest.startswith('{"data": "xxx')  # cut JSON is shown as it came
    assert "…[truncated: the response was 100012 bytes; only the first 1000 bytes" in rest
    assert len(rest) < 1200


async def test_timeout_and_connection_failure(setup, unused_tcp_port):
    slow = await run_one(setup, "slow", {"seconds": 3}, toolset={"timeout": 0.3})
    assert slow.startswith("Error: GET http://127.0.0.1:") and "0.3 s" in slow
    down = await run_one(
        setup, "getText", {}, toolset={"base_url": f"http://127.0.0.1:{unused_tcp_port}"}
    )
    assert down.startswith(f"Error: could not reach 127.0.0.1:{unused_tcp_port}")


async def test_redirects_stay_on_the_same_host(setup, tool_api):
    assert await run_one(setup, "redirectSame", {}) == "HTTP 200\nplain text answer"
    away = await run_one(setup, "redirectAway", {})
    assert away.startswith("HTTP 302\nRedirect to another host")
    assert not any("steal" in c for c in tool_api.calls)


async def test_query_auth_is_sent_but_not_logged(setup, tool_api, caplog):
    caplog.set_level(logging.INFO, "gateway.toolexec")
    await run_one(
        setup,
        "getWeather",
        {"location": "Rome"},
        toolset={"auth": {"type": "query", "name": "key", "value": "qsecret"}},
    )
    assert tool_api.calls == ["GET /weather?location=Rome&key=qsecret"]
    [line] = [r.getMessage() for r in caplog.records if "tool call" in r.getMessage()]
    assert "qsecret" not in line
    assert "function=getWeather method=GET" in line and "key=[redacted]" in line
    assert "status=200" in line and "ms=" in line and "bytes=" in line


@pytest.mark.parametrize(
    "auth, field",
    [
        ({"type": "cookie", "name": "sid", "value": "cookie-secret-1"}, "cookie"),
        ({"type": "query", "name": "key", "value": "query-secret-1"}, "query"),
    ],
)
async def test_credentials_echoed_by_a_tool_server_are_redacted(setup, auth, field):
    """A tool server that echoes the request must not hand the credential to the model."""
    args = {"id": "7", "tags": ["a"]}
    content = await run_one(setup, "echoGet", args, toolset={"auth": auth})
    echoed_value = echoed(content)[field]
    assert "[redacted]" in echoed_value and auth["value"] not in content


# --- upstream quirks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "style", ["normal", "no_index", "index_zero", "repeated", "whole", "no_id", "stop_with_calls"]
)
async def test_stream_tool_call_quirks(setup, tool_api, style):
    up, gw, client = await setup()
    up.push(
        calls(
            ("getWeather", {"location": "Lima"}), ("getWeather", {"location": "Quito"}), style=style
        ),
        answer("ok"),
    )
    text, _ = await collect(
        await client.chat.completions.create(model="m", messages=USER, stream=True)
    )
    assert text == "ok"
    assert sorted(tool_api.calls) == ["GET /weather?location=Lima", "GET /weather?location=Quito"]
    msgs = tool_messages(up.received[1])
    ids = [m["tool_call_id"] for m in msgs]
    assert len(set(ids)) == 2 and all(ids)
    assistant_ids = [c["id"] for c in up.received[1].body["messages"][1]["tool_calls"]]
    assert assistant_ids == ids


async def test_non_stream_quirks_missing_id_and_stop(setup, tool_api):
    up, gw, client = await setup()
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "getWeather", "arguments": {"location": "Bern"}},
            }
        ],
    }
    up.push(
        Reply(json=completion(choices=[{"index": 0, "message": msg, "finish_reason": "stop"}])),
        answer("ok"),
    )
    res = await client.chat.completions.create(model="m", messages=USER)
    assert res.choices[0].message.content == "ok"
    assert tool_api.calls == ["GET /weather?location=Bern"]
    assert tool_messages(up.received[1])[0]["tool_call_id"].startswith("call_")


# --- streams: keepalives, errors, disconnects -----------------------------------------------


async def test_keepalive_comments_while_tools_run(setup, tool_api):
    up, gw, client = await setup(limits={"keepalive_interval": 0.2})
    up.push(calls(("slow", {"seconds": 0.9})), answer("after a while"))
    raw, _ = await raw_stream(gw, {"model": "m", "messages": USER})
    assert raw.count(b": keepalive\n\n") >= 3
    up.push(calls(("slow", {"seconds": 0.9})), answer("after a while"))
    text, _ = await collect(
        await client.chat.completions.create(model="m", messages=USER, stream=True)
    )
    assert text == "after a while"


async def test_upstream_failure_in_a_later_round_is_an_error_event(setup):
    up, gw, client = await setup()
    up.push(
        calls(("getWeather", {"location": "X"})),
        Reply(status=400, json={"error": {"message": "context too long", "type": "x"}}),
    )
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIError) as e:
        async for _ in stream:
            pass
    assert "context too long" in e.value.message


async def test_first_round_failure_is_a_plain_http_error(setup):
    up, gw, client = await setup()
    up.push(Reply(status=429, json={"error": {"message": "slow down", "type": "rate"}}))
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="m", messages=USER, stream=True)


async def test_disconnect_mid_tool_cancels_everything(setup, tool_api):
    up, gw, client = await setup(limits={"keepalive_interval": 0.1})
    up.push(calls(("slow", {"seconds": 10})), answer())
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            gw.v1 + "/chat/completions", json={"model": "m", "messages": USER, "stream": True}
        )
        await wait_for(lambda: tool_api.active == 1)
        await r.content.readline()
        r.close()
    await wait_for(lambda: tool_api.active == 0, timeout=3)
    assert tool_api.cancelled == 1
    await asyncio.sleep(0.2)
    assert len(up.received) == 1  # no second round was asked for
    tasks = [t for t in asyncio.all_tasks() if "run_call" in repr(t) or "keepalive" in repr(t)]
    assert tasks == []


@pytest.mark.parametrize(
    "bad",
    [
        {"choices": [None]},
        {"choices": [{"index": 0, "delta": "text", "finish_reason": None}]},
        {"choices": "nope"},
        [1, 2],
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": "x"}]}}]},
    ],
)
async def test_a_malformed_stream_chunk_never_breaks_the_stream(setup, bad):
    """Whatever an upstream sends mid-stream, the client gets a well-formed SSE stream."""
    up, gw, client = await setup()
    up.push(Reply(chunks=[chunk({"role": "assistant", "content": "Hi"}), bad, chunk({}, "stop")]))
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    got = [c async for c in stream]
    assert got[0].choices[0].delta.content == "Hi"
    assert got[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "message", ["just a string", None, {"role": "assistant", "tool_calls": "nope"}]
)
async def test_a_malformed_completion_is_a_502_naming_the_model(setup, message):
    up, gw, client = await setup()
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    up.push(Reply(json=completion(choices=[choice])))
    try:
        res = await client.chat.completions.create(model="m", messages=USER)
    except openai.APIStatusError as e:
        assert e.status_code == 502 and "'m'" in e.message
        assert_valid("ErrorResponse", e.response.json())
    else:  # what can be read as an answer is passed on
        assert res.choices[0].finish_reason == "stop"


async def test_a_gateway_bug_mid_stream_is_an_error_event_not_a_second_response(
    setup, monkeypatch, caplog
):
    from gateway.stream import StreamMerger

    seen = []
    original = StreamMerger.process

    def process(self, chunk):
        seen.append(chunk)
        if len(seen) == 2:
            raise RuntimeError("a bug")
        return original(self, chunk)

    monkeypatch.setattr(StreamMerger, "process", process)
    up, gw, client = await setup()
    up.push(Reply(chunks=[chunk({"role": "assistant", "content": "Hi"}), chunk({"content": "!"})]))
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIError) as e:
        async for _ in stream:
            pass
    assert "failed while handling this stream" in e.value.message
    assert "a bug" in caplog.text  # logged with its traceback, not shown to the client


async def test_upstream_rate_limit_headers_reach_the_client(setup):
    """As on the pass-through path: the first round's for a stream, the last round's otherwise."""

    def with_limit(reply, remaining: str):
        def make(rec) -> Reply:
            out = reply(rec)
            out.headers = {"x-ratelimit-remaining-requests": remaining, "openai-version": "x"}
            return out

        return make

    up, gw, client = await setup()
    call = calls(("getWeather", {"location": "Oslo"}))
    up.push(with_limit(call, "99"), with_limit(answer(), "98"))
    raw = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert raw.headers["x-ratelimit-remaining-requests"] == "98"
    assert raw.headers["openai-version"] == "x" and raw.headers["x-gateway-tool-calls"] == "1"
    assert raw.headers["content-type"] == "application/json"
    up.push(with_limit(call, "97"), with_limit(answer(), "96"))
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=USER, stream=True
    )
    assert raw.headers["x-ratelimit-remaining-requests"] == "97"
    assert raw.headers["content-type"] == "text/event-stream"
    text, _ = await collect(raw.parse())
    assert text == "It is sunny in Paris."
