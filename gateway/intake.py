"""Reading what a client sends: the body (to its cap, decompressed, in time) and the path.

The server runs with aiohttp's automatic request decompression off (``gateway.server``), so
nothing is inflated before the edge has checked the client's key. Here a ``gzip`` or
``deflate`` body is inflated a slice at a time and counted, so a compression bomb costs at
most ``server.max_request_bytes`` of memory and stops there with a 413.
"""

from __future__ import annotations

import asyncio
import sys
import zlib
from urllib.parse import unquote

from aiohttp import web

from gateway.errors import GatewayError, InvalidRequest

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # pragma: no cover - aiohttp depends on async_timeout before 3.11
    from async_timeout import timeout as _timeout

_SLICE = 1 << 18  # inflate at most this much before giving the event loop a turn


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BodyTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, decompressed; 413 past ``limit`` bytes, 408 after ``timeout`` s."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    plain = encoding in ("", "identity")
    if request.content.is_eof() and plain:  # all of it came with the headers: no timer
        data = request.content.read_nowait()  # what is buffered, no await
        if len(data) > limit:
            raise _too_large(limit)
        return data
    try:
        async with _timeout(timeout):
            if plain:
                return await _read_plain(request, limit)
            return await _read_inflated(request, encoding, limit)
    except asyncio.TimeoutError:
        raise BodyTimeout(
            f"The request body did not arrive within {timeout:g} s (server.body_timeout)."
        ) from None


async def _read_plain(request: web.Request, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


async def _read_inflated(request: web.Request, encoding: str, limit: int) -> bytes:
    inflater = _inflater(encoding)
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            data = chunk
            while data:
                out = inflater.decompress(data, _SLICE)
                size += len(out)
                if size > limit:
                    raise _too_large(limit, inflated=True)
                parts.append(out)
                data = inflater.unconsumed_tail
                if data:
                    await asyncio.sleep(0)  # a bomb never holds the loop for long
        parts.append(inflater.flush())
    except zlib.error:
        raise InvalidRequest(
            f"The request body is not valid {encoding} data (Content-Encoding: {encoding})."
        ) from None
    if size > limit:
        raise _too_large(limit, inflated=True)
    return b"".join(parts)


def _inflater(encoding: str) -> zlib._Decompress:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib-wrapped (gzip accepted too)
    raise GatewayError(
        f"Content-Encoding {encoding!r} is not supported; send the body as it is, "
        "or compressed with gzip or deflate.",
        status=415,
        type="invalid_request_error",
        code="unsupported_content_encoding",
    )


def _too_large(limit: int, inflated: bool = False) -> BodyTooLarge:
    what = " once decompressed" if inflated else ""
    return BodyTooLarge(
        f"The request body is larger than {limit:,} bytes{what} (server.max_request_bytes). "
        "Send a smaller body, or raise server.max_request_bytes in the gateway config."
    )


def confined_tail(request: web.Request) -> str:
    """The path after ``/v1/`` (or ``/``) as the client wrote it; refused if it could leave.

    aiohttp decodes the path before routing (``%2e%2e`` becomes ``..``); this looks at the
    raw one. A segment that decodes to ``.`` or ``..``, or to anything holding ``/``, ``\\``,
    ``?``, ``#`` or a control character, and an empty segment, are a 400: what is forwarded
    is always ``base_url`` + ``/`` + these segments, under the model's ``base_url`` path.
    """
    raw = request.rel_url.raw_path
    tail = raw[4:] if raw.startswith("/v1/") else raw[1:]  # OpenAI paths also come bare
    segments = tail.split("/")
    for segment in segments:
        decoded = unquote(segment)
        if decoded in ("", ".", "..") or any(c in _FORBIDDEN or c < " " for c in decoded):
            raise InvalidRequest(
                "The path after /v1/ has an empty, '.' or '..' segment, or an encoded '/', "
                "'\\', '?', '#' or control character; the gateway forwards only plain "
                "paths under the model's base_url.",
                code="invalid_path",
            )
    return tail


_FORBIDDEN = frozenset("/\\?#\x7f")
