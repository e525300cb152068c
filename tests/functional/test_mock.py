"""The built-in mock model (``base_url: mock://``), through the gateway, with the real SDK."""

from __future__ import annotations

import json
import math

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from conftest import start_app
from openai_schema import assert_valid

from gateway.mock import chat_reply, embedding

SPEC = {
    "openapi": "3.0.0",
    "info": {"title": "t", "version": "1"},
    "paths": {
        "/weather": {
            "get": {
                "operationId": "get_weather",
                "parameters": [
                    {"name": "city", "in": "query", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "ok"}},
            }
        }
    },
}


@pytest.fixture
async def weather_api():
    seen = []

    async def weather(request: web.Request) -> web.Response:
        seen.append(request.query["city"])
        return web.json_response({"city": request.query["city"], "temperature": 17.5})

    app = web.Application()
    app.router.add_get("/weather", weather)
    runner, url = await start_app(app)
    yield url, seen
    await runner.cleanup()


async def mock_gateway(make_gateway, tmp_path, tool_url=None):
    raw = {"models": [{"id": "mock", "base_url": "mock://"}]}
    if tool_url:
        (tmp_path / "spec.json").write_text(json.dumps(SPEC))
        raw["tools"] = [{"name": "w", "spec": "spec.json", "base_url": tool_url}]
        raw["models"].append({"id": "agent", "base_url": "mock://", "tools": ["w"]})
    return await make_gateway(raw)


async def test_mock_model_echoes_the_last_user_message(make_gateway, tmp_path, oai):
    gw = await mock_gateway(make_gateway, tmp_path)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "Hello, mock!"}]},
    ]
    res = await oai(gw).chat.completions.create(model="mock", messages=messages)
    assert res.choices[0].message.content == "Hello, mock!"
    assert res.choices[0].finish_reason == "stop" and res.model == "mock"
    assert res.usage.prompt_tokens > 0 and res.usage.completion_tokens == 3
    async with aiohttp.ClientSession() as s:
        body = {"model": "mock", "messages": messages}
        async with s.post(gw.v1 + "/chat/completions", json=body) as r:
            assert_valid("CreateChatCompletionResponse", await r.json())


async def test_mock_model_streams_the_echo_with_usage(make_gateway, tmp_path, oai):
    gw = await mock_gateway(make_gateway, tmp_path)
    stream = await oai(gw).chat.completions.create(
        model="mock",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 4
    async with aiohttp.ClientSession() as s:
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "x y"}]}
        async with s.post(gw.v1 + "/chat/completions", json=body) as r:
            lines = [ln for ln in (await r.text()).splitlines() if ln.startswith("data: {")]
    for line in lines:
        assert_valid("CreateChatCompletionStreamResponse", orjson.loads(line[6:]))


@pytest.mark.parametrize("streamed", [False, True])
async def test_mock_call_convention_runs_the_whole_tool_loop(
    make_gateway, tmp_path, oai, weather_api, streamed
):
    url, seen = weather_api
    gw = await mock_gateway(make_gateway, tmp_path, url)
    messages = [{"role": "user", "content": '/call get_weather {"city": "Paris"}'}]
    client = oai(gw)
    if streamed:
        stream = await client.chat.completions.create(model="agent", messages=messages, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    else:
        res = await client.chat.completions.create(model="agent", messages=messages)
        text = res.choices[0].message.content
    assert seen == ["Paris"]
    assert text == 'get_weather returned: HTTP 200\n{"city":"Paris","temperature":17.5}'


async def test_mock_returns_client_tool_calls_to_the_client(make_gateway, tmp_path, oai):
    gw = await mock_gateway(make_gateway, tmp_path)
    tools = [{"type": "function", "function": {"name": "mine", "parameters": {"type": "object"}}}]
    res = await oai(gw).chat.completions.create(
        model="mock",
        messages=[{"role": "user", "content": 'please\n/call mine {"a": 1}\n/call mine'}],
        tools=tools,
    )
    calls = res.choices[0].message.tool_calls
    assert res.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("mine", '{"a": 1}'),
        ("mine", "{}"),
    ]
    assert len({c.id for c in calls}) == 2


async def test_mock_call_to_a_function_not_offered_says_so(make_gateway, tmp_path, oai):
    gw = await mock_gateway(make_gateway, tmp_path)
    res = await oai(gw).chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "/call nothing {}"}]
    )
    assert res.choices[0].message.content == (
        "(mock: no function named 'nothing' is offered; offered: none)"
    )


def test_mock_script_bad_arguments_and_forced_tool_choice():
    tools = [{"type": "function", "function": {"name": "f"}}]
    bad = chat_reply({"messages": [{"role": "user", "content": "/call f {nope"}], "tools": tools})
    assert bad["content"].startswith("(mock: the arguments of /call f are not valid JSON")
    forced = chat_reply(
        {"messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": "required"}
    )
    assert forced["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}


async def test_mock_embeddings_are_deterministic_unit_vectors(make_gateway, tmp_path, oai):
    gw = await mock_gateway(make_gateway, tmp_path)
    client = oai(gw)
    first = await client.embeddings.create(model="mock", input=["cat", "dog"])  # base64
    again = await client.embeddings.create(
        model="mock", input="cat", encoding_format="float", dimensions=16
    )
    cat, dog = (d.embedding for d in first.data)
    assert len(cat) == 16 and cat != dog
    assert again.data[0].embedding == pytest.approx(cat, abs=1e-6)
    assert math.isclose(sum(v * v for v in cat), 1.0, rel_tol=1e-5)
    assert embedding("cat", 4) == embedding("cat", 4)
    small = await client.embeddings.create(model="mock", input="cat", dimensions=3)
    assert len(small.data[0].embedding) == 3


async def test_mock_completions_echo_the_prompt(make_gateway, tmp_path, oai):
    gw = await mock_gateway(make_gateway, tmp_path)
    res = await oai(gw).completions.create(model="mock", prompt="Say this")
    assert res.choices[0].text == "Say this" and res.usage.total_tokens == 4


async def test_mock_unimplemented_endpoint_is_an_openai_404(make_gateway, tmp_path, oai):
    gw = await mock_gateway(make_gateway, tmp_path)
    with pytest.raises(openai.NotFoundError) as e:
        await oai(gw).responses.create(model="mock", input="hi")
    body = e.value.response.json()
    assert_valid("ErrorResponse", body)
    assert "does not implement POST /v1/responses" in body["error"]["message"]


async def test_mock_server_starts_on_first_use_and_stops_with_its_resolver():
    import asyncio

    from gateway.mock import MOCK_HOST, MockResolver

    resolver = MockResolver()
    assert resolver._runner is None  # nothing listens until a mock model is used
    (first,) = await resolver.resolve(MOCK_HOST, 80)
    (again,) = await resolver.resolve(MOCK_HOST, 80)
    assert first["host"] == "127.0.0.1" and again["port"] == first["port"]
    _, writer = await asyncio.open_connection("127.0.0.1", first["port"])
    writer.close()
    await resolver.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", first["port"])


@pytest.mark.parametrize("streamed", [False, True])
async def test_mock_answers_n_choices(make_gateway, tmp_path, oai, streamed):
    gw = await mock_gateway(make_gateway, tmp_path)
    messages = [{"role": "user", "content": "twice"}]
    client = oai(gw)
    if not streamed:
        res = await client.chat.completions.create(model="mock", messages=messages, n=2)
        assert [(c.index, c.message.content) for c in res.choices] == [(0, "twice"), (1, "twice")]
        return
    stream = await client.chat.completions.create(model="mock", messages=messages, n=2, stream=True)
    texts = {0: "", 1: ""}
    async for c in stream:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "twice", 1: "twice"}
