"""schema_detail: compact leaves out what the model does not need, and nothing it does."""

from __future__ import annotations

import copy

from gateway.openapi.compact import compact, plain


def _deep(levels: int) -> dict:
    node: dict = {"type": "string", "description": f"level {levels}"}
    for i in range(levels - 1, 0, -1):
        node = {"type": "object", "description": f"level {i}", "properties": {f"p{i + 1}": node}}
    return node


def test_compact_drops_examples_repeated_titles_and_duplicate_descriptions():
    schema = {
        "type": "object",
        "properties": {
            "per_page": {
                "type": "integer",
                "title": "Per Page",
                "description": "Results per page (max 100).",
                "examples": [30],
                "minimum": 1,
                "maximum": 100,
                "default": 30,
            },
            "state": {"type": "string", "title": "Issue state", "enum": ["open", "closed"]},
            "labels": {
                "type": "array",
                "description": "Labels to add.",
                "items": {"type": "string", "description": "Labels to add."},
            },
            "owner": {"type": "string", "description": "owner"},
        },
        "required": ["state"],
    }
    before = copy.deepcopy(schema)
    out = compact(schema)
    assert schema == before  # never changed in place: the executor shares it
    props = out["properties"]
    assert props["per_page"] == {
        "type": "integer",
        "description": "Results per page (max 100).",
        "minimum": 1,
        "maximum": 100,
        "default": 30,
    }
    assert props["state"] == {"type": "string", "title": "Issue state", "enum": ["open", "closed"]}
    assert props["labels"]["items"] == {"type": "string"}
    assert props["owner"] == {"type": "string"}
    assert out["required"] == ["state"]


def test_descriptions_past_two_levels_of_properties_are_left_out():
    out = compact({"type": "object", "properties": {"p1": _deep(5)}})
    node = out["properties"]["p1"]
    seen = []
    while True:
        seen.append(node.get("description"))
        if "properties" not in node:
            break
        node = next(iter(node["properties"].values()))
    assert seen == ["level 1", "level 2", None, None, None]
    assert node == {"type": "string"}


def test_property_names_that_look_like_keywords_are_kept():
    schema = {
        "type": "object",
        "properties": {
            "examples": {"type": "string"},
            "title": {"type": "string", "title": "Title"},
            "description": {"type": "string"},
        },
    }
    props = compact(schema)["properties"]
    assert props == {
        "examples": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
    }


def test_link_targets_and_html_tags_leave_descriptions():
    text = "See [the docs](https://docs.example.com/a#b) and <a href='/x'>this</a>.  <p>x < 5</p>"
    assert plain(text) == "See the docs and this. x < 5"
    schema = {"type": "object", "properties": {"q": {"type": "string", "description": text}}}
    assert compact(schema)["properties"]["q"]["description"] == plain(text)


async def test_schema_detail_full_keeps_todays_output(tmp_path):
    from test_convert import convert, oas3

    param = {"name": "q", "in": "query", "schema": {"type": "string"}, "example": "cats"}
    op = {
        "operationId": "find",
        "description": "Read [the guide](https://x.test/g).",
        "parameters": [param],
    }
    doc = oas3({"/f": {"get": op}})
    full = (await convert(tmp_path, doc, schema_detail="full")).tools["find"]
    assert full.description == "Read [the guide](https://x.test/g)."
    assert full.parameters["properties"]["q"] == {"type": "string", "examples": ["cats"]}
    small = (await convert(tmp_path, doc)).tools["find"]  # compact is the default
    assert small.description == "Read the guide."
    assert small.parameters["properties"]["q"] == {"type": "string"}
