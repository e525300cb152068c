"""tool_selection end to end: a scripted upstream records which functions it was offered."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from aiohttp import web
from conftest import Reply, model, start_app, wait_for
from test_tool_loop import answer, calls, collect

from gateway.cli import main
from gateway.configload import build_config
from gateway.errors import ConfigError
from gateway.state import STATE

THINGS = [
    "issue",
    "pull request",
    "repository",
    "release",
    "branch",
    "webhook",
    "label",
    "milestone",
    "gist",
    "team",
]
VERBS = {"create": "post", "list": "get", "get": "get", "update": "patch", "delete": "delete"}


def _op_id(verb: str, thing: str) -> str:
    return verb + "".join(w.capitalize() for w in thing.split())


def api_spec(url: str = "https://api.test") -> dict:
    """50 operations: create/list/get/update/delete of ten kinds of thing."""
    paths: dict = {}
    for thing in THINGS:
        base = "/" + thing.replace(" ", "-") + "s"
        for verb, method in VERBS.items():
            path = base if verb in ("create", "list") else base + "/{id}"
            params = [] if path == base else [{"name": "id", "in": "path", "required": True}]
            op = {
                "operationId": _op_id(verb, thing),
                "summary": f"{verb.capitalize()} a {thing}",
                "parameters": params,
                "responses": {"200": {"description": "ok"}},
            }
            paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "servers": [{"url": url}],
        "paths": paths,
    }


class Recorder:
    """A tool server that answers every call with {"ok": true} and records the paths."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(f"{request.method} {request.path}")
        return web.json_response({"ok": True})


@pytest.fixture
async def api(tmp_path):
    rec = Recorder()
    runner, url = await start_app(rec.app)
    (tmp_path / "api.json").write_text(json.dumps(api_spec(url)))
    yield rec
    await runner.cleanup()


@pytest.fixture
def gateway(fake_upstream, make_gateway, api, oai):
    async def make(selection: dict | None, extra_models: list | None = None):
        up = await fake_upstream()
        m = model("m", up, tools=["api"])
        if selection is not None:
            m["tool_selection"] = selection
        raw = {"tools": [{"name": "api", "spec": "api.json"}], "models": [m, *(extra_models or [])]}
        gw = await make_gateway(raw)
        return up, gw, oai(gw)

    return make


def offered(rec) -> list[str]:
    return [t["function"]["name"] for t in rec.body.get("tools", [])]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- selection -----------------------------------------------------------------------------


async def test_without_tool_selection_every_function_is_offered(gateway):
    up, _, client = await gateway(None)
    up.push(answer())
    await client.chat.completions.create(model="m", messages=user("open an issue"))
    assert len(offered(up.received[0])) == 50


async def test_no_more_functions_than_max_functions_are_all_offered_in_order(gateway):
    """Selection only ranks when the model has more functions than max_functions."""
    up, _, client = await gateway({"max_functions": 50})
    up.push(answer())
    await client.chat.completions.create(model="m", messages=user("open an issue"))
    up_all, _, client_all = await gateway(None)
    up_all.push(answer())
    await client_all.chat.completions.create(model="m", messages=user("open an issue"))
    assert offered(up.received[0]) == offered(up_all.received[0])
    assert len(offered(up.received[0])) == 50


async def test_only_the_best_functions_are_offered(gateway):
    up, _, client = await gateway({"max_functions": 5})
    up.push(answer())
    await client.chat.completions.create(
        model="m", messages=user("Please open a new issue about the login bug")
    )
    names = offered(up.received[0])
    assert len(names) == 5 and names[0] == "createIssue"


async def test_the_latest_user_message_counts_most(gateway):
    up, _, client = await gateway({"max_functions": 4})
    up.push(answer())
    messages = [
        {"role": "user", "content": "list the webhooks"},
        {"role": "assistant", "content": "There are two webhooks."},
        {"role": "user", "content": "now delete the milestone 3"},
    ]
    await client.chat.completions.create(model="m", messages=messages)
    names = offered(up.received[0])
    assert names[0] == "deleteMilestone"
    assert "deleteWebhook" in names  # the earlier message still counts, with less weight


async def test_a_called_function_stays_offered_in_later_rounds(gateway, api):
    up, _, client = await gateway({"max_functions": 3})
    up.push(calls(("deleteTeam", {"id": "7"})), answer())
    await client.chat.completions.create(model="m", messages=user("open an issue"))
    assert "deleteTeam" not in offered(up.received[0])
    assert api.paths == ["DELETE /teams/7"]
    second = offered(up.received[1])
    assert second[0] == "deleteTeam" and "createIssue" in second


@pytest.mark.parametrize("stream", [False, True])
async def test_find_tools_offers_what_it_found_in_the_next_round(gateway, api, stream):
    up, _, client = await gateway({"max_functions": 3, "search": True})
    up.push(calls(("find_tools", {"query": "remove a team"})), answer())
    if stream:
        res = await client.chat.completions.with_raw_response.create(
            model="m", messages=user("open an issue"), stream=True
        )
        text, _ = await collect(res.parse())
    else:
        res = await client.chat.completions.with_raw_response.create(
            model="m", messages=user("open an issue")
        )
        text = res.parse().choices[0].message.content
        assert res.headers["x-gateway-tool-calls"] == "1"  # counted like other calls
    assert text == "It is sunny in Paris."
    first, second = offered(up.received[0]), offered(up.received[1])
    assert "deleteTeam" not in first and first[-1] == "find_tools" and len(first) == 4
    assert second[0] == "deleteTeam" and second[-1] == "find_tools"
    [tool_message] = [m for m in up.received[1].body["messages"] if m["role"] == "tool"]
    assert "- deleteTeam: Delete a team" in tool_message["content"]
    assert api.paths == []  # never sent to a tool server


async def test_find_tools_with_bad_arguments_says_what_it_needs(gateway, api):
    up, _, client = await gateway({"max_functions": 3, "search": True})
    up.push(calls(("find_tools", "{not json")), answer())
    await client.chat.completions.create(model="m", messages=user("open an issue"))
    [tool_message] = [m for m in up.received[1].body["messages"] if m["role"] == "tool"]
    assert tool_message["content"] == 'Error: find_tools needs {"query": "<what you want to do>"}.'


# --- embeddings ----------------------------------------------------------------------------


async def settled(gw) -> None:
    """Wait until the start-up load of the functions' embeddings has ended, either way."""
    selector = gw.app[STATE].current.tools.selectors["m"]
    await wait_for(lambda: not selector.embeddings.loading)


def keyword_embeddings(rec) -> Reply:
    """A toy embedding model: one dimension per kind of thing, 'crew' meaning team."""
    vectors = []
    for text in rec.body["input"]:
        low = text.lower().replace("crew", "team")
        vectors.append([float(t.split()[0] in low) for t in THINGS] + [0.01])
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return Reply(json={"object": "list", "data": data, "model": "toy"})


async def test_embeddings_rank_by_meaning(gateway, fake_upstream):
    emb = await fake_upstream()
    emb.default = keyword_embeddings
    up, gw, client = await gateway(
        {"max_functions": 5, "method": "embeddings", "embedding_model": "emb"},
        [model("emb", emb)],
    )
    await settled(gw)
    assert len(emb.received) == 1  # every function, once, at start-up
    assert len(emb.received[0].body["input"]) == 50
    up.push(answer(), answer())
    await client.chat.completions.create(model="m", messages=user("get rid of the crew"))
    names = offered(up.received[0])
    assert set(names) == {f"{v}Team" for v in VERBS}
    assert [r.path for r in emb.received] == ["/v1/embeddings", "/v1/embeddings"]
    assert emb.received[1].body["input"] == ["get rid of the crew"]  # then only the query
    await client.chat.completions.create(model="m", messages=user("the crew please"))
    assert len(emb.received) == 3


@pytest.mark.parametrize("method", ["embeddings", "hybrid"])
async def test_a_failing_embedding_call_falls_back_to_bm25(gateway, fake_upstream, caplog, method):
    emb = await fake_upstream()
    emb.default = Reply(status=500, json={"error": {"message": "down", "type": "server_error"}})
    up, gw, client = await gateway(
        {"max_functions": 5, "method": method, "embedding_model": "emb"}, [model("emb", emb)]
    )
    await settled(gw)
    up.push(answer())
    with caplog.at_level(logging.WARNING, logger="gateway.selection"):
        res = await client.chat.completions.create(model="m", messages=user("open an issue"))
    assert res.choices[0].message.content == "It is sunny in Paris."
    assert offered(up.received[0])[0] == "createIssue"
    assert "embeddings unavailable" in caplog.text and "bm25 for this request" in caplog.text
    assert "sk-upstream-secret" not in caplog.text


async def test_embeddings_of_the_wrong_shape_fall_back_to_bm25(gateway, fake_upstream, caplog):
    emb = await fake_upstream()
    emb.default = Reply(json={"object": "list", "data": [{"index": 0, "embedding": [1.0]}]})
    up, gw, client = await gateway(
        {"max_functions": 5, "method": "hybrid", "embedding_model": "emb"}, [model("emb", emb)]
    )
    await settled(gw)
    up.push(answer())
    await client.chat.completions.create(model="m", messages=user("open an issue"))
    assert offered(up.received[0])[0] == "createIssue"
    assert "expected 50 embeddings" in caplog.text  # at start-up, then for the request
    assert "bm25 for this request" in caplog.text


# --- config and CLI ------------------------------------------------------------------------


def test_embedding_methods_need_a_known_embedding_model(tmp_path):
    def cfg(selection: dict) -> None:
        raw = {"models": [{"id": "m", "base_url": "http://x", "tool_selection": selection}]}
        build_config(raw, "cfg", tmp_path)

    with pytest.raises(ConfigError) as e:
        cfg({"method": "hybrid"})
    assert "models[0].tool_selection.embedding_model: required for method 'hybrid'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        cfg({"method": "embeddings", "embedding_model": "nope"})
    assert "embedding_model: unknown model id 'nope' (configured: m)" in str(e.value)


def test_tool_selection_without_the_extra_installed_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bm25s" else real(name, *a)
    )
    raw = {"models": [{"id": "m", "base_url": "http://x", "tool_selection": {}}]}
    with pytest.raises(ConfigError) as e:
        build_config(raw, "cfg", tmp_path)
    assert "pip install 'gateway[selection]'" in str(e.value)


def _cli_config(tmp_path, n_ops: int | None = None, **selection) -> str:
    spec = api_spec()
    if n_ops:
        spec["paths"] = {f"/x{i}": {"get": {"operationId": f"op{i}"}} for i in range(n_ops)}
    (tmp_path / "api.json").write_text(json.dumps(spec))
    m = {"id": "m", "base_url": "http://x", "tools": ["api"]}
    raw = {
        "tools": [{"name": "api", "spec": "api.json"}],
        "models": [m, {**m, "id": "sel", "tool_selection": selection}],
    }
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(raw))
    return str(tmp_path / "gw.yaml")


def test_tools_query_prints_what_would_be_offered(tmp_path, capsys):
    cfg = _cli_config(tmp_path, max_functions=3, search=True)
    assert main(["tools", "--config", cfg, "--model", "sel", "--query", "open an issue"]) == 0
    items = json.loads(capsys.readouterr().out)
    names = [i["function"]["name"] for i in items]
    assert names[0] == "createIssue" and names[-1] == "find_tools" and len(names) == 4
    assert items[0]["path"] == "/issues" and items[-1]["toolset"] is None
    assert main(["tools", "--config", cfg, "--model", "m", "--query", "open an issue"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 50  # no tool_selection: everything
    assert main(["tools", "--config", cfg, "--query", "open an issue"]) == 1
    assert "--query needs --model" in capsys.readouterr().err


def test_check_does_not_warn_about_many_functions_with_tool_selection(tmp_path, capsys):
    cfg = _cli_config(tmp_path, n_ops=130, max_functions=24)
    assert main(["check", "--config", cfg]) == 0
    out = capsys.readouterr().out
    warnings = [x for x in out.splitlines() if "OpenAI accepts" in x]
    assert len(warnings) == 1 and "model m is offered 130" in warnings[0]
    assert "model sel is offered 130 function(s) (tool_selection: 24 per round by bm25)" in out


async def test_an_unknown_function_gets_the_offered_names_not_every_name(gateway):
    up, _, client = await gateway({"max_functions": 3, "search": True})
    up.push(calls(("closeAllTheThings", {})), answer())
    await client.chat.completions.create(model="m", messages=user("open an issue"))
    [tool_message] = [m for m in up.received[1].body["messages"] if m["role"] == "tool"]
    text = tool_message["content"]
    assert text.startswith("Error: there is no function named 'closeAllTheThings'. ")
    assert "Functions offered now: createIssue, " in text and "find_tools to search" in text
    assert "deleteTeam" not in text


async def test_requests_do_not_wait_for_the_embeddings_to_load(gateway, fake_upstream):
    emb = await fake_upstream()
    emb.default = keyword_embeddings
    emb.push(Reply(json={}, delay=30))  # the start-up load hangs
    up, gw, client = await gateway(
        {"max_functions": 5, "method": "hybrid", "embedding_model": "emb"}, [model("emb", emb)]
    )
    await wait_for(lambda: len(emb.received) == 1)
    up.push(answer())
    await client.chat.completions.create(model="m", messages=user("open an issue"))
    assert offered(up.received[0])[0] == "createIssue"  # BM25 meanwhile
    assert len(emb.received) == 1  # no query embedding either


async def test_tools_query_with_embeddings_embeds_like_serve(tmp_path, fake_upstream, capsys):
    import asyncio

    emb = await fake_upstream()
    emb.default = keyword_embeddings
    (tmp_path / "api.json").write_text(json.dumps(api_spec()))
    selection = {"max_functions": 5, "method": "embeddings", "embedding_model": "emb"}
    raw = {
        "tools": [{"name": "api", "spec": "api.json"}],
        "models": [
            {"id": "m", "base_url": "http://x", "tools": ["api"], "tool_selection": selection},
            model("emb", emb),
        ],
    }
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(raw))
    argv = ["tools", "--config", str(tmp_path / "gw.yaml"), "--model", "m", "--query", "the crew"]
    assert await asyncio.to_thread(main, argv) == 0
    names = [i["function"]["name"] for i in json.loads(capsys.readouterr().out)]
    assert set(names) == {f"{v}Team" for v in VERBS}
    assert [len(r.body["input"]) for r in emb.received] == [50, 1]
