"""Misbehaving upstreams: huge or endless bodies, bombs, slow answers; tool side effects.

Memory stays bounded by ``max_response_bytes``, time by ``request_timeout``; an error after
the gateway ran tool calls says which ones and tells the SDKs not to retry.
"""

from __future__ import annotations

import gzip
import json

import aiohttp
import openai
import orjson
import pytest
from conftest import Reply, chunk, completion, model, start_app, text_stream
from openai_schema import assert_valid
from toolapi import SPEC, TOKEN, ToolAPI

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def tool_api(tmp_path):
    api = ToolAPI()
    runner, api.url = await start_app(api.app)
    (tmp_path / "api.json").write_text(json.dumps(SPEC))
    yield api
    await runner.cleanup()


def tool_model(up, tool_api, **kw):
    return {
        "tools": [
            {
                "name": "api",
                "spec": "api.json",
                "base_url": tool_api.url,
                "auth": {"type": "bearer", "token": TOKEN},
            }
        ],
        "models": [model("m", up, tools=["api"], **kw)],
    }


def call_item(rec) -> Reply:
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "createItem", "arguments": '{"requestBody":{"name":"x"}}'},
            }
        ],
    }
    if rec.body.get("stream"):
        delta = {"role": "assistant", **msg, "tool_calls": [{"index": 0, **msg["tool_calls"][0]}]}
        return Reply(chunks=[chunk(delta), chunk({}, "tool_calls"), b"data: [DONE]\n\n"])
    choice = {"index": 0, "message": msg, "finish_reason": "tool_calls"}
    return Reply(json=completion(choices=[choice]))


async def post(gw, body: dict) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.post(gw.v1 + "/chat/completions", json=body) as r:
        return r.status, dict(r.headers), await r.read()


def events(raw: bytes) -> list[dict]:
    return [orjson.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]


# --- item 9: the upstream body is capped ------------------------------------------------


async def test_upstream_body_past_max_response_bytes_is_502_naming_the_model(
    fake_upstream, make_gateway
):
    up = await fake_upstream()
    up.push(Reply(json=completion("x" * 300_000)))
    gw = await make_gateway({"models": [model("m", up, max_response_bytes=100_000)]})
    status, _, raw = await post(gw, {"model": "m", "messages": MESSAGES})
    assert status == 502
    error = orjson.loads(raw)["error"]
    assert error["code"] == "upstream_response_too_large"
    assert "'m'" in error["message"] and "max_response_bytes" in error["message"]
    assert_valid("ErrorResponse", orjson.loads(raw))


async def test_upstream_gzip_bomb_is_capped_decompressed(fake_upstream, make_gateway):
    up = await fake_upstream()
    bomb = gzip.compress(b'{"x":"' + b"a" * 50_000_000 + b'"}', 9)
    up.push(Reply(raw=bomb, headers={"Content-Encoding": "gzip"}))
    gw = await make_gateway({"models": [model("m", up, max_response_bytes=1_000_000)]})
    status, _, raw = await post(gw, {"model": "m", "messages": MESSAGES})
    assert status == 502 and orjson.loads(raw)["error"]["code"] == "upstream_response_too_large"


# --- item 15: error bodies are read whole -----------------------------------------------


async def test_upstream_error_body_longer_than_one_read_is_read_whole(fake_upstream, make_gateway):
    up = await fake_upstream()
    error = {"error": {"details": "d" * 400_000, "message": "the real reason", "type": "x"}}
    up.push(Reply(status=400, json=error))
    gw = await make_gateway({"models": [model("m", up)]})
    status, _, raw = await post(gw, {"model": "m", "messages": MESSAGES})
    assert status == 400 and orjson.loads(raw)["error"]["message"] == "the real reason"


# --- item 10: the tool loop's SSE parser ------------------------------------------------


async def test_endless_stream_in_a_tool_round_ends_with_an_error_event(
    fake_upstream, make_gateway, tool_api
):
    up = await fake_upstream()
    endless = [chunk({"role": "assistant", "content": ""})]
    endless += [chunk({"content": "y" * 1000})] * 400
    up.push(Reply(chunks=endless, then_hang=True))
    gw = await make_gateway(tool_model(up, tool_api, max_response_bytes=100_000))
    status, _, raw = await post(gw, {"model": "m", "messages": MESSAGES, "stream": True})
    assert status == 200
    last = events(raw)[-1]
    assert last["error"]["code"] == "upstream_response_too_large"


async def test_one_huge_stream_event_in_a_tool_round_is_an_error(
    fake_upstream, make_gateway, tool_api
):
    up = await fake_upstream()
    up.push(Reply(chunks=[b"data: " + b"z" * 300_000], then_hang=True))
    gw = await make_gateway(tool_model(up, tool_api, max_response_bytes=100_000))
    status, _, raw = await post(gw, {"model": "m", "messages": MESSAGES, "stream": True})
    error = orjson.loads(raw)["error"] if status != 200 else events(raw)[-1]["error"]
    assert error["code"] == "upstream_response_too_large"


# --- item 11: request_timeout -----------------------------------------------------------


async def test_request_timeout_ends_a_slow_non_stream_answer_with_504(fake_upstream, make_gateway):
    up = await fake_upstream()
    up.push(Reply(json=completion(), delay=5))
    gw = await make_gateway({"models": [model("m", up, request_timeout=0.3)]})
    status, _, raw = await post(gw, {"model": "m", "messages": MESSAGES})
    assert status == 504
    error = orjson.loads(raw)["error"]
    assert "request_timeout" in error["message"] and error["code"] == "upstream_timeout"


async def test_request_timeout_ends_an_endless_pass_through_stream_with_an_error_event(
    fake_upstream, make_gateway
):
    up = await fake_upstream()
    up.push(Reply(chunks=text_stream(["a", "b"])[:-2], then_hang=True))
    gw = await make_gateway({"models": [model("m", up, request_timeout=0.5)]})
    status, _, raw = await post(gw, {"model": "m", "messages": MESSAGES, "stream": True})
    assert status == 200
    assert b'"content":"a"' in raw
    assert "request_timeout" in events(raw)[-1]["error"]["message"]


# --- item 20: tool side effects are never repeated silently ------------------------------


async def test_error_after_tool_calls_ran_says_which_and_is_not_retried(
    fake_upstream, make_gateway, tool_api
):
    up = await fake_upstream()
    up.push(call_item, Reply(status=400, json={"error": {"message": "bad", "type": "x"}}))
    gw = await make_gateway(tool_model(up, tool_api))
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=2)
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="m", messages=MESSAGES)
    await client.close()
    assert e.value.response.headers["x-should-retry"] == "false"
    assert "createItem (HTTP 200)" in e.value.message
    assert tool_api.calls == ["POST /items"]


async def test_server_error_after_tool_calls_ran_is_not_retried_by_the_sdk(
    fake_upstream, make_gateway, tool_api
):
    up = await fake_upstream()
    up.push(call_item)
    up.default = Reply(status=500, json={"error": {"message": "down", "type": "x"}})
    gw = await make_gateway(tool_model(up, tool_api))
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=2)
    with pytest.raises(openai.InternalServerError) as e:
        await client.chat.completions.create(model="m", messages=MESSAGES)
    await client.close()
    assert e.value.response.headers["x-should-retry"] == "false"
    assert tool_api.calls == ["POST /items"]  # once, though the SDK retries 5xx twice


async def test_stream_error_after_tool_calls_names_the_calls(fake_upstream, make_gateway, tool_api):
    up = await fake_upstream()
    up.push(call_item, Reply(status=400, json={"error": {"message": "bad", "type": "x"}}))
    gw = await make_gateway(tool_model(up, tool_api))
    _, _, raw = await post(gw, {"model": "m", "messages": MESSAGES, "stream": True})
    assert "createItem (HTTP 200)" in events(raw)[-1]["error"]["message"]


async def test_request_timeout_during_tool_loop_names_the_calls(
    fake_upstream, make_gateway, tool_api
):
    up = await fake_upstream()
    up.push(call_item, Reply(json=completion(), delay=5))
    gw = await make_gateway(tool_model(up, tool_api, request_timeout=1.0))
    status, headers, raw = await post(gw, {"model": "m", "messages": MESSAGES})
    assert status == 504 and headers["x-should-retry"] == "false"
    message = orjson.loads(raw)["error"]["message"]
    assert "request_timeout" in message and "createItem (HTTP 200)" in message


async def test_failing_later_round_is_retried_and_falls_back(fake_upstream, make_gateway, tool_api):
    up, spare = await fake_upstream(), await fake_upstream()
    up.push(call_item, Reply(status=503, json={"error": {"message": "busy", "type": "x"}}))
    up.default = Reply(status=503, json={"error": {"message": "busy", "type": "x"}})
    spare.push(Reply(json=completion("from the fallback")))
    raw = tool_model(up, tool_api, retries=1, backoff=0, fallbacks=["spare"])
    raw["models"].append(model("spare", spare))
    gw = await make_gateway(raw)
    status, _, body = await post(gw, {"model": "m", "messages": MESSAGES})
    assert status == 200
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "from the fallback"
    assert len(up.received) == 3 and tool_api.calls == ["POST /items"]


async def test_tool_loop_reply_nested_too_deeply_is_a_502_not_a_500(
    fake_upstream, make_gateway, tool_api
):
    up = await fake_upstream()
    deep = orjson.dumps(completion())[:-1] + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    up.push(Reply(raw=deep))
    gw = await make_gateway(tool_model(up, tool_api))
    status, _, raw = await post(gw, {"model": "m", "messages": MESSAGES})
    assert status == 502 and orjson.loads(raw)["error"]["code"] == "upstream_bad_response"
