"""Per-user tokens end to end: from the client's header to the tool API, and nowhere else."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from conftest import model, start_app
from test_tool_loop import USER, answer, calls, tool_messages

USER_TOKEN = "ghp_user-token-0123456789"
SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "t", "version": "1"},
    "paths": {
        "/me": {"get": {"operationId": "me", "security": [{"user_github": []}]}},
        "/zen": {"get": {"operationId": "zen", "security": []}},
    },
    "components": {"securitySchemes": {"user_github": {"type": "http", "scheme": "bearer"}}},
}


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"auth": request.headers.get("Authorization")})


async def _gateway(tmp_path, fake_upstream, make_gateway) -> tuple[Any, Any, Any]:
    api = web.Application()
    api.router.add_get("/me", _echo)
    api.router.add_get("/zen", _echo)
    runner, url = await start_app(api)
    (tmp_path / "api.json").write_text(json.dumps(SPEC))
    up = await fake_upstream()
    toolset = {
        "name": "gh",
        "spec": "api.json",
        "base_url": url,
        "credentials": {"user_github": {"from_header": "X-GitHub-Token"}},
    }
    gw = await make_gateway({"tools": [toolset], "models": [model("m", up, tools=["gh"])]})
    return up, gw, runner


async def _chat(gw: Any, headers: dict[str, str]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        body = {"model": "m", "messages": USER}
        async with s.post(gw.v1 + "/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200, await r.text()


async def test_per_user_token_reaches_the_tool_api_and_nowhere_else(
    tmp_path, fake_upstream, make_gateway, caplog
):
    caplog.set_level(logging.DEBUG)
    up, gw, runner = await _gateway(tmp_path, fake_upstream, make_gateway)
    up.push(calls(("me", {}), ("zen", {})), answer())
    await _chat(gw, {"X-GitHub-Token": USER_TOKEN})
    me, zen = (m["content"] for m in tool_messages(up.received[1]))
    assert me == 'HTTP 200\n{"auth":"Bearer [redacted]"}'  # sent, and redacted in the echo
    assert zen == 'HTTP 200\n{"auth":null}'  # security: [] sends nothing
    for received in up.received:  # never to the LLM upstream, never shown to the model
        assert "x-github-token" not in {k.lower() for k in received.headers}
        assert USER_TOKEN not in received.raw.decode()
    assert USER_TOKEN not in caplog.text
    await runner.cleanup()


async def test_call_without_the_per_user_header_tells_the_model_what_is_missing(
    tmp_path, fake_upstream, make_gateway
):
    up, gw, runner = await _gateway(tmp_path, fake_upstream, make_gateway)
    up.push(calls(("me", {})), answer())
    await _chat(gw, {})
    assert tool_messages(up.received[1])[0]["content"] == (
        "Error: GET /me needs the credential user_github (the client request's "
        "X-GitHub-Token header), which this request did not carry, so the call was not made."
    )
    await runner.cleanup()
