"""Per-operation credentials by the document's security schemes, OAuth2 client credentials.

The API servers here check each request's credentials against the operation's ``security``
as a request-validating mock (Stoplight Prism with ``--errors``) would; the token endpoint
is Authlib's own server side (``tests/oauth_server.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from conftest import start_app
from oauth_server import Client, TokenServer, token_app
from schema_example import example

from gateway.cli import main
from gateway.configload import build_config
from gateway.errors import ConfigError
from gateway.openapi.ir import Tool
from gateway.state import Snapshot
from gateway.toolexec import ToolExecutor
from gateway.toolresult import ToolResult
from gateway.tools import ToolSet, load_tools
from gateway.upstream import new_session

READMES = Path(__file__).parent / "fixtures" / "openapi" / "readme"
API_KEY = "pet-api-key-123"
TOKEN = "pet-oauth-token-456"
SECRET = "client-secret-789"


# --- a security-checking API ---------------------------------------------------------------


class SecureAPI:
    """Answers 401 "Invalid security scheme used" unless one ``security`` alternative of the
    operation is satisfied with the expected values; records what it saw."""

    def __init__(self, doc: dict[str, Any], accepted: dict[str, str]) -> None:
        self.doc = doc
        self.accepted = accepted  # scheme name -> the value expected (as sent, after Bearer)
        self.schemes = (doc.get("components") or {}).get("securitySchemes") or doc.get(
            "securityDefinitions", {}
        )
        self.seen: list[web.Request] = []
        self.refused: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def _operation(self, request: web.Request) -> dict[str, Any] | None:
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, request.path) and request.method.lower() in item:
                return item[request.method.lower()]  # type: ignore[no-any-return]
        return None

    def _satisfied(self, request: web.Request, name: str) -> bool:
        scheme, expected = self.schemes.get(name, {}), self.accepted.get(name)
        if expected is None:
            return False
        if scheme.get("type") == "apiKey":
            where = {"header": request.headers, "query": request.query, "cookie": request.cookies}
            value = where[scheme["in"]].get(scheme["name"])
            if scheme["in"] == "cookie" and value is not None:
                value = unquote(value)  # cookie values travel percent-encoded
            return value == expected
        auth = request.headers.get("Authorization", "")
        if scheme.get("type") in ("basic",) or scheme.get("scheme") == "basic":
            return auth == "Basic " + expected
        return auth == "Bearer " + expected

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        body = await request.text()
        op = self._operation(request)
        if op is None:
            return web.json_response({"error": "no such operation"}, status=404)
        security = op.get("security", self.doc.get("security", []))
        if security and not any(all(self._satisfied(request, n) for n in alt) for alt in security):
            self.refused.append(f"{request.method} {request.path}")
            return web.json_response({"error": "Invalid security scheme used"}, status=401)
        return web.json_response(
            {
                "raw_path": request.raw_path,
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": body,
                "content_type": request.headers.get("Content-Type"),
            }
        )


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners = []

    async def start(app: web.Application) -> str:
        runner, url = await start_app(app)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


async def tools_for(
    tmp_path: Path, doc: dict[str, Any] | Path, url: str, **toolset: Any
) -> tuple[ToolSet, Snapshot]:
    spec = doc if isinstance(doc, Path) else tmp_path / "spec.json"
    if not isinstance(doc, Path):
        spec.write_text(json.dumps(doc))
    raw = {"tools": [{"name": "t", "spec": str(spec), "base_url": url, **toolset}]}
    config = build_config(raw, "cfg", tmp_path)
    tools = await load_tools(config)
    return tools, Snapshot.build(config, tools)


async def run(
    snap: Snapshot, calls: list[tuple[Tool, Any]], headers: dict[str, str] | None = None
) -> list[ToolResult]:
    async with new_session() as session:
        ex = ToolExecutor(
            session,
            snap.toolsets,
            32768,
            redactor=snap.redactor,
            credentials=snap.credentials,
            client_headers=headers or {},
        )
        return list(await asyncio.gather(*(ex.run(tool, json.dumps(args)) for tool, args in calls)))


def oas3(paths: dict[str, Any], schemes: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": paths,
        "components": {"securitySchemes": schemes},
        **top,
    }


# --- the Petstore: every operation, both schemes ---------------------------------------------


@pytest.mark.parametrize("version", ["2.0", "3.0"])
async def test_every_petstore_operation_passes_a_security_checking_server(tmp_path, serve, version):
    doc = json.loads((READMES / version / "petstore.json").read_text())
    api = SecureAPI(doc, {"api_key": API_KEY, "petstore_auth": TOKEN})
    url = await serve(api.app)
    creds = {"api_key": API_KEY, "petstore_auth": TOKEN}
    tools, snap = await tools_for(
        tmp_path, READMES / version / "petstore.json", url, credentials=creds
    )
    assert len(tools.tools) == 20 and tools.reports[0].unsatisfied == []
    results = await run(snap, [(t, example(t.parameters)) for t in tools.tools.values()])
    assert api.refused == []
    assert all(r.status == 200 for r in results), [r.content for r in results]
    assert all(API_KEY not in r.content and TOKEN not in r.content for r in results)


@pytest.mark.parametrize("version", ["2.0", "3.0"])
async def test_petstore_with_one_toolset_auth_is_refused_where_the_schemes_differ(
    tmp_path, serve, version
):
    """What the issue measured: one ``auth`` for every call fails the other scheme's calls."""
    doc = json.loads((READMES / version / "petstore.json").read_text())
    api = SecureAPI(doc, {"api_key": API_KEY, "petstore_auth": TOKEN})
    url = await serve(api.app)
    auth = {"type": "bearer", "token": TOKEN}
    tools, snap = await tools_for(tmp_path, READMES / version / "petstore.json", url, auth=auth)
    await run(snap, [(t, example(t.parameters)) for t in tools.tools.values()])
    assert sorted(api.refused) == ["GET /pet/1", "GET /store/inventory"]


async def test_parameter_supplied_by_a_credential_is_not_offered(tmp_path):
    spec = READMES / "2.0" / "petstore.json"
    tools, _ = await tools_for(tmp_path, spec, "http://127.0.0.1:9", credentials={"api_key": "k"})
    assert "api_key" not in tools.tools["deletePet"].parameters["properties"]
    tools, _ = await tools_for(tmp_path, spec, "http://127.0.0.1:9")
    assert "api_key" in tools.tools["deletePet"].parameters["properties"]


# --- selection ---------------------------------------------------------------------------------

SCHEMES = {
    "key_q": {"type": "apiKey", "in": "query", "name": "key"},
    "key_c": {"type": "apiKey", "in": "cookie", "name": "sid"},
    "key_h": {"type": "apiKey", "in": "header", "name": "X-Key"},
    "basic": {"type": "http", "scheme": "basic"},
    "bearer": {"type": "http", "scheme": "bearer"},
    "oidc": {"type": "openIdConnect", "openIdConnectUrl": "https://example.com/.well-known"},
}


def _get(op_id: str, security: Any = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id}
    if security is not None:
        op["security"] = security
    return {"get": op}


async def test_first_satisfied_alternative_is_sent_with_all_its_schemes(tmp_path, serve):
    doc = oas3(
        {
            "/both": _get("both", [{"bearer": [], "key_h": []}, {"key_q": []}]),
            "/fallback": _get("fallback", [{"oidc": []}, {"key_q": []}]),
            "/public": _get("public", []),
            "/optional": _get("optional", [{}, {"key_q": []}]),
            "/default": _get("default"),
        },
        SCHEMES,
        security=[{"key_c": []}],
    )
    creds = {"bearer": "B-tok", "key_h": "H-key", "key_q": "Q-key", "key_c": "C-key"}
    api = SecureAPI(doc, {**creds})
    url = await serve(api.app)
    tools, snap = await tools_for(tmp_path, doc, url, credentials=creds)
    await run(
        snap, [(tools.tools[n], {}) for n in ("both", "fallback", "public", "optional", "default")]
    )
    sent = {r.path: r for r in api.seen}
    both = sent["/both"]
    assert both.headers["Authorization"] == "Bearer B-tok" and both.headers["X-Key"] == "H-key"
    assert "key" not in both.query
    assert (
        sent["/fallback"].query["key"] == "Q-key"
        and "Authorization" not in sent["/fallback"].headers
    )
    for public in ("/public", "/optional"):
        assert not ({"Authorization", "X-Key", "Cookie"} & set(sent[public].headers))
        assert "key" not in sent[public].query
    assert sent["/default"].cookies == {"sid": "C-key"}
    assert api.refused == []


async def test_credentials_are_placed_as_the_scheme_says(tmp_path, serve):
    doc = oas3(
        {f"/{n}": _get(n, [{n: []}]) for n in SCHEMES},
        SCHEMES,
    )
    creds: dict[str, Any] = {
        "key_q": "q/v+1",
        "key_c": "c-value",
        "key_h": "h-value",
        "basic": {"username": "ann", "password": "pw:1"},
        "bearer": "b-value",
        "oidc": "o-value",
    }
    basic = base64.b64encode(b"ann:pw:1").decode()
    api = SecureAPI(doc, {**creds, "basic": basic})
    url = await serve(api.app)
    tools, snap = await tools_for(tmp_path, doc, url, credentials=creds)
    results = await run(snap, [(t, {}) for t in tools.tools.values()])
    assert api.refused == [] and all(r.status == 200 for r in results)
    for r in results:
        for secret in ("q/v+1", "c-value", "h-value", "pw:1", basic, "b-value", "o-value"):
            assert secret not in r.content


async def test_operation_no_configured_credentials_satisfy_is_called_without(tmp_path, serve):
    doc = oas3(
        {"/a": _get("a", [{"bearer": []}]), "/b": _get("b", [{"key_h": [], "key_q": []}])},
        SCHEMES,
    )
    api = SecureAPI(doc, {"key_h": "h"})
    url = await serve(api.app)
    tools, snap = await tools_for(tmp_path, doc, url, credentials={"key_h": "h"})
    assert tools.reports[0].unsatisfied == ["GET /a", "GET /b"]
    results = await run(snap, [(tools.tools["a"], {}), (tools.tools["b"], {})])
    assert [r.status for r in results] == [401, 401]
    assert "Invalid security scheme used" in results[0].content
    assert "X-Key" not in api.seen[0].headers and "X-Key" not in api.seen[1].headers


def test_check_lists_operations_no_configured_credentials_satisfy(tmp_path, capsys):
    doc = oas3(
        {"/a": _get("a", [{"bearer": []}]), "/b": _get("b", [{"key_h": [], "key_q": []}])},
        SCHEMES,
    )
    (tmp_path / "spec.json").write_text(json.dumps(doc))
    (tmp_path / "gateway.yaml").write_text(
        "tools:\n  - name: t\n    spec: spec.json\n    base_url: http://127.0.0.1:9\n"
        "    credentials: {key_h: h}\n"
    )
    assert main(["check", "--config", str(tmp_path / "gateway.yaml")]) == 0
    out = capsys.readouterr().out
    assert (
        "toolset t: no configured credentials satisfy the security of 2 operation(s), "
        "called without credentials: GET /a, GET /b" in out
    )


WIRE_SECRET = "s3cr/t+v=&é#x"  # encodes differently in every form


@pytest.mark.parametrize("scheme", ["key_q", "key_c", "key_h", "basic", "bearer", "oidc", "user"])
async def test_every_credential_kind_stays_out_of_tool_messages_and_logs(
    tmp_path, serve, caplog, scheme
):
    from urllib.parse import quote, quote_plus

    schemes = {**SCHEMES, "user": {"type": "http", "scheme": "bearer"}}
    doc = oas3({"/x": _get("x", [{scheme: []}])}, schemes)
    value: Any = WIRE_SECRET
    if scheme == "basic":
        value = {"username": "ann", "password": WIRE_SECRET}
    elif scheme == "user":
        value = {"from_header": "X-User-Token"}
    pair = base64.b64encode(f"ann:{WIRE_SECRET}".encode()).decode()
    api = SecureAPI(doc, {scheme: pair if scheme == "basic" else WIRE_SECRET})
    url = await serve(api.app)
    tools, snap = await tools_for(tmp_path, doc, url, credentials={scheme: value})
    headers = {"X-User-Token": WIRE_SECRET} if scheme == "user" else {}
    caplog.set_level("DEBUG")
    (result,) = await run(snap, [(tools.tools["x"], {})], headers)
    assert result.status == 200 and "[redacted]" in result.content
    forms = [WIRE_SECRET, quote(WIRE_SECRET, safe=""), quote_plus(WIRE_SECRET), pair]
    forms.append(json.dumps(WIRE_SECRET)[1:-1])
    for form in forms:
        assert form not in result.content, form
        assert form not in caplog.text, form


# --- config errors ----------------------------------------------------------------------------


async def test_credential_naming_an_unknown_scheme_is_a_config_error_listing_the_schemes(
    tmp_path,
):
    with pytest.raises(ConfigError) as e:
        await tools_for(
            tmp_path, READMES / "3.0" / "petstore.json", "http://x", credentials={"apikey": "k"}
        )
    text = str(e.value)
    assert "toolset t: credentials.apikey: not a security scheme of the document" in text
    assert "petstore_auth (oauth2)" in text and "api_key (apiKey in header api_key)" in text


@pytest.mark.parametrize(
    ("scheme", "value", "problem"),
    [
        ("key_h", {"username": "u", "password": "p"}, "is for http basic, not apiKey"),
        ("basic", "just-a-string", "an http basic scheme takes {username, password}"),
        ("bearer", {"client_id": "i", "client_secret": "s"}, "is for oauth2"),
        ("oauth", {"client_id": "i", "client_secret": "s"}, "has no clientCredentials tokenUrl"),
    ],
)
async def test_credential_value_that_does_not_fit_its_scheme_is_a_config_error(
    tmp_path, scheme, value, problem
):
    schemes = {
        **SCHEMES,
        "oauth": {
            "type": "oauth2",
            "flows": {"implicit": {"authorizationUrl": "https://x", "scopes": {}}},
        },
    }
    with pytest.raises(ConfigError) as e:
        await tools_for(tmp_path, oas3({}, schemes), "http://x", credentials={scheme: value})
    assert f"toolset t: credentials.{scheme}: " in str(e.value) and problem in str(e.value)
    assert "just-a-string" not in str(e.value)


def test_toolset_may_not_set_both_auth_and_credentials(tmp_path):
    raw = {
        "tools": [
            {
                "name": "t",
                "spec": "s.json",
                "auth": {"type": "bearer", "token": "x"},
                "credentials": {"a": "y"},
            }
        ]
    }
    with pytest.raises(ConfigError) as e:
        build_config(raw, "cfg", tmp_path)
    assert "tools[0]: set either auth" in str(e.value) and "not both" in str(e.value)


# --- OAuth2 client credentials ------------------------------------------------------------------


def _oauth_doc(token_url: str | None) -> dict[str, Any]:
    flows: dict[str, Any] = {"clientCredentials": {"tokenUrl": token_url, "scopes": {"read": ""}}}
    if token_url is None:
        flows = {"implicit": {"authorizationUrl": "https://x", "scopes": {}}}
    return oas3(
        {
            "/items": _get("items", [{"billing": ["read"]}]),
            "/other": _get("other", [{"billing": []}]),
        },
        {"billing": {"type": "oauth2", "flows": flows}},
    )


class TokenAPI(SecureAPI):
    """Accepts any token the Authlib server issued (and not revoked) for scope ``read``."""

    def __init__(self, doc: dict[str, Any], server: TokenServer) -> None:
        super().__init__(doc, {})
        self.server = server
        self.revoked: set[str] = set()

    def _satisfied(self, request: web.Request, name: str) -> bool:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        issued = [t for t in self.server.issued if t["access_token"] == token]
        return bool(issued) and issued[0].get("scope") == "read" and token not in self.revoked


@pytest.fixture
async def oauth(tmp_path, serve, monkeypatch):
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # http on loopback

    async def make(expires_in: int = 3600, secret: str = SECRET, token_url: str | None = None):
        server = TokenServer({"gw": Client("gw", SECRET)}, expires_in=expires_in)
        token_base = await serve(token_app(server))
        doc = _oauth_doc(f"{token_base}/oauth/token")
        api = TokenAPI(doc, server)
        url = await serve(api.app)
        cred = {"client_id": "gw", "client_secret": secret, "scopes": ["read"]}
        if token_url:
            cred["token_url"] = token_url
        tools, snap = await tools_for(tmp_path, doc, url, credentials={"billing": cred})
        return server, api, tools, snap

    return make


async def test_oauth_token_is_fetched_once_and_shared_by_concurrent_calls(oauth):
    server, api, tools, snap = await oauth()
    results = await run(snap, [(tools.tools["items"], {})] * 5 + [(tools.tools["other"], {})])
    assert [r.status for r in results] == [200] * 6
    assert server.requests == 1 and len(server.issued) == 1
    token = server.issued[0]["access_token"]
    assert all(token not in r.content for r in results)
    assert "[redacted]" in results[0].content  # the echoed Authorization header


async def test_oauth_token_is_refreshed_when_it_expires(oauth):
    server, api, tools, snap = await oauth(expires_in=1)  # cached for 0.9 s
    await run(snap, [(tools.tools["items"], {})])
    await asyncio.sleep(1.0)
    results = await run(snap, [(tools.tools["items"], {})])
    assert results[0].status == 200 and server.requests == 2


async def test_oauth_401_from_the_api_fetches_a_new_token_and_retries_once(oauth):
    server, api, tools, snap = await oauth()
    await run(snap, [(tools.tools["items"], {})])
    api.revoked.add(server.issued[0]["access_token"])
    results = await run(snap, [(tools.tools["items"], {})])
    assert results[0].status == 200 and server.requests == 2
    assert [r.status for r in await run(snap, [(tools.tools["items"], {})])] == [200]
    api.revoked.update(t["access_token"] for t in server.issued)
    api.server = TokenServer({})  # every token refused from now on: one retry, then the 401
    results = await run(snap, [(tools.tools["items"], {})])
    assert results[0].status == 401 and server.requests == 3


async def test_oauth_token_endpoint_failure_names_toolset_and_url_never_the_secret(oauth, caplog):
    server, api, tools, snap = await oauth(secret="wrong-secret-000")
    results = await run(snap, [(tools.tools["items"], {})])
    token_url = snap.credentials["t"].tokens["billing"].token_url
    assert results[0].content == (
        f"Error: could not get an OAuth2 token for toolset t from {token_url}: "
        "HTTP 401 (invalid_client). The call was not made."
    )
    assert api.seen == []
    assert "wrong-secret-000" not in caplog.text and SECRET not in caplog.text


async def test_oauth_token_endpoint_down_is_a_tool_message(oauth):
    server, api, tools, snap = await oauth()
    server.fail_with = 503
    results = await run(snap, [(tools.tools["items"], {})])
    assert results[0].content.endswith("HTTP 503 (temporarily_unavailable). The call was not made.")


async def test_oauth_token_url_from_config_when_the_document_has_none(tmp_path, serve, monkeypatch):
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    server = TokenServer({"gw": Client("gw", SECRET)})
    token_url = await serve(token_app(server)) + "/oauth/token"
    doc = _oauth_doc(None)
    api = TokenAPI(doc, server)
    url = await serve(api.app)
    cred = {"client_id": "gw", "client_secret": SECRET, "scopes": ["read"], "token_url": token_url}
    tools, snap = await tools_for(tmp_path, doc, url, credentials={"billing": cred})
    results = await run(snap, [(tools.tools["items"], {})])
    assert results[0].status == 200 and server.requests == 1


# --- per-user tokens ----------------------------------------------------------------------------


async def test_per_user_token_is_taken_from_the_client_request_header(tmp_path, serve, caplog):
    doc = oas3({"/me": _get("me", [{"bearer": []}])}, SCHEMES)
    api = SecureAPI(doc, {"bearer": "user-token-abc"})
    url = await serve(api.app)
    creds = {"bearer": {"from_header": "X-User-Token"}}
    tools, snap = await tools_for(tmp_path, doc, url, credentials=creds)
    results = await run(snap, [(tools.tools["me"], {})], {"X-User-Token": "user-token-abc"})
    assert results[0].status == 200 and "user-token-abc" not in results[0].content
    assert "user-token-abc" not in caplog.text


async def test_call_needing_a_missing_per_user_credential_is_not_made(tmp_path, serve):
    doc = oas3({"/me": _get("me", [{"bearer": []}])}, SCHEMES)
    api = SecureAPI(doc, {})
    url = await serve(api.app)
    creds = {"bearer": {"from_header": "X-User-Token"}}
    tools, snap = await tools_for(tmp_path, doc, url, credentials=creds)
    results = await run(snap, [(tools.tools["me"], {})])
    assert results[0].content == (
        "Error: GET /me needs the credential bearer (the client request's X-User-Token "
        "header), which this request did not carry, so the call was not made."
    )
    assert api.seen == []


# --- text bodies --------------------------------------------------------------------------------


async def test_text_only_request_body_is_a_string_sent_as_is(tmp_path, serve):
    def post(op_id: str, ctype: str, schema: dict[str, Any] | None) -> dict[str, Any]:
        media = {"schema": schema} if schema is not None else {}
        return {
            "post": {
                "operationId": op_id,
                "requestBody": {"required": True, "content": {ctype: media}},
            }
        }

    doc = oas3(
        {
            "/xml": post("xml", "application/xml", {"type": "string"}),
            "/yaml": post("yaml", "application/x-yaml", None),
            "/jwt": post("jwt", "application/jwt", {"type": "string"}),
            "/obj": post("obj", "application/xml", {"type": "object", "properties": {}}),
        },
        {},
    )
    api = SecureAPI(doc, {})
    url = await serve(api.app)
    tools, snap = await tools_for(tmp_path, doc, url)
    assert sorted(tools.tools) == ["jwt", "obj", "xml", "yaml"] and not tools.reports[0].skipped
    assert tools.tools["obj"].parameters["properties"]["requestBody"] == {
        "type": "string",
        "description": "The request body as application/xml text.",
    }
    body = tools.tools["xml"].parameters["properties"]["requestBody"]
    assert body == {"type": "string"} and tools.tools["xml"].parameters["required"] == [
        "requestBody"
    ]
    text = '<pet id="1">"x" &amp; y</pet>'
    results = await run(
        snap,
        [
            (tools.tools["xml"], {"requestBody": text}),
            (tools.tools["yaml"], {"requestBody": "a: 1\n"}),
        ],
    )
    first, second = (json.loads(r.content.split("\n", 1)[1]) for r in results)
    assert first["body"] == text and first["content_type"] == "application/xml"
    assert second["body"] == "a: 1\n" and second["content_type"] == "application/x-yaml"
