"""Which endpoints the gateway serves and how: params per endpoint, paths without ``/v1``,
clear answers for what it cannot proxy."""

from __future__ import annotations

import aiohttp
import openai
import orjson
import pytest
from conftest import Reply, model
from openai_schema import assert_valid

from gateway.configload import build_config
from gateway.errors import ConfigError

MESSAGES = [{"role": "user", "content": "hi"}]
EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "model": "m",
    "usage": {"prompt_tokens": 1, "total_tokens": 1},
}


async def test_model_params_are_not_added_to_embeddings_or_responses(
    fake_upstream, make_gateway, oai
):
    """OpenAI rejects sampling arguments it does not know on these endpoints."""
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up, params={"temperature": 0.2})]})
    up.push(Reply(json=EMBEDDING))
    await oai(gw).embeddings.create(model="m", input="x", encoding_format="float")
    async with aiohttp.ClientSession() as s:
        sent = orjson.dumps({"model": "m", "input": "hi"})
        async with s.post(gw.v1 + "/responses", data=sent) as r:
            assert r.status == 200
    emb, responses = up.received
    assert "temperature" not in emb.body
    assert responses.raw == sent  # nothing to change: the client's bytes as they are
    await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    await oai(gw).completions.create(model="m", prompt="hi")
    assert [r.body["temperature"] for r in up.received[2:]] == [0.2, 0.2]


async def test_endpoint_params_apply_to_their_endpoint_only(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    gw = await make_gateway(
        {
            "models": [
                model(
                    "m",
                    up,
                    params={"temperature": 0.2},
                    endpoint_params={
                        "embeddings": {"dimensions": 256},
                        "chat/completions": {"top_p": 0.5},
                    },
                )
            ]
        }
    )
    up.push(Reply(json=EMBEDDING))
    await oai(gw).embeddings.create(model="m", input="x", encoding_format="float")
    await oai(gw).chat.completions.create(model="m", messages=MESSAGES, top_p=0.9)
    await oai(gw).completions.create(model="m", prompt="hi")
    emb, chat, legacy = up.received
    assert emb.body == {"model": "m", "input": "x", "encoding_format": "float", "dimensions": 256}
    assert chat.body["temperature"] == 0.2 and chat.body["top_p"] == 0.9  # the client wins
    assert legacy.body["temperature"] == 0.2 and "top_p" not in legacy.body


@pytest.mark.parametrize("name", ["/embeddings", "v1/embeddings", "embeddings/", ""])
def test_endpoint_params_key_that_is_not_a_path_is_a_config_error(tmp_path, name):
    raw = {"models": [{"id": "m", "base_url": "http://x/v1", "endpoint_params": {name: {}}}]}
    with pytest.raises(ConfigError) as e:
        build_config(raw, "cfg", tmp_path)
    [problem] = e.value.problems
    assert problem.startswith("models[0].endpoint_params") and "e.g. embeddings" in problem


async def test_client_base_url_without_v1_still_reaches_every_openai_path(
    fake_upstream, make_gateway, oai
):
    """A client configured with http://host:port (no /v1) is served as other gateways do."""
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up, upstream_model="up-m")]})
    bare = openai.AsyncOpenAI(base_url=gw.url, api_key="k", max_retries=0)
    try:
        done = await bare.chat.completions.create(model="m", messages=MESSAGES)
        assert done.choices[0].message.content == "Hello!"
        assert [m.id async for m in bare.models.list()] == ["m"]
        assert (await bare.models.retrieve("m")).id == "m"
        with pytest.raises(openai.NotFoundError):
            await bare.models.retrieve("nope")
        up.push(Reply(json=EMBEDDING))
        await bare.embeddings.create(model="m", input="x", encoding_format="float")
        await bare.completions.create(model="m", prompt="hi")
        stream = await bare.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        [_ async for _ in stream]
    finally:
        await bare.close()
    paths = [r.path for r in up.received]
    assert paths == ["/v1/chat/completions", "/v1/embeddings", "/v1/completions"] + [
        "/v1/chat/completions"
    ]
    assert all(r.body["model"] == "up-m" for r in up.received)
    async with aiohttp.ClientSession() as s:
        sent = {"model": "m", "input": "hi"}
        async with s.post(gw.url + "/responses", json=sent) as r:
            assert r.status == 200 and up.received[-1].path == "/v1/responses"
        async with s.get(gw.url + "/healthz") as r:
            assert r.status == 200
        async with s.post(gw.url + "/healthz", json=sent) as r:
            assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
        async with s.post(gw.url + "/anything-else", json=sent) as r:
            error = (await r.json())["error"]
            assert r.status == 404 and error["code"] == "not_found"
            assert "base_url" in error["message"] and "/v1" in error["message"]
            assert_valid("ErrorResponse", await r.json())
    assert len(up.received) == 5


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files"),
        ("GET", "/v1/responses/resp_123"),
        ("DELETE", "/v1/responses/resp_123"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/embeddings"),
    ],
)
async def test_non_post_openai_path_says_the_gateway_routes_by_body_model(
    fake_upstream, make_gateway, method, path
):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    async with aiohttp.ClientSession() as s, s.request(method, gw.url + path) as r:
        body = await r.json()
        assert r.status == 405 and r.headers["Allow"] == "POST"
    assert_valid("ErrorResponse", body)
    message = body["error"]["message"]
    assert message.startswith(f"{method} {path}: ")
    assert "'model' named in its JSON body" in message
    assert "send those to the upstream directly" in message
    assert up.received == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_body_over_max_request_bytes_is_a_413_naming_the_setting(
    fake_upstream, make_gateway, path
):
    up = await fake_upstream()
    gw = await make_gateway({"server": {"max_request_bytes": 1000}, "models": [model("m", up)]})
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}], "input": "x"}
    async with aiohttp.ClientSession() as s, s.post(gw.url + path, json=big) as r:
        body = await r.json()
        assert r.status == 413
    assert_valid("ErrorResponse", body)
    message = body["error"]["message"]
    assert "server.max_request_bytes" in message and "1,000 bytes" in message
    assert body["error"]["code"] == "request_too_large"
    assert up.received == []
