"""Upstream failures a new user meets, each with a message that says what to change."""

from __future__ import annotations

import logging

import openai
import pytest
from conftest import Reply, model
from openai_schema import assert_valid

from gateway.configload import build_config

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=404, raw=b"404 page not found", content_type="text/plain"),  # Ollama
        Reply(status=404, json={"detail": "Not Found"}),  # vLLM (FastAPI)
        Reply(status=404, raw=b"404: Not Found", content_type="text/plain"),  # aiohttp
        Reply(
            status=404,
            json={"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}},
        ),  # llama.cpp
        Reply(status=404, raw=b"<html><body>Not Found</body></html>", content_type="text/html"),
    ],
)
async def test_upstream_404_for_a_base_url_without_v1_names_model_url_and_fix(
    fake_upstream, make_gateway, oai, reply
):
    up = await fake_upstream()
    up.push(reply)
    gw = await make_gateway({"models": [{"id": "local", "base_url": up.url}]})  # no /v1
    with pytest.raises(openai.NotFoundError) as e:
        await oai(gw).chat.completions.create(model="local", messages=MESSAGES)
    body = e.value.response.json()
    assert_valid("ErrorResponse", body)
    message = body["error"]["message"]
    assert "'local'" in message and f"{up.url}/chat/completions" in message
    assert "base_url" in message and "/v1" in message
    assert body["error"]["code"] == "upstream_not_found"
    assert "<html>" not in message


async def test_upstream_model_not_found_keeps_its_own_message(fake_upstream, make_gateway, oai):
    """OpenAI's own 404 for an unknown model is not about the base_url: it stays as sent."""
    up = await fake_upstream()
    openai_404 = {
        "error": {
            "message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    ollama_404 = {"error": 'model "llama9" not found, try pulling it first'}
    up.push(Reply(status=404, json=openai_404), Reply(status=404, json=ollama_404))
    gw = await make_gateway({"models": [model("m", up)]})
    with pytest.raises(openai.NotFoundError) as e:
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.response.json() == openai_404
    with pytest.raises(openai.NotFoundError) as e:
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.response.json()["error"]["message"] == ollama_404["error"]


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_401_for_a_model_without_api_key_says_none_is_configured(
    fake_upstream, make_gateway, oai, status
):
    up = await fake_upstream()
    up.push(Reply(status=status, json={"error": {"message": "You didn't provide an API key."}}))
    gw = await make_gateway({"models": [{"id": "m", "base_url": up.url + "/v1"}]})
    with pytest.raises(openai.APIStatusError) as e:
        await oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.status_code == status
    body = e.value.response.json()
    assert_valid("ErrorResponse", body)
    message = body["error"]["message"]
    assert "wants an API key, and none is configured" in message and "api_key:" in message
    assert "rejected the gateway's API key" not in message
    assert body["error"]["code"] == "upstream_api_key_missing"
    assert "Authorization" not in up.received[0].headers


async def test_model_with_unset_key_variable_falls_back_like_an_unreachable_one(
    fake_upstream, make_gateway, oai, monkeypatch, caplog
):
    monkeypatch.delenv("UNSET_PRIMARY_KEY", raising=False)
    up = await fake_upstream()
    primary = {"id": "a", "base_url": "http://127.0.0.1:9/v1", "api_key": "${UNSET_PRIMARY_KEY:-}"}
    gw = await make_gateway({"models": [{**primary, "fallbacks": ["b"]}, model("b", up)]})
    caplog.set_level(logging.WARNING, "gateway.upstream")
    for _ in range(2):
        done = await oai(gw).chat.completions.create(model="a", messages=MESSAGES)
        assert done.choices[0].message.content == "Hello!"
    assert len(up.received) == 2 and up.received[0].body["model"] == "b"
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 2  # logged every time
    assert "model a" in lines[0] and "UNSET_PRIMARY_KEY" in lines[0]
    # a fallback that fails too says why the first model was passed over
    up.default = Reply(status=503, raw=b"overloaded", content_type="text/plain")
    with pytest.raises(openai.InternalServerError) as e:
        await oai(gw).chat.completions.create(model="a", messages=MESSAGES)
    message = e.value.response.json()["error"]["message"]
    assert message.startswith("overloaded (a fallback, tried because model 'a' has an empty")
    assert "UNSET_PRIMARY_KEY" in message
    # with no fallback left, the missing key is still the clear 401 it was
    gw = await make_gateway({"models": [primary]})
    with pytest.raises(openai.AuthenticationError) as e:
        await oai(gw).chat.completions.create(model="a", messages=MESSAGES)
    assert "UNSET_PRIMARY_KEY" in e.value.message


@pytest.mark.parametrize(
    ("base_url", "server"),
    [
        ("http://127.0.0.1:11434", "Ollama"),
        ("http://localhost:8000/", "vLLM"),
        ("http://ollama:11434/api", "Ollama"),
        ("http://127.0.0.1:1234", "LM Studio"),
        ("http://127.0.0.1:8080", "llama.cpp"),
    ],
)
def test_check_warns_when_a_local_server_base_url_lacks_v1(tmp_path, base_url, server):
    config = build_config({"models": [{"id": "local", "base_url": base_url}]}, "cfg", tmp_path)
    [warning] = config.warnings()
    assert warning.startswith("model local: base_url") and server in warning
    assert f"Use base_url: {base_url.rstrip('/')}/v1" in warning


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:11434/v1",
        "http://127.0.0.1:8000/v1/",
        "https://api.openai.com/v1",
        "http://127.0.0.1:9999",
        "http://gw:8080/openai/v1",
    ],
)
def test_check_is_quiet_about_base_urls_with_v1_or_unknown_ports(tmp_path, base_url):
    config = build_config({"models": [{"id": "m", "base_url": base_url}]}, "cfg", tmp_path)
    assert config.warnings() == []
