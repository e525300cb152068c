"""OpenAPI -> OpenAI function tools: every conversion rule, one or more tests each."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from gateway.configload import build_config
from gateway.errors import ConfigError
from gateway.tools import ToolSet, load_tools

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def oas3(paths: dict[str, Any], components: dict[str, Any] | None = None, **top: Any) -> dict:
    doc = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths}
    if components:
        doc["components"] = components
    doc.update(top)
    return doc


async def convert(
    tmp_path: Path,
    *docs: Any,
    fmt: str = "json",
    models: Any = None,
    limits: Any = None,
    **toolset: Any,
) -> ToolSet:
    """Write each doc as a spec file and load them as toolsets t0, t1, ..."""
    toolsets = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"spec{i}.{fmt}"
        if isinstance(doc, str):
            path.write_text(doc)
        else:
            path.write_text(json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc))
        toolsets.append({"name": f"t{i}", "spec": path.name, **toolset})
    raw = {
        "tools": toolsets,
        "models": models
        or [{"id": "m", "base_url": "http://x", "tools": [t["name"] for t in toolsets]}],
    }
    if limits:
        raw["limits"] = limits
    tools = await load_tools(build_config(raw, "cfg", tmp_path))
    for tool in tools.tools.values():
        assert_valid_function(tool.openai()["function"])
    return tools


def assert_valid_function(fn: dict[str, Any]) -> None:
    assert NAME.match(fn["name"]), fn["name"]
    params = fn["parameters"]
    Draft202012Validator.check_schema(params)
    assert params["type"] == "object" and "properties" in params
    json.dumps(fn)
    for node in _walk(params):
        t = node.get("type")
        if t == "array" or (isinstance(t, list) and "array" in t):
            assert "items" in node or "prefixItems" in node, node


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def fn(tools: ToolSet, name: str) -> dict[str, Any]:
    return tools.tools[name].openai()["function"]


# --- the chat UI's cases -------------------------------------------------------------------

WEATHER = oas3(
    {
        "/location": {
            "get": {
                "operationId": "GetCurrentWeather",
                "summary": "Get the current weather",
                "parameters": [
                    {
                        "name": "location",
                        "in": "query",
                        "required": True,
                        "description": "City and state, e.g. San Francisco, CA",
                        "schema": {"type": "string"},
                    }
                ],
            },
            "post": {
                "operationId": "SetLocation",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "location": {
                                        "type": "string",
                                        "description": "The city to remember",
                                    }
                                },
                            }
                        }
                    },
                },
            },
        },
        "/summary": {
            "get": {
                "operationId": "GetWeatherSummary",
                "summary": "A summary of the weather",
                "parameters": [
                    {
                        "name": "location",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
            }
        },
    }
)


async def test_weather_query_parameters(tmp_path):
    tools = await convert(tmp_path, WEATHER)
    current = fn(tools, "GetCurrentWeather")
    assert current["description"] == "Get the current weather"
    assert current["parameters"] == {
        "type": "object",
        "required": ["location"],
        "properties": {
            "location": {"type": "string", "description": "City and state, e.g. San Francisco, CA"}
        },
    }
    assert fn(tools, "GetWeatherSummary")["parameters"]["required"] == ["location"]
    op = tools.tools["GetCurrentWeather"].operation
    assert (op.method, op.path, op.params[0].location) == ("GET", "/location", "query")


async def test_weather_json_body(tmp_path):
    tools = await convert(tmp_path, WEATHER)
    params = fn(tools, "SetLocation")["parameters"]
    assert params["required"] == ["requestBody"]
    location = params["properties"]["requestBody"]["properties"]["location"]
    assert location == {"type": "string", "description": "The city to remember"}
    assert tools.tools["SetLocation"].operation.body.content_type == "application/json"


async def test_stock_path_parameters(tmp_path):
    paths = {}
    for i, path in enumerate(
        [
            "/v1/open-close/{stocksTicker}/{date}",
            "/v2/aggs/ticker/{stocksTicker}/prev",
            "/v2/aggs/ticker/{stocksTicker}/range/{multiplier}/{timespan}/{from}/{to}",
            "/v2/aggs/grouped/locale/us/market/stocks/{date}",
            "/v3/reference/tickers/{ticker}",
            "/v2/last/trade/{stocksTicker}",
            "/v1/last_quote/currencies/{from}/{to}",
        ]
    ):
        names = re.findall(r"{(\w+)}", path)
        paths[path] = {
            "get": {
                "operationId": f"Op{i}",
                "parameters": [
                    {
                        "name": n,
                        "in": "path",
                        "required": True,
                        "description": f"the {n}",
                        "schema": {"type": "string", **({"format": "date"} if n == "date" else {})},
                    }
                    for n in names
                ],
            }
        }
    tools = await convert(tmp_path, oas3(paths))
    assert len(tools.tools) == 7
    first = fn(tools, "Op0")["parameters"]
    assert first["properties"] == {
        "stocksTicker": {"type": "string", "description": "the stocksTicker"},
        "date": {"type": "string", "format": "date", "description": "the date"},
    }
    assert first["required"] == ["stocksTicker", "date"]
    for tool in tools.tools.values():
        assert set(tool.parameters["required"]) == set(tool.parameters["properties"])


# --- parameters ----------------------------------------------------------------------------


async def test_parameter_details_and_locations(tmp_path):
    doc = oas3(
        {
            "/items/{id}": {
                "parameters": [{"name": "id", "in": "path", "schema": {"type": "integer"}}],
                "get": {
                    "operationId": "getItem",
                    "parameters": [
                        {
                            "name": "fields",
                            "in": "query",
                            "style": "pipeDelimited",
                            "explode": False,
                            "schema": {
                                "type": "array",
                                "items": {"type": "string", "enum": ["a", "b"]},
                            },
                        },
                        {
                            "name": "X-Trace",
                            "in": "header",
                            "example": "t-1",
                            "deprecated": True,
                            "schema": {"type": "string", "default": "none"},
                        },
                        {"name": "session", "in": "cookie", "schema": {"type": "string"}},
                        {
                            "name": "filter",
                            "in": "query",
                            "style": "deepObject",
                            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                        },
                        {"name": "tags", "in": "query", "schema": {"type": "array"}},
                        {"name": "Accept", "in": "header", "schema": {"type": "string"}},
                        {
                            "name": "json",
                            "in": "query",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    ],
                },
            }
        }
    )
    tools = await convert(tmp_path, doc, schema_detail="full")
    params = fn(tools, "getItem")["parameters"]
    assert params["required"] == ["id"]  # path parameters are always required
    assert list(params["properties"]) == [
        "id",
        "fields",
        "filter",
        "tags",
        "json",
        "X-Trace",
        "session",
    ]
    assert params["properties"]["X-Trace"] == {
        "type": "string",
        "default": "none",
        "examples": ["t-1"],
        "deprecated": True,
    }
    assert params["properties"]["tags"] == {"type": "array", "items": {}}
    by_arg = {p.arg: p for p in tools.tools["getItem"].operation.params}
    assert (by_arg["fields"].style, by_arg["fields"].explode) == ("pipeDelimited", False)
    assert (by_arg["filter"].style, by_arg["filter"].explode) == ("deepObject", False)
    assert (by_arg["id"].style, by_arg["id"].explode) == ("simple", False)
    assert (by_arg["session"].location, by_arg["session"].style) == ("cookie", "form")
    assert by_arg["json"].content_type == "application/json"
    assert by_arg["tags"].explode is True


async def test_clashing_names_are_renamed_by_location(tmp_path):
    doc = oas3(
        {
            "/a/{id}": {
                "post": {
                    "operationId": "clash",
                    "parameters": [
                        {"name": "id", "in": "path", "schema": {"type": "string"}},
                        {"name": "id", "in": "query", "schema": {"type": "string"}},
                        {"name": "id", "in": "header", "schema": {"type": "string"}},
                        {"name": "requestBody", "in": "query", "schema": {"type": "string"}},
                        {"name": "filter[name]", "in": "query", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "content": {"application/json": {"schema": {"type": "object"}}}
                    },
                }
            }
        }
    )
    tools = await convert(tmp_path, doc)
    op = tools.tools["clash"].operation
    assert [(p.location, p.name, p.arg) for p in op.params] == [
        ("path", "id", "id"),
        ("query", "id", "query_id"),
        ("query", "requestBody", "query_requestBody"),
        ("query", "filter[name]", "filter_name_"),
        ("header", "id", "header_id"),
    ]
    assert "requestBody" in fn(tools, "clash")["parameters"]["properties"]


@pytest.mark.parametrize(
    "auth, hidden",
    [
        ({"type": "query", "name": "api_key", "value": "s"}, ("query", "api_key")),
        ({"type": "header", "name": "x-api-key", "value": "s"}, ("header", "X-API-Key")),
        ({"type": "bearer", "token": "s"}, ("header", "Authorization")),
        ({"type": "cookie", "name": "sid", "value": "s"}, ("cookie", "sid")),
    ],
)
async def test_auth_parameters_are_not_offered(tmp_path, auth, hidden):
    doc = oas3(
        {
            "/x": {
                "get": {
                    "operationId": "x",
                    "parameters": [
                        {
                            "name": hidden[1],
                            "in": hidden[0],
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"name": "q", "in": "query", "schema": {"type": "string"}},
                    ],
                }
            }
        }
    )
    tools = await convert(tmp_path, doc, auth=auth)
    assert list(fn(tools, "x")["parameters"]["properties"]) == ["q"]


# --- bodies and schemas --------------------------------------------------------------------


async def test_body_forms_and_kinds(tmp_path):
    doc = oas3(
        {
            "/form": {
                "post": {
                    "operationId": "form",
                    "requestBody": {
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"a": {"type": "string"}},
                                }
                            }
                        }
                    },
                }
            },
            "/upload": {
                "post": {
                    "operationId": "upload",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file", "title"],
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "title": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                }
            },
            "/list": {
                "post": {
                    "operationId": "list",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": {"type": "integer"}}
                            }
                        }
                    },
                }
            },
            "/text": {
                "post": {
                    "operationId": "text",
                    "requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}},
                }
            },
            "/binary": {
                "post": {
                    "operationId": "binary",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                }
            },
            "/prefer": {
                "post": {
                    "operationId": "prefer",
                    "requestBody": {
                        "content": {
                            "application/xml": {"schema": {"type": "object"}},
                            "application/vnd.api+json": {"schema": {"type": "object"}},
                        }
                    },
                }
            },
        }
    )
    tools = await convert(tmp_path, doc)
    assert tools.tools["form"].operation.body.content_type == "application/x-www-form-urlencoded"
    upload = fn(tools, "upload")["parameters"]["properties"]["requestBody"]
    assert upload == {
        "type": "object",
        "required": ["title"],
        "properties": {"title": {"type": "string"}},
    }
    assert fn(tools, "list")["parameters"]["properties"]["requestBody"]["type"] == "array"
    assert fn(tools, "text")["parameters"]["properties"]["requestBody"] == {"type": "string"}
    assert tools.tools["prefer"].operation.body.content_type == "application/vnd.api+json"
    assert "binary" not in tools.tools
    [skip] = tools.reports[0].skipped
    assert (skip.method, skip.path) == ("POST", "/binary")
    assert "application/octet-stream" in skip.reason


async def test_schema_normalisation(tmp_path):
    components = {
        "schemas": {
            "Base": {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": {"type": "integer", "readOnly": True},
                    "name": {"type": "string", "nullable": True, "example": "rex"},
                },
            },
            "Pet": {
                "allOf": [
                    {"$ref": "#/components/schemas/Base"},
                    {
                        "type": "object",
                        "required": ["kind"],
                        "properties": {
                            "kind": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                            "age": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
                            "meta": {
                                "type": "object",
                                "nullable": True,
                                "x-internal": 1,
                                "discriminator": {"propertyName": "t"},
                                "xml": {"name": "m"},
                            },
                        },
                    },
                ]
            },
        }
    }
    doc = oas3(
        {
            "/pets": {
                "post": {
                    "operationId": "addPet",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}
                        },
                    },
                }
            }
        },
        components,
    )
    tools = await convert(tmp_path, doc, schema_detail="full")
    body = fn(tools, "addPet")["parameters"]["properties"]["requestBody"]
    assert body == {
        "type": "object",
        "required": ["kind"],
        "properties": {
            "name": {"type": ["string", "null"], "examples": ["rex"]},
            "kind": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "age": {"type": "integer", "exclusiveMinimum": 0},
            "meta": {"type": ["object", "null"]},
        },
    }


async def test_nullable_forms_of_30_and_31_agree(tmp_path):
    def doc(version, schema):
        return {
            **oas3(
                {
                    "/x": {
                        "post": {
                            "operationId": "x",
                            "requestBody": {
                                "content": {
                                    "application/json": {
                                        "schema": {"type": "object", "properties": {"v": schema}}
                                    }
                                }
                            },
                        }
                    }
                }
            ),
            "openapi": version,
        }

    a = await convert(tmp_path, doc("3.0.0", {"type": "string", "nullable": True}))
    b = await convert(tmp_path, doc("3.1.0", {"type": ["string", "null"]}))
    assert fn(a, "x") == fn(b, "x")
    assert fn(a, "x")["parameters"]["properties"]["requestBody"]["properties"]["v"] == {
        "type": ["string", "null"]
    }


# --- $ref ----------------------------------------------------------------------------------


async def test_ref_forms_local_escaped_and_parameters(tmp_path):
    doc = oas3(
        {
            "/a/{id}": {"$ref": "#/x-paths/~1shared~1{id}"},
        },
        {
            "schemas": {
                "a/b": {"type": "string", "description": "slash"},
                "t~x": {"type": "integer"},
            },
            "parameters": {
                "Id": {"name": "id", "in": "path", "schema": {"$ref": "#/components/schemas/a~1b"}}
            },
            "requestBodies": {
                "B": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/t~0x"}}
                    }
                }
            },
        },
    )
    doc["x-paths"] = {
        "/shared/{id}": {
            "put": {
                "operationId": "put",
                "parameters": [{"$ref": "#/components/parameters/Id"}],
                "requestBody": {"$ref": "#/components/requestBodies/B"},
            }
        }
    }
    tools = await convert(tmp_path, doc)
    props = fn(tools, "put")["parameters"]["properties"]
    assert props == {
        "id": {"type": "string", "description": "slash"},
        "requestBody": {"type": "integer"},
    }


async def test_refs_to_other_files_next_to_the_spec(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "pet.yaml").write_text(
        yaml.safe_dump(
            {
                "Pet": {
                    "type": "object",
                    "properties": {
                        "owner": {"$ref": "owner.json#/Owner"},
                        "name": {"type": "string"},
                    },
                }
            }
        )
    )
    (tmp_path / "schemas" / "owner.json").write_text(
        json.dumps(
            {
                "Owner": {
                    "type": "object",
                    "properties": {"email": {"type": "string", "format": "email"}},
                }
            }
        )
    )
    doc = oas3(
        {
            "/pets": {
                "post": {
                    "operationId": "add",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "schemas/pet.yaml#/Pet"}}
                        }
                    },
                }
            }
        }
    )
    tools = await convert(tmp_path, doc)
    body = fn(tools, "add")["parameters"]["properties"]["requestBody"]
    assert body["properties"]["owner"]["properties"]["email"]["format"] == "email"


async def test_refs_between_toolsets_are_never_mixed(tmp_path):
    def doc(kind):
        return oas3(
            {
                "/pets": {
                    "post": {
                        "operationId": "add",
                        "requestBody": {
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}
                            }
                        },
                    }
                }
            },
            {"schemas": {"Pet": {"type": "object", "properties": {kind: {"type": "string"}}}}},
        )

    tools = await convert(tmp_path, doc("cat"), doc("dog"))
    offered = tools.for_model("m")
    names = [t.name for t in offered]
    assert names[0] == "add" and names[1].startswith("add_")
    bodies = [t.parameters["properties"]["requestBody"]["properties"] for t in offered]
    assert bodies == [{"cat": {"type": "string"}}, {"dog": {"type": "string"}}]


async def test_cycles_are_cut_and_say_so(tmp_path):
    doc = oas3(
        {
            "/tree": {
                "post": {
                    "operationId": "tree",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Node"}}
                        }
                    },
                }
            }
        },
        {
            "schemas": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "children": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Node"},
                        },
                        "other": {"$ref": "#/components/schemas/A"},
                    },
                },
                "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}},
                "B": {"type": "object", "properties": {"a": {"$ref": "#/components/schemas/A"}}},
                "Self": {"$ref": "#/components/schemas/Self"},
            }
        },
    )
    doc["paths"]["/self"] = {
        "post": {
            "operationId": "self",
            "requestBody": {
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Self"}}}
            },
        }
    }
    tools = await convert(tmp_path, doc, schema_detail="full")
    body = fn(tools, "tree")["parameters"]["properties"]["requestBody"]
    assert body["properties"]["children"]["items"] == {
        "description": "Node: recursive schema, not expanded further here"
    }
    assert body["properties"]["other"]["properties"]["b"]["properties"]["a"] == {
        "description": "A: recursive schema, not expanded further here"
    }
    assert (
        "recursive" in fn(tools, "self")["parameters"]["properties"]["requestBody"]["description"]
    )
    assert tools.reports[0].cuts >= 3


async def test_unresolvable_ref_skips_only_that_operation(tmp_path):
    doc = oas3(
        {
            "/ok": {"get": {"operationId": "ok"}},
            "/bad": {
                "post": {
                    "operationId": "bad",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}
                        }
                    },
                }
            },
        }
    )
    tools = await convert(tmp_path, doc)
    assert list(tools.tools) == ["ok"]
    [skip] = tools.reports[0].skipped
    assert str(skip) == (
        "toolset t0: skipped POST /bad: cannot resolve $ref '#/components/schemas/Nope'"
    )


async def test_remote_refs_are_off_unless_allowed(tmp_path, aiohttp_server):
    from aiohttp import web

    async def schema(request):
        return web.json_response(
            {"Pet": {"type": "object", "properties": {"remote": {"type": "boolean"}}}}
        )

    app = web.Application()
    app.router.add_get("/pet.json", schema)
    server = await aiohttp_server(app)
    doc = oas3(
        {
            "/p": {
                "post": {
                    "operationId": "p",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"{server.make_url('/pet.json')}#/Pet"}
                            }
                        }
                    },
                }
            }
        }
    )
    with pytest.raises(ConfigError) as e:
        await convert(tmp_path, doc)
    assert "allow_remote_refs" in str(e.value)

    from gateway.openapi.load import fetch_with
    from gateway.upstream import new_session

    async with new_session() as session:
        (tmp_path / "spec0.json").write_text(json.dumps(doc))
        config = build_config(
            {"tools": [{"name": "t", "spec": "spec0.json", "allow_remote_refs": True}]},
            "cfg",
            tmp_path,
        )
        tools = await load_tools(config, fetch_with(session))
    body = tools.tools["p"].parameters["properties"]["requestBody"]
    assert body["properties"] == {"remote": {"type": "boolean"}}


async def test_spec_from_url_with_relative_servers(tmp_path, aiohttp_server):
    from aiohttp import web

    doc = oas3({"/x": {"get": {"operationId": "x"}}}, servers=[{"url": "/api/v2"}])

    async def spec(request):
        return web.Response(text=yaml.safe_dump(doc), content_type="application/yaml")

    app = web.Application()
    app.router.add_get("/specs/api.yaml", spec)
    server = await aiohttp_server(app)
    from gateway.openapi.load import fetch_with
    from gateway.upstream import new_session

    url = str(server.make_url("/specs/api.yaml"))
    async with new_session() as session:
        config = build_config({"tools": [{"name": "t", "spec": url}]}, "cfg", tmp_path)
        tools = await load_tools(config, fetch_with(session))
    assert tools.tools["x"].operation.server == str(server.make_url("/api/v2"))


# --- Swagger 2.0 ---------------------------------------------------------------------------


async def test_swagger_2_is_normalised(tmp_path):
    doc = {
        "swagger": "2.0",
        "info": {"title": "t", "version": "1"},
        "host": "api.example.com",
        "basePath": "/v1",
        "schemes": ["http", "https"],
        "consumes": ["application/json"],
        "definitions": {
            "Pet": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "x-nullable": True},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            }
        },
        "parameters": {
            "Limit": {
                "name": "limit",
                "in": "query",
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "exclusiveMaximum": True,
            }
        },
        "paths": {
            "/pets": {
                "get": {
                    "operationId": "list",
                    "parameters": [
                        {"$ref": "#/parameters/Limit"},
                        {
                            "name": "tags",
                            "in": "query",
                            "type": "array",
                            "items": {"type": "string"},
                            "collectionFormat": "multi",
                        },
                        {
                            "name": "ids",
                            "in": "query",
                            "type": "array",
                            "items": {"type": "integer"},
                            "collectionFormat": "pipes",
                        },
                    ],
                },
                "post": {
                    "operationId": "add",
                    "parameters": [
                        {
                            "name": "body",
                            "in": "body",
                            "required": True,
                            "schema": {"$ref": "#/definitions/Pet"},
                        }
                    ],
                },
            },
            "/pets/{id}/photo": {
                "post": {
                    "operationId": "photo",
                    "consumes": ["multipart/form-data"],
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "type": "string"},
                        {"name": "file", "in": "formData", "type": "file", "required": True},
                        {"name": "caption", "in": "formData", "type": "string", "required": True},
                    ],
                }
            },
            "/login": {
                "post": {
                    "operationId": "login",
                    "consumes": ["application/x-www-form-urlencoded"],
                    "parameters": [{"name": "user", "in": "formData", "type": "string"}],
                }
            },
        },
    }
    tools = await convert(tmp_path, doc, fmt="yaml")
    listed = tools.tools["list"]
    assert listed.operation.server == "https://api.example.com/v1"
    props = listed.parameters["properties"]
    assert props["limit"] == {"type": "integer", "minimum": 1, "exclusiveMaximum": 100}
    by_arg = {p.arg: p for p in listed.operation.params}
    assert (by_arg["tags"].style, by_arg["tags"].explode) == ("form", True)
    assert (by_arg["ids"].style, by_arg["ids"].explode) == ("pipeDelimited", False)
    add = tools.tools["add"]
    assert add.operation.body.content_type == "application/json"
    assert add.parameters["required"] == ["requestBody"]
    assert add.parameters["properties"]["requestBody"]["properties"]["name"] == {
        "type": ["string", "null"]
    }
    photo = tools.tools["photo"]
    assert photo.operation.body.content_type == "multipart/form-data"
    assert photo.parameters["properties"]["requestBody"] == {
        "type": "object",
        "properties": {"caption": {"type": "string"}},
        "required": ["caption"],
    }
    assert photo.parameters["required"] == ["id", "requestBody"]
    login = tools.tools["login"]
    assert login.operation.body.content_type == "application/x-www-form-urlencoded"


async def test_server_variables_and_levels(tmp_path):
    doc = oas3(
        {
            "/a": {"get": {"operationId": "a"}},
            "/b": {
                "servers": [{"url": "https://b.example.com"}],
                "get": {"operationId": "b"},
                "put": {"operationId": "c", "servers": [{"url": "https://c.example.com/x/"}]},
            },
        },
        servers=[
            {
                "url": "https://{region}.example.com/{base}",
                "variables": {
                    "region": {"default": "eu", "enum": ["eu", "us"]},
                    "base": {"default": "v3"},
                },
            }
        ],
    )
    tools = await convert(tmp_path, doc)
    assert tools.tools["a"].operation.server == "https://eu.example.com/v3"
    assert tools.tools["b"].operation.server == "https://b.example.com"
    assert tools.tools["c"].operation.server == "https://c.example.com/x"


# --- names and descriptions -----------------------------------------------------------------


async def test_names_are_sanitised_prefixed_cut_and_unique(tmp_path):
    long_id = "a" * 80
    doc = oas3(
        {
            "/x": {"get": {"operationId": "get pets!now"}, "post": {"operationId": long_id}},
            "/v1/users/{id}": {"delete": {}},
            "/y": {"get": {"operationId": "get_pets_now"}},
        }
    )
    tools = await convert(tmp_path, doc, prefix="pets_")
    names = list(tools.tools)
    assert names[0] == "pets_get_pets_now"
    assert names[1].startswith("pets_aaaa") and len(names[1]) == 64
    assert names[2] == "pets_delete_v1_users_id"
    assert names[3].startswith("pets_get_pets_now_") and len(names[3]) == len(names[0]) + 9
    again = await convert(tmp_path, doc, prefix="pets_")
    assert list(again.tools) == names  # the same config always gives the same names


async def test_description_is_cut_with_a_marker(tmp_path):
    doc = oas3(
        {
            "/x": {"get": {"operationId": "x", "summary": "Short", "description": "word " * 500}},
            "/y": {"get": {"operationId": "y"}},
        }
    )
    tools = await convert(tmp_path, doc, limits={"max_description_length": 100})
    text = fn(tools, "x")["description"]
    assert len(text) <= 100 and text.endswith(" …[truncated]") and text.startswith("Short\n\n")
    assert fn(tools, "y")["description"] == "GET /y"


async def test_include_and_exclude_forms(tmp_path):
    doc = oas3(
        {
            "/a": {
                "get": {"operationId": "a", "tags": ["pets"]},
                "post": {"operationId": "b", "tags": ["pets"]},
            },
            "/c": {"get": {"operationId": "c", "tags": ["store"]}, "delete": {"operationId": "d"}},
        }
    )
    assert list((await convert(tmp_path, doc, include=["tag:pets", "d"])).tools) == ["a", "b", "d"]
    assert list(
        (await convert(tmp_path, doc, include=["method:get"], exclude=["tag:store"])).tools
    ) == ["a"]
    tools = await convert(tmp_path, doc, include=["a", "nothing"])
    assert tools.reports[0].unmatched == ["nothing"]
    assert "filter 'nothing' matches no operation" in "\n".join(tools.warnings())


async def test_more_than_128_functions_warns(tmp_path):
    doc = oas3({f"/p{i}": {"get": {"operationId": f"op{i}"}} for i in range(130)})
    tools = await convert(tmp_path, doc)
    assert any("130 functions" in w for w in tools.warnings())


# --- bad documents --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, fmt, fragment",
    [
        ("openapi: 3.0.0\npaths: [unclosed\n", "yaml", "line 3, column 1"),
        ('{"openapi": "3.0.0", "paths": {', "json", "line 1, column 32"),
        ("just: text\n", "yaml", "no 'openapi' or 'swagger' field"),
        ('{"openapi": "4.0.0"}', "json", "version '4.0.0' is not supported"),
        ("- a\n- b\n", "yaml", "top level is not a mapping"),
    ],
)
async def test_bad_documents_name_the_file(tmp_path, content, fmt, fragment):
    with pytest.raises(ConfigError) as e:
        await convert(tmp_path, content, fmt=fmt)
    message = str(e.value)
    assert f"spec0.{fmt}" in message and fragment in message


async def test_missing_file_is_named(tmp_path):
    config = build_config({"tools": [{"name": "t", "spec": "nope.yaml"}]}, "cfg", tmp_path)
    with pytest.raises(ConfigError) as e:
        await load_tools(config)
    assert "nope.yaml): cannot read the file" in str(e.value)


# --- gateway tools / check ------------------------------------------------------------------


def test_tools_and_check_commands(tmp_path, capsys):
    from gateway.cli import main

    (tmp_path / "weather.json").write_text(json.dumps(WEATHER))
    (tmp_path / "gw.yaml").write_text(
        yaml.safe_dump(
            {
                "tools": [{"name": "weather", "spec": "weather.json", "exclude": ["SetLocation"]}],
                "models": [
                    {"id": "m", "base_url": "http://x", "tools": ["weather"]},
                    {"id": "plain", "base_url": "http://x"},
                ],
            }
        )
    )
    cfg = str(tmp_path / "gw.yaml")
    assert main(["tools", "--config", cfg]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [i["function"]["name"] for i in items] == ["GetCurrentWeather", "GetWeatherSummary"]
    assert set(items[0]) == {"toolset", "operationId", "method", "path", "function"}
    assert items[0]["toolset"] == "weather" and items[0]["method"] == "GET"
    assert set(items[0]["function"]) == {"name", "description", "parameters"}
    assert main(["tools", "--config", cfg, "--model", "plain"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["tools", "--config", cfg, "--toolset", "weather"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["tools", "--config", cfg, "--model", "zzz"]) == 1
    assert "unknown model id 'zzz'" in capsys.readouterr().err
    assert main(["check", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "toolset weather (weather.json, OpenAPI 3.0): 2 operation(s) converted, 0 skipped" in out
    assert "model m is offered 2 function(s)" in out


def test_check_lists_skipped_operations(tmp_path, capsys):
    from gateway.cli import main

    doc = oas3(
        {
            "/bad": {
                "post": {
                    "operationId": "bad",
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/nope"}}}
                    },
                }
            }
        }
    )
    (tmp_path / "s.json").write_text(json.dumps(doc))
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump({"tools": [{"name": "s", "spec": "s.json"}]}))
    assert main(["check", "--config", str(tmp_path / "gw.yaml")]) == 0
    out = capsys.readouterr().out
    assert "1 skipped" in out
    assert "WARNING: toolset s: skipped POST /bad: cannot resolve $ref '#/nope'" in out


def test_check_fails_on_bad_spec(tmp_path, capsys):
    from gateway.cli import main

    (tmp_path / "s.yaml").write_text("openapi: [\n")
    (tmp_path / "gw.yaml").write_text("tools:\n  - {name: s, spec: s.yaml}\n")
    assert main(["check", "--config", str(tmp_path / "gw.yaml")]) == 1
    assert "s.yaml" in capsys.readouterr().err


async def test_operations_with_no_server_to_call_are_warned_about(tmp_path):
    ops = {"/x": {"get": {"operationId": "getX"}}}
    tools = await convert(tmp_path, oas3(ops))  # no servers: only "/" relative to a file
    [warning] = tools.warnings()
    assert "toolset t0: no absolute server URL" in warning and "GET /x" in warning
    assert "base_url" in warning
    assert (await convert(tmp_path, oas3(ops), base_url="http://api.test")).warnings() == []
    served = oas3(ops, servers=[{"url": "https://api.test/v1"}])
    assert (await convert(tmp_path, served)).warnings() == []
