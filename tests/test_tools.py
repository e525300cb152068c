"""Function names per model: unique within what one model is offered, stable, reported."""

from __future__ import annotations

import json

import yaml

from gateway.cli import main
from gateway.configload import build_config
from gateway.tools import load_tools


def _spec(*ids: str) -> dict:
    paths = {f"/{i}/{n}": {"get": {"operationId": op}} for n, (i, op) in enumerate(enumerate(ids))}
    return {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "servers": [{"url": "https://api.test"}],
        "paths": paths,
    }


def _write(tmp_path, models: list[dict]) -> dict:
    (tmp_path / "a.json").write_text(json.dumps(_spec("get_secret", "list_a")))
    (tmp_path / "b.json").write_text(json.dumps(_spec("get_secret", "list_b", "list_b")))
    raw = {
        "tools": [{"name": "A", "spec": "a.json"}, {"name": "B", "spec": "b.json"}],
        "models": [{"base_url": "http://x", **m} for m in models],
    }
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(raw))
    return raw


async def test_another_models_toolset_does_not_rename_a_function(tmp_path):
    raw = _write(
        tmp_path,
        [
            {"id": "one", "tools": ["A"]},
            {"id": "two", "tools": ["B"]},
            {"id": "both", "tools": ["A", "B"]},
        ],
    )
    tools = await load_tools(build_config(raw, "cfg", tmp_path))
    assert [t.name for t in tools.for_model("one")] == ["get_secret", "list_a"]
    two = [t.name for t in tools.for_model("two")]
    assert two[0] == "get_secret" and two[1] == "list_b" and two[2].startswith("list_b_")
    both = [t.name for t in tools.for_model("both")]
    assert both[:2] == ["get_secret", "list_a"]
    assert both[2].startswith("get_secret_") and len(both) == len(set(both)) == 5
    assert tools.for_model("both")[2].operation.toolset == "B"
    again = await load_tools(build_config(raw, "cfg", tmp_path))
    assert [t.name for t in again.for_model("both")] == both  # stable across restarts


async def test_find_tools_is_reserved_for_a_model_that_can_search(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_spec("find_tools", "x")))
    raw = {
        "tools": [{"name": "A", "spec": "a.json"}],
        "models": [
            {"id": "s", "base_url": "http://x", "tools": ["A"], "tool_selection": {"search": True}},
            {"id": "p", "base_url": "http://x", "tools": ["A"]},
        ],
    }
    tools = await load_tools(build_config(raw, "cfg", tmp_path))
    assert tools.for_model("s")[0].name.startswith("find_tools_")
    assert tools.for_model("p")[0].name == "find_tools"


def test_check_reports_every_rename(tmp_path, capsys):
    _write(tmp_path, [{"id": "both", "tools": ["A", "B"]}])
    assert main(["check", "--config", str(tmp_path / "gw.yaml")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("renamed: ")]
    assert len(lines) == 2
    assert lines[0].startswith("renamed: toolset B: GET /2/2 is named list_b_")
    assert "instead of list_b (another operation of the toolset has that name)" in lines[0]
    assert lines[1].startswith("renamed: model both: toolset B: GET /0/0 is named get_secret_")
    assert lines[1].endswith("instead of get_secret (toolset A has that name)")
