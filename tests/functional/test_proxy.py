"""The pass-through gateway, driven by the official openai SDK against a fake upstream."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest
from conftest import Reply, chunk, completion, model, text_stream, wait_for
from openai_schema import assert_valid

MESSAGES = [{"role": "user", "content": "hi"}]


def sync_oai(gw, **kw):
    return openai.OpenAI(
        base_url=gw.v1, api_key=kw.pop("api_key", "client-key"), max_retries=0, **kw
    )


async def test_routes_renames_and_adds_params_headers_and_key(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    gw = await make_gateway(
        {
            "models": [
                model(
                    "fast",
                    up,
                    upstream_model="real-model",
                    params={"temperature": 0.2, "top_p": 0.5},
                    headers={"OpenAI-Organization": "org-1"},
                )
            ]
        }
    )
    res = await oai(gw).chat.completions.create(model="fast", messages=MESSAGES, top_p=0.9)
    assert res.choices[0].message.content == "Hello!"
    rec = up.received[0]
    assert rec.path == "/v1/chat/completions"
    assert rec.body["model"] == "real-model"
    assert rec.body["temperature"] == 0.2  # default added
    assert rec.body["top_p"] == 0.9  # the client's value wins
    assert rec.headers["Authorization"] == "Bearer sk-upstream-secret"
    assert rec.headers["OpenAI-Organization"] == "org-1"
    assert "client-key" not in str(rec.headers)


async def test_sync_client_non_stream_and_stream(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})

    def run():
        c = sync_oai(gw)
        first = c.chat.completions.create(model="m", messages=MESSAGES)
        up.push(Reply(chunks=text_stream(["a", "b"])))
        parts = [
            ch.choices[0].delta.content
            for ch in c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            if ch.choices and ch.choices[0].delta.content
        ]
        return first.choices[0].message.content, parts

    assert await asyncio.to_thread(run) == ("Hello!", ["a", "b"])


async def test_unknown_fields_pass_both_ways_unchanged(fake_upstream, make_gateway):
    up = await fake_upstream()
    up.push(Reply(json=completion(system_fingerprint="fp", x_vendor={"nested": [1, 2]})))
    gw = await make_gateway({"models": [model("m", up)]})
    request = {
        "model": "m",
        "messages": MESSAGES,
        "x_custom": {"a": [1, None]},
        "big": 12345678901234567890123,
    }
    raw = orjson.dumps({**request, "big": 1}).replace(b'"big":1', b'"big":12345678901234567890123')
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.v1 + "/chat/completions", data=raw, headers={"Content-Type": "application/json"}
        ) as r,
    ):
        body = await r.json()
        assert r.headers["x-request-id"]
    assert body["x_vendor"] == {"nested": [1, 2]} and body["system_fingerprint"] == "fp"
    assert up.received[0].raw == raw  # nothing to change: the client's bytes as sent
    assert_valid("CreateChatCompletionResponse", body)


async def test_transformed_request_keeps_unknown_fields(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up, upstream_model="other")]})
    await oai(gw).chat.completions.create(
        model="m", messages=MESSAGES, extra_body={"x_custom": {"k": 1}}
    )
    assert up.received[0].body["x_custom"] == {"k": 1}
    assert up.received[0].body["model"] == "other"


async def test_stream_chunks_are_relayed_unchanged_as_they_arrive(fake_upstream, make_gateway):
    up = await fake_upstream()
    chunks = text_stream(["one", "two", "three"])
    chunks[1]["x_unknown"] = True
    up.push(Reply(chunks=chunks, chunk_delay=0.3))
    gw = await make_gateway({"models": [model("m", up)]})
    loop = asyncio.get_running_loop()
    arrivals, raw = [], b""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True}
        ) as r,
    ):
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["x-request-id"]
        async for data in r.content.iter_any():
            arrivals.append(loop.time())
            raw += data
    expected = b"".join(
        c if isinstance(c, bytes) else b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks
    )
    assert raw == expected
    assert arrivals[-1] - arrivals[0] > 0.9  # not buffered until the end
    for line in raw.split(b"\n\n"):
        if line.startswith(b"data: {"):
            assert_valid("CreateChatCompletionStreamResponse", orjson.loads(line[6:]))


async def test_sdk_stream(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.push(Reply(chunks=text_stream(["Hel", "lo"])))
    gw = await make_gateway({"models": [model("m", up)]})
    stream = await oai(gw).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello"
    assert up.received[0].headers["Accept"] == "text/event-stream"


async def test_models_list_and_get(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("a", up), model("org/b:latest", up)]})
    c = oai(gw)
    ids = [m.id async for m in c.models.list()]
    assert ids == ["a", "org/b:latest"]
    one = await c.models.retrieve("org/b:latest")
    assert one.id == "org/b:latest" and one.owned_by == "gateway"
    with pytest.raises(openai.NotFoundError) as e:
        await c.models.retrieve("nope")
    assert e.value.code == "model_not_found"
    async with aiohttp.ClientSession() as s, s.get(gw.v1 + "/models") as r:
        assert_valid("ListModelsResponse", await r.json())
        assert r.headers["x-request-id"]
        async with s.get(gw.url + "/healthz") as h:
            assert h.status == 200


async def test_unknown_model_lists_configured_ids(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("a", up), model("b", up)]})
    with pytest.raises(openai.NotFoundError) as e:
        await oai(gw).chat.completions.create(model="zzz", messages=MESSAGES)
    assert e.value.code == "model_not_found"
    assert "a, b" in e.value.message and "'zzz'" in e.value.message
    assert_valid("ErrorResponse", e.value.response.json())


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model' is required"),
        (b'{"model": "m"}', "'messages' is required"),
        (b'{"model": "m", "messages": []}', "non-empty"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "must be a string"),
    ],
)
async def test_bad_requests_get_400_naming_the_problem(fake_upstream, make_gateway, data, fragment):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    async with aiohttp.ClientSession() as s, s.post(gw.v1 + "/chat/completions", data=data) as r:
        assert r.status == 400
        assert r.headers["Content-Type"] == "application/json"
        body = await r.json()
    assert fragment in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert_valid("ErrorResponse", body)
    assert up.received == []


async def test_client_keys_required_when_configured(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    gw = await make_gateway({"server": {"api_keys": ["k1", "k2", ""]}, "models": [model("m", up)]})
    with pytest.raises(openai.AuthenticationError) as e:
        await oai(gw, api_key="wrong").chat.completions.create(model="m", messages=MESSAGES)
    assert "not valid" in e.value.message
    assert_valid("ErrorResponse", e.value.response.json())
    res = await oai(gw, api_key="k2").chat.completions.create(model="m", messages=MESSAGES)
    assert res.choices[0].message.content == "Hello!"
    assert up.received[0].headers["Authorization"] == "Bearer sk-upstream-secret"
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.v1 + "/models") as r:
            assert r.status == 401
            assert "missing" in (await r.json())["error"]["message"]
        async with s.get(gw.url + "/healthz") as r:
            assert r.status == 200


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_rejecting_key_names_model_and_hides_key(
    fake_upstream, make_gateway, status, oai
):
    up = await fake_upstream()
    up.push(
        Reply(
            status=status,
            json={
                "error": {"message": "Incorrect API key provided: sk-upstream-secret", "type": "x"}
            },
        )
    )
    gw = await make_gateway({"models": [model("m", up)]})
    with pytest.raises(openai.APIStatusError) as e:
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.status_code == status
    assert "'m'" in e.value.message and "api_key" in e.value.message
    assert "sk-upstream-secret" not in e.value.response.text
    assert_valid("ErrorResponse", e.value.response.json())


async def test_upstream_errors_keep_status_and_message(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.push(
        Reply(
            status=400,
            json={
                "error": {
                    "message": "max_tokens too large",
                    "type": "invalid_request_error",
                    "param": "max_tokens",
                    "code": None,
                    "x_extra": 1,
                }
            },
        ),
        Reply(status=422, raw=b"Unprocessable: bad thing", content_type="text/plain"),
        Reply(status=500, json={"detail": "boom"}),
        # vLLM's shape: an integer code, which OpenAI's schema types as a string
        Reply(
            status=400,
            json={"error": {"message": "too long", "type": "BadRequestError", "code": 400}},
        ),
    )
    gw = await make_gateway({"models": [model("m", up)]})
    c = oai(gw)
    with pytest.raises(openai.BadRequestError) as e:
        await c.chat.completions.create(model="m", messages=MESSAGES)
    body = e.value.response.json()
    assert body["error"]["message"] == "max_tokens too large"
    assert body["error"]["param"] == "max_tokens" and body["error"]["x_extra"] == 1
    assert_valid("ErrorResponse", body)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        await c.chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.response.json()["error"]["message"] == "Unprocessable: bad thing"
    assert_valid("ErrorResponse", e.value.response.json())
    with pytest.raises(openai.InternalServerError) as e:
        await c.chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.response.json()["error"]["message"] == "boom"
    assert_valid("ErrorResponse", e.value.response.json())
    with pytest.raises(openai.BadRequestError) as e:
        await c.chat.completions.create(model="m", messages=MESSAGES)
    body = e.value.response.json()
    assert body["error"]["code"] == "400" and body["error"]["param"] is None
    assert body["error"]["type"] == "BadRequestError"
    assert_valid("ErrorResponse", body)


async def test_unreachable_upstream_is_502_naming_model_and_host(
    make_gateway, unused_tcp_port, oai
):
    gw = await make_gateway(
        {"models": [{"id": "m", "base_url": f"http://127.0.0.1:{unused_tcp_port}/v1"}]}
    )
    with pytest.raises(openai.APIStatusError) as e:
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.status_code == 502
    assert "'m'" in e.value.message and f"127.0.0.1:{unused_tcp_port}" in e.value.message
    assert_valid("ErrorResponse", e.value.response.json())


async def test_slow_upstream_is_504(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.push(Reply(json=completion(), delay=2))
    gw = await make_gateway({"models": [model("m", up, timeout=0.2)]})
    with pytest.raises(openai.APIStatusError) as e:
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.status_code == 504
    assert "'m'" in e.value.message and "0.2 s" in e.value.message
    assert e.value.code == "upstream_timeout"


async def test_missing_key_is_a_clear_error_at_request_time(make_gateway, monkeypatch, oai):
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    gw = await make_gateway(
        {
            "models": [
                {"id": "m", "base_url": "http://127.0.0.1:9/v1", "api_key": "${NOT_SET_KEY:-}"}
            ]
        }
    )
    with pytest.raises(openai.AuthenticationError) as e:
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert "NOT_SET_KEY" in e.value.message and "'m'" in e.value.message


async def test_retries_429_and_5xx_honouring_retry_after(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.push(
        Reply(status=429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "0.3"}),
        Reply(status=503, raw=b"busy"),
        Reply(json=completion("finally")),
    )
    gw = await make_gateway({"models": [model("m", up, retries=2, backoff=0.01)]})
    loop = asyncio.get_running_loop()
    start = loop.time()
    res = await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert res.choices[0].message.content == "finally"
    assert len(up.received) == 3
    assert loop.time() - start >= 0.3


async def test_retries_exhausted_returns_last_error(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.default = Reply(status=503, json={"error": {"message": "overloaded"}})
    gw = await make_gateway({"models": [model("m", up, retries=1, backoff=0)]})
    with pytest.raises(openai.InternalServerError) as e:
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.status_code == 503
    assert e.value.response.json()["error"]["message"] == "overloaded"
    assert len(up.received) == 2


async def test_no_retry_on_400(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.default = Reply(status=400, json={"error": {"message": "bad"}})
    gw = await make_gateway({"models": [model("m", up, retries=3, backoff=0)]})
    with pytest.raises(openai.BadRequestError):
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert len(up.received) == 1


async def test_fallbacks_in_order_after_retries(fake_upstream, make_gateway, unused_tcp_port, oai):
    bad, good = await fake_upstream(), await fake_upstream()
    bad.default = Reply(status=500, raw=b"down")
    good.push(Reply(json=completion("from fallback")))
    gw = await make_gateway(
        {
            "models": [
                {
                    "id": "main",
                    "base_url": f"http://127.0.0.1:{unused_tcp_port}/v1",
                    "fallbacks": ["second", "third"],
                    "retries": 1,
                    "backoff": 0,
                },
                model("second", bad, retries=1, backoff=0),
                model("third", good, upstream_model="third-upstream", params={"seed": 7}),
            ]
        }
    )
    res = await oai(gw).chat.completions.create(model="main", messages=MESSAGES)
    assert res.choices[0].message.content == "from fallback"
    assert len(bad.received) == 2
    assert good.received[0].body["model"] == "third-upstream"
    assert good.received[0].body["seed"] == 7


async def test_stream_falls_back_before_first_byte_but_never_replays(
    fake_upstream, make_gateway, oai
):
    first, second = await fake_upstream(), await fake_upstream()
    first.push(Reply(status=503, raw=b"x"))
    second.push(Reply(chunks=text_stream(["ok"])))
    gw = await make_gateway({"models": [model("a", first, fallbacks=["b"]), model("b", second)]})
    stream = await oai(gw).chat.completions.create(model="a", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "ok"

    # a stream that breaks after it started is not replayed on the fallback
    first.push(Reply(chunks=[chunk({"role": "assistant", "content": "par"})], then_hang=True))
    gw2 = await make_gateway(
        {"models": [model("a", first, fallbacks=["b"], timeout=0.3), model("b", second)]}
    )
    before = len(second.received)
    stream = await oai(gw2).chat.completions.create(model="a", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as e:
        async for _ in stream:
            pass
    assert "stopped sending" in e.value.message
    assert len(second.received) == before


async def test_client_disconnect_cancels_upstream_at_once(fake_upstream, make_gateway):
    up = await fake_upstream()
    up.push(Reply(chunks=[chunk({"role": "assistant", "content": "x"})] * 3, then_hang=True))
    gw = await make_gateway({"models": [model("m", up)]})
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True}
        )
        await r.content.readline()
        assert up.active == 1
        r.close()  # the client goes away mid-stream
    await wait_for(lambda: up.active == 0, timeout=2)
    assert up.cancelled == 1


async def test_other_endpoints_are_proxied_by_model(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.push(
        Reply(
            json={
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": "emb-up",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )
    )
    gw = await make_gateway({"models": [model("emb", up, upstream_model="emb-up")]})
    res = await oai(gw).embeddings.create(model="emb", input="hello", encoding_format="float")
    assert res.data[0].embedding == [0.1, 0.2]
    assert up.received[0].path == "/v1/embeddings"
    assert up.received[0].body["model"] == "emb-up"
    with pytest.raises(openai.NotFoundError):
        await oai(gw).embeddings.create(model="nope", input="x")
    async with aiohttp.ClientSession() as s:
        # JSON sent with another content type (curl -d's default) is still JSON, as for chat
        body = orjson.dumps({"model": "emb", "input": "x"})
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        async with s.post(gw.v1 + "/embeddings", data=body, headers=form) as r:
            assert r.status == 200 and up.received[1].body["model"] == "emb-up"
        upload = aiohttp.FormData({"model": "emb", "purpose": "batch"})
        upload.add_field("file", b"{}", filename="x.jsonl")
        async with s.post(gw.v1 + "/files", data=upload) as r:
            assert r.status == 415
            error = (await r.json())["error"]
            assert error["code"] == "unsupported_media_type" and "multipart" in error["message"]
            assert_valid("ErrorResponse", await r.json())
    assert len(up.received) == 2


async def test_request_id_is_kept_or_made(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.v1 + "/chat/completions",
            headers={"X-Request-Id": "abc-1"},
            json={"model": "m", "messages": MESSAGES},
        ) as r:
            assert r.headers["x-request-id"] == "abc-1"
        async with s.get(gw.url + "/nowhere") as r:
            assert r.status == 404 and len(r.headers["x-request-id"]) == 32
            assert_valid("ErrorResponse", await r.json())
            assert (await r.json())["error"]["code"] == "not_found"
        async with s.get(gw.v1 + "/chat/completions") as r:  # a path that exists, for POST
            assert r.status == 405 and r.headers["Allow"] == "POST"
            assert len(r.headers["x-request-id"]) == 32
            assert_valid("ErrorResponse", await r.json())
            assert (await r.json())["error"]["code"] == "method_not_allowed"
        async with s.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": []}) as r:
            first = r.headers["x-request-id"]
        async with s.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": []}) as r:
            assert r.headers["x-request-id"] != first
    assert up.received[0].headers["X-Request-Id"] == "abc-1"


async def test_upstream_key_never_reaches_logs_or_client(fake_upstream, make_gateway, oai, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    first, second = await fake_upstream(), await fake_upstream()
    first.default = Reply(status=503, json={"error": {"message": "bad key sk-upstream-secret"}})
    second.default = Reply(status=400, raw=b"nope: sk-upstream-secret")
    gw = await make_gateway({"models": [model("a", first, fallbacks=["b"]), model("b", second)]})
    with pytest.raises(openai.BadRequestError) as e:
        await oai(gw).chat.completions.create(model="a", messages=MESSAGES)
    assert "sk-upstream-secret" not in e.value.response.text
    assert "[redacted]" in e.value.response.text
    assert "falling back" in caplog.text
    assert "sk-upstream-secret" not in caplog.text
    [access] = [r for r in caplog.records if r.name == "gateway.access"]  # the new lines too
    assert access.fields["served_model"] is None and access.fields["upstream_status"] == 400
    assert "sk-upstream-secret" not in str(access.fields) + access.getMessage()
