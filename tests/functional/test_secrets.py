"""Secrets and confinement under attack: echoing tool servers and upstreams, hostile values.

The tool server here lives under ``/api`` (the toolset's base path) and echoes what it got
in every way a real one might; ``/admin`` and ``/`` beside it must never be reached.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import openai
import pytest
from aiohttp import web
from conftest import Reply, chunk, model, start_app, text_stream
from openai_schema import assert_valid
from test_tool_loop import USER, answer, calls, events, tool_messages

SECRET = "tok/en+1=&é#x"  # every character that encodes differently in some form

_Q = {"in": "query", "schema": {"type": "string"}}


def _op(op_id: str, *params: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"operationId": op_id, "parameters": list(params)}}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Echo", "version": "1"},
    "paths": {
        "/echo": _op(
            "echo",
            {"name": "q", **_Q},
            {"name": "path", "in": "query", "allowReserved": True, "schema": {"type": "string"}},
            {
                "name": "filter",
                "in": "query",
                "style": "form",
                "explode": True,
                "schema": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            {"name": "X-Note", "in": "header", "schema": {"type": "string"}},
            {"name": "X-Api-Key", "in": "header", "schema": {"type": "string"}},
            {"name": "sid", "in": "cookie", "schema": {"type": "string"}},
            {"name": "Key", **_Q},
            {"name": "Cookie", "in": "header", "schema": {"type": "string"}},
        ),
        "/echo-text": _op("echoText"),
        "/echo-binary": _op("echoBinary"),
        "/big": _op("big", {"name": "pad", "in": "query", "schema": {"type": "integer"}}),
        "/go": _op("go", {"name": "to", **_Q}),
        "/slow": _op("slow"),
        "/upload": {
            "post": {
                "operationId": "upload",
                "requestBody": {
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            }
                        }
                    }
                },
            }
        },
    },
}


class EchoServer:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.active = 0
        self.peak = 0
        self.app = web.Application(middlewares=[self._track])
        r = self.app.router
        r.add_get("/api/echo", self.echo)
        r.add_get("/api/echo-text", self.echo_text)
        r.add_get("/api/echo-binary", self.echo_binary)
        r.add_get("/api/big", self.big)
        r.add_get("/api/go", self.go)
        r.add_get("/api/slow", self.slow)
        r.add_route("*", "/{tail:.*}", self.elsewhere)

    @web.middleware
    async def _track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.paths.append(request.raw_path)
        return await handler(request)

    async def echo(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "raw_query": request.query_string,
                "query": dict(request.query),  # decoded, so JSON-escaped on the way back
                "headers": dict(request.headers),
                "cookies": dict(request.cookies),
                "nested": {"list": [request.headers.get("Authorization")]},
            }
        )

    async def echo_text(self, request: web.Request) -> web.Response:
        lines = [f"{k}: {v}" for k, v in request.headers.items()]
        return web.Response(text="\n".join([request.raw_path, *lines]))

    async def echo_binary(self, request: web.Request) -> web.Response:
        """Binary data whose Content-Type parameters echo the query (and its credential)."""
        ctype = f"Image/PNG; echo={request.query_string}"
        return web.Response(body=b"\x00\x01", headers={"Content-Type": ctype})

    async def big(self, request: web.Request) -> web.Response:
        pad = int(request.query.get("pad", "0"))
        auth = request.headers.get("Authorization", "")
        return web.Response(text="x" * pad + auth + "y" * 200_000)

    async def go(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def slow(self, request: web.Request) -> web.Response:
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.15)
        self.active -= 1
        return web.json_response({"ok": True})

    async def elsewhere(self, request: web.Request) -> web.Response:
        return web.json_response({"reached": request.path})


@pytest.fixture
async def echo_server(tmp_path):
    server = EchoServer()
    runner, server.url = await start_app(server.app)
    (tmp_path / "echo.json").write_text(json.dumps(SPEC))
    yield server
    await runner.cleanup()


@pytest.fixture
def gateway(fake_upstream, make_gateway, echo_server, oai):
    async def make(auth: dict | None = None, limits: dict | None = None, **toolset: Any):
        up = await fake_upstream()
        ts = {"name": "echo", "spec": "echo.json", "base_url": echo_server.url + "/api"}
        ts.update({"auth": auth} if auth else {}, **toolset)
        raw: dict[str, Any] = {"tools": [ts], "models": [model("m", up, tools=["echo"])]}
        if limits:
            raw["limits"] = limits
        gw = await make_gateway(raw)
        return up, oai(gw)

    return make


async def call_tool(gateway, name: str, args: dict, **kw: Any) -> str:
    up, client = await gateway(**kw)
    up.push(calls((name, args)), answer())
    await client.chat.completions.create(model="m", messages=USER)
    return tool_messages(up.received[1])[0]["content"]


def assert_no_form_of(secret: str, text: str) -> None:
    for form in (secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]):
        assert form not in text, (form, text)


# --- item 1: every form of a credential -----------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {"type": "query", "name": "key", "value": SECRET},
        {"type": "cookie", "name": "session", "value": SECRET},
        {"type": "header", "name": "X-Token", "value": SECRET},
        {"type": "bearer", "token": SECRET},
        {"type": "basic", "username": "ann", "password": SECRET},
    ],
    ids=lambda a: a["type"],
)
@pytest.mark.parametrize("op", ["echo", "echoText"])
async def test_percent_encoded_query_credential_is_redacted(gateway, auth, op):
    content = await call_tool(gateway, op, {}, auth=auth)
    assert content.startswith("HTTP 200") and "[redacted]" in content
    assert_no_form_of(SECRET, content)
    if auth["type"] == "basic":
        token = base64.b64encode(f"ann:{SECRET}".encode()).decode()
        assert token.rstrip("=") not in content


async def test_binary_response_content_type_does_not_echo_the_credential(gateway):
    """The binary note names the media type only: its parameters are the server's words."""
    auth = {"type": "query", "name": "key", "value": SECRET}
    content = await call_tool(gateway, "echoBinary", {}, auth=auth)
    assert content == "HTTP 200\n[binary response: image/png, 2 bytes]"


async def test_secret_straddling_the_cut_leaves_no_prefix(gateway):
    """The secret starts just before max_tool_response_bytes and the body goes on past it."""
    token = "TOOLBEARERSECRET-f6g7h8"
    for pad in (990, 1000, 1010, 1020):  # before, at and across the cut
        content = await call_tool(
            gateway,
            "big",
            {"pad": pad},
            auth={"type": "bearer", "token": token},
            limits={"max_tool_response_bytes": 1024},
        )
        assert "…[truncated" in content
        kept = content.split("\n")[1].split("…[truncated")[0]
        assert "TOOLB" not in kept and "Bearer TOOL" not in kept, pad
        assert not any(kept.rstrip("\n").endswith(token[:n]) for n in range(2, len(token)))


# --- item 3: upstream error bodies ----------------------------------------------------------


def echo_error(rec) -> Reply:
    """An upstream that echoes the request in nested error details, as some do."""
    headers = {str(k): v for k, v in rec.headers.items()}
    return Reply(
        status=400,
        json={
            "error": {
                "message": "bad request",
                "type": "invalid_request_error",
                "details": [{"headers": headers}, ["auth", headers.get("Authorization")]],
                "echo": {"key": quote(headers.get("api-key") or "", safe="")},
            }
        },
    )


async def test_nested_upstream_error_details_are_redacted(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.default = echo_error
    gw = await make_gateway({"models": [model("m", up)]})
    with pytest.raises(openai.BadRequestError) as e:
        await oai(gw).chat.completions.create(model="m", messages=USER)
    text = e.value.response.text
    assert "sk-upstream-secret" not in text and "[redacted]" in text
    body = e.value.response.json()
    assert body["error"]["details"][1] == ["auth", "Bearer [redacted]"]
    assert_valid("ErrorResponse", body)


async def test_azure_style_api_key_header_is_redacted(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    up.default = echo_error
    key = "azure/key+with=odd&chars"
    gw = await make_gateway(
        {"models": [{"id": "az", "base_url": up.url + "/v1", "headers": {"api-key": key}}]}
    )
    with pytest.raises(openai.BadRequestError) as e:
        await oai(gw).chat.completions.create(model="az", messages=USER)
    assert up.received[0].headers["api-key"] == key
    assert_no_form_of(key, e.value.response.text)
    assert "[redacted]" in e.value.response.text


async def test_plain_text_upstream_error_echo_is_redacted(fake_upstream, make_gateway, oai):
    up = await fake_upstream()
    echoed = quote_plus("sk-upstream-secret") + " " + json.dumps("sk-upstream-secret")
    up.default = Reply(status=500, raw=echoed.encode(), content_type="text/plain")
    gw = await make_gateway({"models": [model("m", up)]})
    with pytest.raises(openai.InternalServerError) as e:
        await oai(gw).chat.completions.create(model="m", messages=USER)
    assert "sk-upstream-secret" not in e.value.response.text
    assert e.value.response.json()["error"]["message"] == '[redacted] "[redacted]"'


# --- item 7: redirects ----------------------------------------------------------------------


@pytest.mark.parametrize("to", ["/admin", "/", "/api/../admin", "/api/%2e%2e/admin", "/apix"])
async def test_tool_redirect_outside_base_path_is_not_followed(gateway, echo_server, to):
    content = await call_tool(gateway, "go", {"to": to})
    assert content.startswith("HTTP 302\nRedirect to a path outside /api/ was not followed")
    assert echo_server.paths == [f"/api/go?to={quote(to, safe='')}"]


async def test_tool_redirect_inside_base_path_is_followed(gateway, echo_server):
    content = await call_tool(gateway, "go", {"to": "/api/echo-text"})
    assert content.startswith("HTTP 200\n/api/echo-text")


@pytest.mark.parametrize("to", ["http://h:99999999/", "http://[::1/", "http://127.0.0.1:abc/"])
async def test_invalid_redirect_location_is_a_tool_message(gateway, to):
    content = await call_tool(gateway, "go", {"to": to})
    assert content == "HTTP 302\nRedirect to an invalid URL was not followed."


# --- item 8: credentials are applied last ---------------------------------------------------

QUERY_AUTH = {"type": "query", "name": "key", "value": "real-query-key"}


def echoed(content: str) -> dict:
    status, _, body = content.partition("\n")
    assert status == "HTTP 200", content
    return json.loads(body)


@pytest.mark.parametrize("value", ["a&key=evil", "a#", "a&key=evil#", "x=1;key=evil"])
async def test_allow_reserved_value_cannot_override_query_credential(gateway, echo_server, value):
    content = await call_tool(gateway, "echo", {"path": value}, auth=QUERY_AUTH)
    query = echoed(content)["query"]
    assert query == {"path": value, "key": "[redacted]"}  # one key, the configured one
    assert echo_server.paths[0].endswith("&key=real-query-key")


async def test_allow_reserved_keeps_other_reserved_characters(gateway, echo_server):
    await call_tool(gateway, "echo", {"path": "/a/b:c,d?e@f"})
    assert echo_server.paths == ["/api/echo?path=/a/b:c,d?e@f"]


@pytest.mark.parametrize(
    "args, where",
    [
        ({"filter": {"key": "evil"}}, "query parameter 'key'"),
        ({"filter": {"KEY ": "evil"}}, "query parameter 'KEY '"),
    ],
)
async def test_exploded_object_cannot_choose_a_credential_query_name(
    gateway, echo_server, args, where
):
    content = await call_tool(gateway, "echo", args, auth=QUERY_AUTH)
    assert content.startswith(f"Error: the {where} is set by the gateway's configuration")
    assert echo_server.paths == []


@pytest.mark.parametrize(
    "auth, args",
    [
        (QUERY_AUTH, {"Key": "evil"}),
        ({"type": "cookie", "name": "SID", "value": "real-cookie"}, {"sid": "evil"}),
        ({"type": "cookie", "name": "session", "value": "real-cookie"}, {"Cookie": "session=e"}),
    ],
)
async def test_parameter_named_like_a_credential_is_refused(gateway, echo_server, auth, args):
    """Names the converter does not hide (other case, a Cookie header) are refused here."""
    content = await call_tool(gateway, "echo", args, auth=auth)
    assert "is set by the gateway's configuration and cannot be chosen" in content
    assert echo_server.paths == []


async def test_configured_credential_header_wins_over_a_model_header(gateway):
    content = await call_tool(gateway, "echo", {"X-Note": "mine"}, headers={"X-Note": "configured"})
    assert echoed(content)["headers"]["X-Note"] == "configured"


async def test_hash_in_a_value_never_reaches_the_url_raw(gateway, echo_server):
    await call_tool(gateway, "echo", {"q": "a#b", "path": "c#d"})
    assert echo_server.paths == ["/api/echo?q=a%23b&path=c%23d"]


# --- item 14: calls per round and per toolset -----------------------------------------------


async def test_excess_tool_calls_get_a_tool_message(gateway, echo_server):
    up, client = await gateway(limits={"max_tool_calls_per_round": 2})
    up.push(calls(*[("echoText", {})] * 5), answer())
    res = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert res.headers["x-gateway-tool-calls"] == "2"
    contents = [m["content"] for m in tool_messages(up.received[1])]
    assert [c.startswith("HTTP 200") for c in contents] == [True, True, False, False, False]
    assert contents[4].startswith("Error: echoText was not called: at most 2 function calls")
    assert "max_tool_calls_per_round" in contents[4]
    assert len(echo_server.paths) == 2


async def test_tool_requests_per_toolset_are_capped(gateway, echo_server):
    up, client = await gateway(max_concurrency=2)
    up.push(calls(*[("slow", {})] * 6), answer())
    await client.chat.completions.create(model="m", messages=USER)
    assert len(echo_server.paths) == 6 and 1 <= echo_server.peak <= 2


# --- item 17: values the HTTP stack refuses -------------------------------------------------


@pytest.mark.parametrize("bad", ["a\x00b", "a\x0bb", "a\x0cb", "a\x7fb", "a\rb", "a\nb"])
async def test_control_character_header_value_is_a_tool_message(gateway, echo_server, bad):
    content = await call_tool(gateway, "echo", {"X-Note": bad})
    assert content == (
        "Error: the header parameter X-Note may not contain line breaks or other control "
        "characters."
    )
    assert echo_server.paths == []


async def test_multipart_field_name_with_control_characters_is_a_tool_message(gateway, echo_server):
    content = await call_tool(gateway, "upload", {"requestBody": {"a\r\nX-Evil: 1": "v"}})
    assert content.startswith("Error: the form field name")
    assert echo_server.paths == []


async def test_upstream_error_event_in_a_tool_loop_stream_is_redacted(gateway):
    up, client = await gateway()
    error = {"message": "boom", "details": [{"auth": "Bearer sk-upstream-secret"}]}
    up.push(Reply(chunks=[chunk({"role": "assistant", "content": ""}), {"error": error}]))
    body = {"model": "m", "messages": USER, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{client.base_url}chat/completions", json=body) as r,
    ):
        raw = await r.read()
    assert b"sk-upstream-secret" not in raw
    [event] = [e for e in events(raw) if "error" in e]
    assert event["error"]["details"] == [{"auth": "Bearer [redacted]"}]


async def test_upstream_redirect_to_another_host_is_not_followed(fake_upstream, make_gateway, oai):
    """aiohttp would follow it and keep an Azure-style api-key header on the way."""
    up, elsewhere = await fake_upstream(), await fake_upstream()
    up.default = Reply(status=307, headers={"Location": elsewhere.url + "/steal?k=1"})
    key = "azure-key-never-elsewhere"
    gw = await make_gateway(
        {"models": [{"id": "az", "base_url": up.url + "/v1", "headers": {"api-key": key}}]}
    )
    with pytest.raises(openai.APIStatusError) as e:
        await oai(gw).chat.completions.create(model="az", messages=USER)
    assert e.value.status_code == 502 and elsewhere.received == []
    body = e.value.response.json()
    assert body["error"]["code"] == "upstream_redirect"
    assert f"a redirect to {elsewhere.url}/steal;" in body["error"]["message"]
    assert_valid("ErrorResponse", body)


async def test_a_skipped_stream_event_is_logged_without_the_key(gateway, caplog):
    up, client = await gateway()
    bad = b"data: not json, echoing Bearer sk-upstream-secret\n\n"
    up.push(Reply(chunks=[bad, *text_stream(["Hi"])]))
    body = {"model": "m", "messages": USER, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{client.base_url}chat/completions", json=body) as r,
    ):
        await r.read()
    assert "skipping a stream event that is not JSON" in caplog.text
    assert "sk-upstream-secret" not in caplog.text and "[redacted]" in caplog.text
