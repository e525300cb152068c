"""A real tool API for the tests: an aiohttp app and the OpenAPI document that describes it.

Echo endpoints answer with exactly what they received, so a test can check how the gateway
serialised each argument by reading the tool message the model got back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

TOKEN = "tool-secret-token"

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Tool API", "version": "1"},
    "servers": [{"url": "http://placeholder.invalid"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Item": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "id": {"type": "integer", "readOnly": True},
                    "name": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "meta": {"type": "object", "properties": {"color": {"type": "string"}}},
                },
            }
        },
    },
    "paths": {
        "/weather": {
            "get": {
                "operationId": "getWeather",
                "summary": "Current weather",
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
        "/echo/{id}/{tags}": {
            "get": {
                "operationId": "echoGet",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "tags",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    {"name": "q", "in": "query", "schema": {"type": "string"}},
                    {"name": "n", "in": "query", "schema": {"type": "integer"}},
                    {"name": "flag", "in": "query", "schema": {"type": "boolean"}},
                    {
                        "name": "ids",
                        "in": "query",
                        "explode": False,
                        "schema": {"type": "array", "items": {"type": "integer"}},
                    },
                    {
                        "name": "multi",
                        "in": "query",
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    {
                        "name": "space",
                        "in": "query",
                        "style": "spaceDelimited",
                        "explode": False,
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    {
                        "name": "pipe",
                        "in": "query",
                        "style": "pipeDelimited",
                        "explode": False,
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    {
                        "name": "filter",
                        "in": "query",
                        "style": "deepObject",
                        "explode": True,
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                        },
                    },
                    {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                    {"name": "session", "in": "cookie", "schema": {"type": "string"}},
                ],
            }
        },
        "/items": {
            "post": {
                "operationId": "createItem",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Item"}}
                    },
                },
            }
        },
        "/form": {
            "post": {
                "operationId": "postForm",
                "requestBody": {
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "count": {"type": "integer"},
                                    "opts": {
                                        "type": "object",
                                        "properties": {"x": {"type": "string"}},
                                    },
                                    "list": {"type": "array", "items": {"type": "string"}},
                                },
                            }
                        }
                    }
                },
            }
        },
        "/multipart": {
            "post": {
                "operationId": "postMultipart",
                "requestBody": {
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "title": {"type": "string"},
                                    "file": {"type": "string", "format": "binary"},
                                },
                            }
                        }
                    }
                },
            }
        },
        "/secure": {"get": {"operationId": "secure", "security": [{"bearer": []}]}},
        "/text": {"get": {"operationId": "getText"}},
        "/fail": {"get": {"operationId": "fail"}},
        "/slow": {
            "get": {
                "operationId": "slow",
                "parameters": [{"name": "seconds", "in": "query", "schema": {"type": "number"}}],
            }
        },
        "/big": {"get": {"operationId": "big"}},
        "/binary": {"get": {"operationId": "binary"}},
        "/redirect-same": {"get": {"operationId": "redirectSame"}},
        "/redirect-away": {"get": {"operationId": "redirectAway"}},
    },
}


class ToolAPI:
    def __init__(self) -> None:
        self.calls: list[str] = []  # "METHOD /path?query"
        self.headers: list[CIMultiDict[str]] = []  # the headers of each call
        self.active = 0
        self.cancelled = 0
        self.app = web.Application()
        r = self.app.router
        r.add_get("/weather", self.weather)
        r.add_route("*", "/echo/{tail:.*}", self.echo)
        r.add_post("/items", self.echo)
        r.add_post("/form", self.echo)
        r.add_post("/multipart", self.echo)
        r.add_get("/secure", self.secure)
        r.add_get("/text", self.text)
        r.add_get("/fail", self.fail)
        r.add_get("/slow", self.slow)
        r.add_get("/big", self.big)
        r.add_get("/binary", self.binary)
        r.add_get("/redirect-same", self.redirect_same)
        r.add_get("/redirect-away", self.redirect_away)
        self.app.middlewares.append(self._track)

    @web.middleware
    async def _track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.calls.append(f"{request.method} {request.raw_path}")
        self.headers.append(CIMultiDict(request.headers))
        self.active += 1
        try:
            return await handler(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def weather(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"location": request.query["location"], "temp_c": 21, "sky": "clear"}
        )

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path.split("?")[0],
                "query": request.raw_path.partition("?")[2],
                "x_trace": request.headers.get("X-Trace"),
                "cookie": request.headers.get("Cookie"),
                "content_type": request.headers.get("Content-Type", "").split(";")[0],
                "body": body.decode("utf-8", "replace"),
            }
        )

    async def secure(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "bad token"}, status=401)
        return web.json_response({"secret": "granted"})

    async def text(self, request: web.Request) -> web.Response:
        return web.Response(text="plain text answer")

    async def fail(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "boom", "hint": "try again"}, status=500)

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "5")))
        return web.json_response({"slow": "done"})

    async def big(self, request: web.Request) -> web.Response:
        return web.json_response({"data": "x" * 100_000})

    async def binary(self, request: web.Request) -> web.Response:
        return web.Response(
            body=b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, content_type="image/png"
        )

    async def redirect_same(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/text")

    async def redirect_away(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("http://elsewhere.invalid/steal")
