"""Fuzzing with Hypothesis: chat requests generated from OpenAI's own document, and worse.

The gateway (a pass-through model and a model with gateway tools, against a fake upstream
that always answers) must never answer 5xx, and every error must be OpenAI-shaped. About a
thousand requests per run, so the suite stays fast; ``GATEWAY_FUZZ_EXAMPLES`` scales it up.
The server runs in a thread with its own event loop, so Hypothesis drives it from plain
synchronous tests.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeUpstream, start_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_schema import URN, _registry, assert_valid
from toolapi import SPEC, ToolAPI

from gateway.app import create_app
from gateway.configload import build_config

#: cases per test (GATEWAY_FUZZ_EXAMPLES=5000 for a longer run)
EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "600"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
MODELS = ["m", "t", "no-such-model"]


# --- strategies from the document --------------------------------------------------------

_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)
)
_ANY_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def from_schema(schema: Any, schemas: dict[str, Any], depth: int = 0) -> st.SearchStrategy:
    """Instances (mostly valid) of a schema of OpenAI's document; refs followed to depth 8."""
    if not isinstance(schema, dict) or depth > 8:
        return _JSON_LEAF
    if "$ref" in schema:
        return from_schema(schemas[schema["$ref"].rsplit("/", 1)[1]], schemas, depth + 1)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, schemas, depth + 1) for s in schema[key]])
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            part = schemas[part["$ref"].rsplit("/", 1)[1]] if "$ref" in part else part
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return from_schema(merged, schemas, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, schemas, depth) for k in kind])
    return _typed(kind, schema, schemas, depth)


def _typed(kind: Any, schema: dict, schemas: dict, depth: int) -> st.SearchStrategy:
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if not props:
            return st.dictionaries(st.text(max_size=8), _JSON_LEAF, max_size=3)
        required = [k for k in schema.get("required", []) if k in props]
        optional = {k: from_schema(v, schemas, depth + 1) for k, v in props.items()}
        return st.fixed_dictionaries({k: optional.pop(k) for k in required}, optional=optional)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), schemas, depth + 1), max_size=3)
    if kind == "string":
        return st.text(max_size=20)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _ANY_JSON


def chat_requests() -> st.SearchStrategy:
    schemas = _registry().contents(URN)["components"]["schemas"]
    base = from_schema({"$ref": "#/components/schemas/CreateChatCompletionRequest"}, schemas)
    return st.tuples(base, st.sampled_from(MODELS)).map(lambda p: {**p[0], "model": p[1]})


# --- the gateway, in a thread ------------------------------------------------------------


class Served:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        up, tools = FakeUpstream(), ToolAPI()
        self.runners = [(await start_app(up.app))[0], (await start_app(tools.app))[0]]
        up.url = f"http://127.0.0.1:{self.runners[0].addresses[0][1]}"
        tools_url = f"http://127.0.0.1:{self.runners[1].addresses[0][1]}"
        (self.tmp / "api.json").write_text(json.dumps(SPEC))
        raw = {
            "tools": [{"name": "api", "spec": "api.json", "base_url": tools_url}],
            "models": [
                {"id": "m", "base_url": up.url + "/v1"},
                {"id": "t", "base_url": up.url + "/v1", "tools": ["api"]},
            ],
        }
        runner, self.url = await start_app(create_app(build_config(raw, "fuzz", self.tmp)))
        self.runners.append(runner)

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Client:
    """One kept-alive HTTP/1.1 connection (the standard library's), reopened when closed."""

    def __init__(self, url: str) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[Client]:
    served = Served(tmp_path_factory.mktemp("fuzz"))
    served.thread.start()
    assert served.ready.wait(30)
    client = Client(served.url)
    yield client
    client.conn.close()
    served.stop()


def check(status: int, raw: bytes) -> None:
    assert status < 500, raw[:500]
    if status >= 400:
        body = json.loads(raw)
        assert_valid("ErrorResponse", body)
        assert set(body["error"]) == {"message", "type", "param", "code"}


# --- the tests ---------------------------------------------------------------------------


@SETTINGS
@given(body=chat_requests())
def test_schema_generated_chat_requests_never_get_a_5xx(gateway, body):
    check(*gateway.post("/v1/chat/completions", json.dumps(body).encode()))


_HOSTILE = st.one_of(
    st.binary(max_size=200),
    _ANY_JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"model": st.sampled_from(MODELS) | _JSON_LEAF, "messages": _ANY_JSON},
        optional={"stream": _JSON_LEAF, "tools": _ANY_JSON, "n": _JSON_LEAF},
    ).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda d: b'{"model":"t","messages":' + b"[" * d + b"]" * d + b"}"),
    st.sampled_from(MODELS).map(
        lambda m: f'{{"model":"{m}","messages":[{{"role":"user","content":"\\ud800"}}]}}'.encode()
    ),
)


@settings(SETTINGS, max_examples=EXAMPLES * 2 // 3)
@given(raw=_HOSTILE, path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]))
def test_hostile_bodies_never_get_a_5xx(gateway, raw, path):
    check(*gateway.post(path, raw))
