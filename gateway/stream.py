"""Server-sent events: writing them, and (for the tool loop) reading and merging them."""

from __future__ import annotations

import orjson

from gateway.errors import GatewayError

DONE = b"data: [DONE]\n\n"


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """An error after the stream started: the openai SDKs raise ``APIError`` on it."""
    return event(error.body())


def comment(text: str) -> bytes:
    return b": " + text.encode() + b"\n\n"
