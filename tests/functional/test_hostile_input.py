"""Hostile clients: escaping paths, two-faced bodies, bombs, slow sends, malformed HTTP.

Each is answered with a 4xx OpenAI error naming the problem (never a 500, never an echo
of the input), and nothing of it reaches the upstream.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from conftest import model
from openai_schema import assert_valid

MESSAGES = [{"role": "user", "content": "hi"}]


async def post_raw(url: str, data: bytes, headers: dict[str, str] | None = None):
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers or {}) as r:
        return r.status, r.headers, await r.read()


def error_of(raw: bytes) -> dict:
    body = orjson.loads(raw)
    assert_valid("ErrorResponse", body)
    return body["error"]


async def raw_http(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library normalising them); read the answer."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


# --- item 5: the /v1/{tail} proxy stays under base_url -----------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/%2e%2e/%2e%2e/admin",
        "/v1/..%2F..%2Fadmin%3Fx%3D1",
        "/v1/embeddings/%2E%2E/%2e%2e/admin",
        "/v1/a%2Fb",
        "/v1/a%5Cb",
        "/v1/emb%23frag",
        "/v1/a//b",
        "/v1/./embeddings",
        "/v1/a%00b",
    ],
)
async def test_path_escaping_base_url_is_400_and_never_forwarded(fake_upstream, make_gateway, path):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    body = orjson.dumps({"model": "m", "input": "x"})
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    status, _, raw = await raw_http(gw.url, request)
    assert status in (400, 404)
    assert up.received == []
    if status == 400:
        assert error_of(raw)["code"] == "invalid_path"


async def test_forwarded_path_and_query_stay_as_sent_under_base_url(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway(
        {"models": [{"id": "m", "base_url": up.url + "/api/v1", "api_key": "sk-x"}]}
    )
    body = orjson.dumps({"model": "m", "input": "x"})
    status, _, _ = await post_raw(gw.v1 + "/embeddings/sub%20path?a=%26b&c=d", body)
    assert status == 200
    assert up.received[0].path == "/api/v1/embeddings/sub path"
    assert up.received[0].query == "a=%26b&c=d"


# --- item 6: duplicate keys -------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"other","model":"m","messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"other","mod\\u0065l":"m","messages":[{"role":"user","content":"hi"}]}',
    ],
)
async def test_duplicate_top_level_keys_are_reserialised_as_routed(
    fake_upstream, make_gateway, raw
):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    status, _, _ = await post_raw(gw.v1 + "/chat/completions", raw)
    assert status == 200
    sent = up.received[0].raw
    assert sent.count(b'"model"') == 1 and json.loads(sent)["model"] == "m"


async def test_body_without_duplicates_is_forwarded_byte_for_byte(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    raw = b'{ "model" : "m",\n "messages": [{"role":"user","content":"say \\"model\\": \\u00e9"}]}'
    status, _, _ = await post_raw(gw.v1 + "/chat/completions", raw)
    assert status == 200 and up.received[0].raw == raw


# --- item 12: compressed bodies ---------------------------------------------------------


def bomb(size: int) -> bytes:
    return gzip.compress(b'{"model":"m","messages":[],"x":"' + b"a" * size + b'"}', 9)


async def test_gzip_bomb_without_client_key_is_401_before_inflating(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"server": {"api_keys": ["k"]}, "models": [model("m", up)]})
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    status, _, raw = await post_raw(gw.v1 + "/chat/completions", bomb(50_000_000), headers)
    assert status == 401 and error_of(raw)["code"] == "invalid_api_key"


async def test_gzip_bomb_is_413_naming_max_request_bytes(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway(
        {"server": {"max_request_bytes": 1_000_000}, "models": [model("m", up)]}
    )
    headers = {"Content-Encoding": "gzip"}
    status, _, raw = await post_raw(gw.v1 + "/chat/completions", bomb(50_000_000), headers)
    assert status == 413
    error = error_of(raw)
    assert "server.max_request_bytes" in error["message"] and "decompressed" in error["message"]
    assert up.received == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_body_is_inflated_and_forwarded(fake_upstream, make_gateway, encoding):
    import zlib

    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    plain = orjson.dumps({"model": "m", "messages": MESSAGES})
    data = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    headers = {"Content-Encoding": encoding}
    status, _, _ = await post_raw(gw.v1 + "/chat/completions", data, headers)
    assert status == 200 and up.received[0].raw == plain


async def test_unknown_content_encoding_is_415(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    status, _, raw = await post_raw(gw.v1 + "/chat/completions", b"xx", {"Content-Encoding": "br"})
    assert status == 415 and error_of(raw)["code"] == "unsupported_content_encoding"


# --- item 13: slow clients --------------------------------------------------------------


async def test_slow_request_headers_connection_is_closed(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"server": {"header_timeout": 0.3}, "models": [model("m", up)]})
    parts = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    for _ in range(10):  # one header line at a time, slower than the timeout allows
        await asyncio.sleep(0.1)
        if reader.at_eof():
            break
        writer.write(b"X-Slow: 1\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
    writer.close()


async def test_slow_request_body_is_408(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"server": {"body_timeout": 0.3}, "models": [model("m", up)]})
    parts = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
    assert "server.body_timeout" in error_of(body)["message"] and up.received == []


# --- item 16: deep and broken JSON ------------------------------------------------------


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 1024"),
        (
            b'{"model":"m","messages":' + b"[" * 5000 + b"]" * 5000 + b"}",
            "nested deeper than 1024",
        ),
        (b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}', "surrogate"),
        (b'{"model":"m","messages":[{"role":"user","content":"\xff"}]}', "not valid UTF-8"),
    ],
)
async def test_deep_or_non_unicode_json_is_400_saying_so(
    fake_upstream, make_gateway, raw, fragment
):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up, params={"temperature": 0})]})
    status, _, body = await post_raw(gw.v1 + "/chat/completions", raw)
    assert status == 400 and fragment in error_of(body)["message"]


async def test_json_too_deep_to_rewrite_is_400_and_300_deep_is_forwarded(
    fake_upstream, make_gateway
):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up, params={"temperature": 0})]})

    def nested(depth: int) -> bytes:
        return b'{"model":"m","messages":' + b"[" * depth + b"]" * depth + b"}"

    status, _, _ = await post_raw(gw.v1 + "/chat/completions", nested(300))
    assert status == 200 and up.received[0].raw.count(b"[") == 300
    status, _, body = await post_raw(gw.v1 + "/chat/completions", nested(1020))
    assert status == 400 and "nested too deeply" in error_of(body)["message"]


# --- item 18: aiohttp's own errors ------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes, fragment",
    [
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"SECRETECHO" * 2000
            + b"\r\n\r\n",
            "longer than",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: SECRETECHO\r\n\r\n",
            "Content-Length",
        ),
        (b"GET /v1/SECRETECHO%0A\nx HTTP/1.1\r\nHost: x\r\n\r\n", ""),
        (b"SECRETECHO / HTTP/1.1\r\nHost: x\r\n\r\n", ""),
    ],
)
async def test_aiohttp_protocol_errors_are_openai_errors_without_echo(
    fake_upstream, make_gateway, request_bytes, fragment
):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    status, headers, body = await raw_http(gw.url, request_bytes)
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    assert b"SECRETECHO" not in body
    assert fragment in error_of(body)["message"]


@pytest.mark.parametrize(
    "request_line, status",
    [
        (b"GET /abc%0D%0ASet-Cookie:%20x HTTP/1.1", 404),
        (b"GET /v1/abc%0Adef HTTP/1.1", 405),
        (b"POST /v1/abc%0Adef HTTP/1.1", 400),
    ],
)
async def test_encoded_newline_in_path_gets_openai_json_not_aiohttp_text(
    fake_upstream, make_gateway, request_line, status
):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    request = request_line + b"\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    got, headers, body = await raw_http(gw.url, request)
    assert got == status and headers["content-type"].startswith("application/json")
    message = error_of(body)["message"]
    assert "\n" not in message and "\r" not in message
    assert up.received == []


@pytest.mark.parametrize("token", [b"\xff", b"k\xc3", b"\xed\xa0\x80"])
async def test_undecodable_client_key_bytes_are_401_not_500(fake_upstream, make_gateway, token):
    """aiohttp hands undecodable header bytes over as surrogates; the key check must cope."""
    up = await fake_upstream()
    gw = await make_gateway({"server": {"api_keys": ["k"]}, "models": [model("m", up)]})
    request = (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + token
        + b"\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = await raw_http(gw.url, request)
    assert status == 401 and error_of(body)["code"] == "invalid_api_key"


async def test_unknown_expect_header_is_an_openai_417_without_echo(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"server": {"api_keys": ["k"]}, "models": [model("m", up)]})
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: <script>SECRETECHO</script>"
        b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    status, headers, body = await raw_http(gw.url, request)
    assert status == 417 and headers["content-type"].startswith("application/json")
    assert b"SECRETECHO" not in body and error_of(body)["code"] == "expectation_failed"


async def test_expect_100_continue_still_gets_its_body_through(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    payload = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + payload
    )
    status, _, _ = await raw_http(gw.url, request)
    assert status in (100, 200) and len(up.received) == 1
