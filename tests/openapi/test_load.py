"""Loading specs under attack: bounded depth, aliases, files, fetches; errors name the file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.configload import build_config
from gateway.openapi import load, parse
from gateway.openapi.load import SpecError, fetch_with, load_spec
from gateway.tools import load_tools
from gateway.upstream import new_session

DOC = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}
LAUGHS = "\n".join(
    ["openapi: 3.0.3", "info: {title: t, version: '1'}", "paths: {}", "a0: &a0 [lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
)


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return name


async def spec_error(tmp_path: Path, source: str, **kw: Any) -> SpecError:
    with pytest.raises(SpecError) as e:
        await load_spec(source, tmp_path, **kw)
    return e.value


# --- YAML aliases and depth ----------------------------------------------------------------


async def test_billion_laughs_yaml_is_refused_naming_the_file(tmp_path):
    error = await spec_error(tmp_path, write(tmp_path, "laughs.yaml", LAUGHS))
    assert "laughs.yaml" in str(error)
    assert f"aliases expand to more than {parse.MAX_ALIAS_NODES} nodes" in str(error)


async def test_yaml_alias_inside_its_own_anchor_is_refused(tmp_path):
    text = "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths: &p {x: *p}\n"
    error = await spec_error(tmp_path, write(tmp_path, "loop.yaml", text))
    assert "loop.yaml" in str(error) and "*p refers to a node that contains it" in str(error)


async def test_yaml_anchors_within_the_limits_still_load(tmp_path):
    text = (
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n"
        "x-base: &base {type: string, maxLength: 3}\n"
        "paths:\n  /a:\n    get:\n      operationId: a\n      parameters:\n"
        "        - {name: q, in: query, schema: *base}\n"
        "        - {name: r, in: query, schema: {<<: *base, minLength: 1}}\n"
    )
    spec = await load_spec(write(tmp_path, "ok.yaml", text), tmp_path)
    params = spec.document["paths"]["/a"]["get"]["parameters"]
    assert params[1]["schema"] == {"type": "string", "maxLength": 3, "minLength": 1}


def _nested_yaml_flow(depth: int) -> str:
    return (
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths: {}\nx: "
        + "[" * depth
        + ("]" * depth)
    )


def _nested_yaml_block(depth: int) -> str:
    """Block sequences in compact form: ``- - - x``, one level per two characters."""
    return "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths: {}\nx:\n" + "- " * depth + "x\n"


def _nested_json(depth: int) -> str:
    return json.dumps(DOC)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("flow.yaml", _nested_yaml_flow(1500)),
        ("block.yaml", _nested_yaml_block(1500)),
        ("deep.json", _nested_json(1500)),
        ("deep2.json", _nested_json(300)),
    ],
)
async def test_spec_nested_past_the_limit_is_a_spec_error_not_a_recursion_error(
    tmp_path, name, text
):
    error = await spec_error(tmp_path, write(tmp_path, name, text))
    assert name in str(error) and f"nested deeper than {parse.MAX_DEPTH} levels" in str(error)


async def test_spec_nested_just_under_the_limit_converts(tmp_path):
    schema: dict[str, Any] = {"type": "string"}
    for _ in range((parse.MAX_DEPTH - 12) // 2):
        schema = {"type": "object", "properties": {"p": schema}}
    doc = {
        **DOC,
        "paths": {
            "/a": {
                "post": {
                    "operationId": "a",
                    "requestBody": {"content": {"application/json": {"schema": schema}}},
                }
            }
        },
    }
    write(tmp_path, "deep.json", json.dumps(doc))
    config = build_config({"tools": [{"name": "t", "spec": "deep.json"}]}, "cfg", tmp_path)
    tools = await load_tools(config)
    assert list(tools.tools) == ["a"]
    assert list(tools.tools["a"].validator.iter_errors({"requestBody": {}})) == []


def test_spec_nested_30000_deep_does_not_crash_gateway_check(tmp_path):
    write(tmp_path, "deep.yaml", _nested_yaml_flow(30_000))
    write(tmp_path, "block.yaml", _nested_yaml_block(30_000))
    for spec in ("deep.yaml", "block.yaml"):
        config = tmp_path / "gateway.yaml"
        config.write_text(f"tools:\n  - name: t\n    spec: {spec}\n")
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "check", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 1, out.stderr  # a SIGSEGV would be -11
        assert spec in out.stderr and "nested deeper than" in out.stderr


# --- files ---------------------------------------------------------------------------------


async def test_ref_to_dev_zero_is_refused_as_not_a_regular_file(tmp_path):
    doc = {**DOC, "x-ref": {"$ref": "/dev/zero"}}
    error = await spec_error(tmp_path, write(tmp_path, "s.json", json.dumps(doc)))
    assert "/dev/zero" in str(error) and "not a regular file" in str(error)


async def test_spec_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    error = await asyncio.wait_for(spec_error(tmp_path, "pipe.yaml"), 10)
    assert "pipe.yaml" in str(error) and "not a regular file" in str(error)


async def test_spec_file_larger_than_the_cap_is_refused_without_reading_it_all(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(load, "MAX_SPEC_BYTES", 1000)
    error = await spec_error(tmp_path, write(tmp_path, "big.json", json.dumps(DOC) + " " * 5000))
    assert "big.json" in str(error) and "larger than 1000 bytes" in str(error)


async def test_uppercase_file_ref_from_a_remote_spec_is_refused(tmp_path, aiohttp_server):
    doc = {**DOC, "x-ref": {"$ref": "FILE:///etc/passwd"}}
    url = await _serve(aiohttp_server, {"/spec.json": json.dumps(doc).encode()})
    async with new_session() as session:
        with pytest.raises(SpecError) as e:
            await load_spec(
                f"{url}/spec.json", tmp_path, allow_remote_refs=True, fetch=fetch_with(session)
            )
    assert "may not refer to a local file (FILE:///etc/passwd)" in str(e.value)


# --- URLs ------------------------------------------------------------------------------------


async def _serve(aiohttp_server: Any, routes: dict[str, Any]) -> str:
    app = web.Application()
    for path, handler in routes.items():
        if isinstance(handler, bytes):
            handler = _static(handler)
        app.router.add_get(path, handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def _static(body: bytes) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return handler


def _paths(n: int) -> dict[str, Any]:
    return {f"/p{i}": {"get": {"operationId": f"op{i}"}} for i in range(n)}


async def test_spec_url_arriving_in_two_writes_is_read_whole(tmp_path, aiohttp_server):
    body = json.dumps({**DOC, "paths": _paths(300)}).encode()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(body[:1000])
        await asyncio.sleep(0.05)
        await resp.write(body[1000:])
        return resp

    url = await _serve(aiohttp_server, {"/spec.json": slow})
    async with new_session() as session:
        spec = await load_spec(f"{url}/spec.json", tmp_path, fetch=fetch_with(session))
    assert len(spec.document["paths"]) == 300


async def test_spec_url_larger_than_the_cap_says_so(tmp_path, aiohttp_server, monkeypatch):
    monkeypatch.setattr(load, "MAX_SPEC_BYTES", 100_000)
    url = await _serve(aiohttp_server, {"/spec.json": b" " * 300_000})
    async with new_session() as session:
        with pytest.raises(SpecError) as e:
            await load_spec(f"{url}/spec.json", tmp_path, fetch=fetch_with(session))
    assert "larger than 100000 bytes" in str(e.value) and "/spec.json" in str(e.value)


async def test_spec_url_that_times_out_says_timed_out_after_n_s(tmp_path, aiohttp_server):
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    url = await _serve(aiohttp_server, {"/spec.json": hang})
    async with new_session() as session:
        with pytest.raises(SpecError) as e:
            await load_spec(f"{url}/spec.json", tmp_path, fetch=fetch_with(session, 0.3))
    assert str(e.value) == f"{url}/spec.json: cannot fetch: timed out after 0.3 s"


async def test_spec_url_redirect_to_another_origin_is_not_followed(tmp_path, aiohttp_server):
    other = await _serve(aiohttp_server, {"/spec.json": json.dumps(DOC).encode()})

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{other}/spec.json")

    async def here(request: web.Request) -> web.Response:
        raise web.HTTPFound("/real.json")

    url = await _serve(
        aiohttp_server, {"/away": away, "/here": here, "/real.json": json.dumps(DOC).encode()}
    )
    async with new_session() as session:
        spec = await load_spec(f"{url}/here", tmp_path, fetch=fetch_with(session))
        assert spec.version == "3.0"
        with pytest.raises(SpecError) as e:
            await load_spec(f"{url}/away", tmp_path, fetch=fetch_with(session))
    assert "redirected to another origin" in str(e.value) and "not followed" in str(e.value)


async def test_spec_headers_go_to_the_spec_origin_only(tmp_path, aiohttp_server):
    seen: dict[str, str | None] = {}

    def recording(name: str, body: bytes) -> Any:
        async def handler(request: web.Request) -> web.Response:
            seen[name] = request.headers.get("Authorization")
            return web.Response(body=body, content_type="application/json")

        return handler

    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    other = await _serve(
        aiohttp_server, {"/other.json": recording("other", json.dumps(schema).encode())}
    )
    doc = {
        **DOC,
        "x-a": {"$ref": "same.json"},
        "x-b": {"$ref": f"{other}/other.json"},
    }
    url = await _serve(
        aiohttp_server,
        {
            "/spec.json": recording("spec", json.dumps(doc).encode()),
            "/same.json": recording("same", json.dumps(schema).encode()),
        },
    )
    config = build_config(
        {
            "tools": [
                {
                    "name": "t",
                    "spec": f"{url}/spec.json",
                    "allow_remote_refs": True,
                    "spec_headers": {"Authorization": "Bearer spec-token"},
                }
            ]
        },
        "cfg",
        tmp_path,
    )
    async with new_session() as session:
        await load_tools(config, fetch_with(session))
    assert seen == {"spec": "Bearer spec-token", "same": "Bearer spec-token", "other": None}
