"""JSON request bodies in and out: orjson, and a clear 400 for what it cannot carry.

A body nested deeper than orjson reads (1,024 levels), one with a lone surrogate
(``"\\ud800"``), or one too deep to write back after a rewrite is the client's error: each
is an ``InvalidRequest`` saying what is wrong, never a ``RecursionError`` or a
``UnicodeEncodeError`` escaping as a 500.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from gateway.errors import InvalidRequest

#: orjson reads at most this many levels of nesting
MAX_DEPTH = 1024
#: the top-level keys the gateway acts on when it forwards a body, and their raw forms
_WATCHED = tuple((key, f'"{key}"'.encode()) for key in ("model", "stream"))
# an ASCII letter written as an escape (``"mod\\u0065l"``)
_ESCAPED_ASCII = re.compile(rb"\\u00[4-7][0-9a-fA-F]")


def loads(raw: bytes) -> Any:
    """The parsed body; every way it can fail is a 400 naming the problem."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(_why_not_json(raw, str(e))) from None


def _why_not_json(raw: bytes, reason: str) -> str:
    if not raw.strip():
        return "The request body is empty; send a JSON object."
    if "depth limit" in reason:
        return (
            f"The request body is nested deeper than {MAX_DEPTH} levels of arrays and "
            "objects; the gateway does not read it."
        )
    if "not valid UTF-8" in reason:
        return (
            "The request body is not valid UTF-8 (a byte sequence that is no character); "
            "send JSON encoded as UTF-8."
        )
    if "surrogate" in reason:
        return (
            "The request body has a lone UTF-16 surrogate escape (such as \\ud800) in a "
            f"string, which is not valid Unicode ({reason})."
        )
    return f"The request body is not valid JSON ({reason}); send a JSON object."


def dumps(obj: Any) -> bytes:
    """A body the gateway rewrote, as bytes; too deep or not Unicode is a 400."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson writes at most 254 levels; the standard library goes deeper
        pass
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    except RecursionError:
        raise InvalidRequest(
            "The request is nested too deeply for the gateway to rewrite it for the "
            "upstream; flatten its arrays and objects."
        ) from None
    except (UnicodeEncodeError, ValueError, TypeError) as e:
        raise InvalidRequest(f"The request cannot be written as JSON: {e}") from None


def keys_disagree(raw: bytes, body: dict[str, Any]) -> bool:
    """Whether the raw bytes might mean something other than ``body`` to another parser.

    True when a top-level key is repeated (``{"model":"a","model":"b"}``: the gateway
    routes by the last, some servers keep the first). Cheap on the hot path: a body is
    parsed a second time, to be sure, only when a key the gateway acts on (``model``,
    ``stream``) occurs more than once in it, or when it spells an ASCII letter as a
    ``\\u00XX`` escape (the way to hide a second ``"model"`` from a byte search).
    """
    for key, needle in _WATCHED:
        if key in body and raw.find(needle) != raw.rfind(needle):  # one pass over the body
            return _repeated_keys(raw)
    # a one-byte search is a memchr; only bodies with escapes pay for the second search
    if b"\\" in raw and b"\\u00" in raw and _ESCAPED_ASCII.search(raw):
        return _repeated_keys(raw)
    return False


def _repeated_keys(raw: bytes) -> bool:
    try:
        pairs = json.loads(raw, object_pairs_hook=lambda p: p)
    except (ValueError, RecursionError):
        return True
    if not isinstance(pairs, list):
        return False
    keys = [k for k, _ in pairs]
    return len(set(keys)) != len(keys)
