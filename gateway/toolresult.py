"""A tool server's response -> the text of a tool message.

Status line and body: JSON compacted, text as text, binary as a note; capped at the
configured size, and redacted (``gateway.redact``) before it is cut.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

import aiohttp
import orjson

from gateway.redact import Redactor

_NO_REDACTION = Redactor(())
_TEXTUAL = ("json", "xml", "text/", "javascript", "yaml", "csv", "html", "x-www-form-urlencoded")


@dataclass
class ToolResult:
    content: str
    status: int | None = None
    bytes: int = 0
    #: ok, http_error, timeout, unreachable, redirect_refused, too_many_redirects, rejected,
    #: no_credentials (a per-user value missing, a token endpoint failing)
    outcome: str = "ok"
    #: why the call failed, in a few words (for the log line; the model reads ``content``)
    error: str | None = None


async def read_result(
    resp: aiohttp.ClientResponse, max_bytes: int, redactor: Redactor = _NO_REDACTION
) -> ToolResult:
    """Status line and body, JSON compacted, text as text, binary as a note; capped.

    Redacted before it is cut; a body read only up to the cap loses a tail that begins a
    secret (its rest was never read, so the redactor could not see it whole).
    """
    data = bytearray()
    complete = True
    async for chunk in resp.content.iter_chunked(65536):
        data += chunk
        if len(data) > max_bytes:
            complete = False
            break
    ctype = resp.headers.get("Content-Type", "").lower()
    head = f"HTTP {resp.status}"
    if data and not _is_text(ctype, bytes(data[:1024])):
        media = ctype.split(";")[0].strip()  # its parameters are the server's words, unredacted
        note = f"[binary response: {media or 'unknown type'}, {_size(resp, data, complete)}]"
        return ToolResult(f"{head}\n{note}", resp.status, len(data))
    text = _body_text(bytes(data), ctype, complete)
    if not complete:
        text = redactor.drop_partial(text)
    text = redactor.redact(text)
    if len(text.encode()) > max_bytes or not complete:
        text = (
            f"{redactor.cut(text, max_bytes)}\n…[truncated: the response was "
            f"{_size(resp, data, complete)}; only the first {max_bytes} bytes are shown]"
        )
    return ToolResult(f"{head}\n{text}" if text else head, resp.status, len(data))


def _is_text(ctype: str, sample: bytes) -> bool:
    if any(t in ctype for t in _TEXTUAL):
        return True
    if ctype and not ctype.startswith("application/octet-stream"):
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in sample


def _body_text(data: bytes, ctype: str, complete: bool) -> str:
    if complete and "json" in ctype:
        try:
            return orjson.dumps(orjson.loads(data)).decode()
        except orjson.JSONDecodeError:
            pass
    if not complete:  # cut mid-body: a character cut in half is left out, not replaced
        return codecs.getincrementaldecoder("utf-8")("replace").decode(data)
    return data.decode("utf-8", "replace")


def _size(resp: aiohttp.ClientResponse, data: bytearray, complete: bool) -> str:
    if complete:
        return f"{len(data)} bytes"
    length = resp.headers.get("Content-Length")
    return f"{length} bytes" if length else f"more than {len(data) - 1} bytes"
