"""The edge, wrapped around every handler: request id, snapshot, client key, errors.

A request takes the app's current config snapshot here, once (``SNAPSHOT``), and keeps it to
its end. Handlers raise; the edge turns every failure into an OpenAI error body. Handlers
that stream start their response with ``start_stream``, so that it carries ``x-request-id``
and so that a failure after its headers went out ends the stream with an error event
instead of a second response.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import ClientConnectionResetError, web

from gateway import stream
from gateway.errors import AuthenticationFailed, GatewayError, error_body
from gateway.facts import Facts
from gateway.observe import OBSERVER
from gateway.state import STATE, Snapshot, State

log = logging.getLogger("gateway")

REQUEST_ID: Any = web.RequestKey("request_id", str) if hasattr(web, "RequestKey") else "request_id"
SNAPSHOT: Any = web.RequestKey("snapshot", Snapshot) if hasattr(web, "RequestKey") else "snapshot"
STREAM: Any = (
    web.RequestKey("stream", web.StreamResponse) if hasattr(web, "RequestKey") else "stream"
)
FACTS: Any = web.RequestKey("facts", Facts) if hasattr(web, "RequestKey") else "facts"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def edge() -> Callable[[Handler], Handler]:
    """The edge, wrapped around every handler: request id, client key, failures as errors.

    A wrapper applied when routes are added rather than an aiohttp middleware: an app with
    no middlewares skips aiohttp's middleware chain (two more coroutines a request).
    Request ids are a per-process random prefix and a counter: unique, and no syscall.
    """
    prefix = os.urandom(8).hex()
    counter = itertools.count(1)

    def wrap(handler: Handler) -> Handler:
        endpoint = handler.__name__

        @functools.wraps(handler)
        async def at_the_edge(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            incoming = request.headers.get("X-Request-Id")
            if incoming and _SAFE_ID.match(incoming):
                rid = incoming
            else:
                rid = f"{prefix}{next(counter):016x}"
            request[REQUEST_ID] = rid
            obs = request.app[OBSERVER]
            facts = request[FACTS] = Facts(rid, request.method, request.path, endpoint, start, obs)
            obs.begin(facts, request)
            state = request.app[STATE]
            state.inflight += 1
            try:
                response = await _handle(request, handler, facts, state)
                facts.status = response.status
                return response
            except asyncio.CancelledError:
                facts.status, facts.error = 499, "client_closed_request"
                raise
            except web.HTTPException as e:  # a redirect, passed on to aiohttp
                facts.status = e.status
                raise
            finally:
                state.inflight -= 1
                obs.end(facts)

        return at_the_edge

    return wrap


async def _handle(
    request: web.Request, handler: Handler, facts: Facts, state: State
) -> web.StreamResponse:
    rid = facts.request_id
    snapshot = request[SNAPSHOT] = state.current
    try:
        keys = snapshot.client_keys
        if keys and request.path not in _PUBLIC_PATHS:
            facts.key = snapshot.client_key_names[check_client_key(request, keys)]
        response = await handler(request)
    except GatewayError as e:
        facts.error = e.code or e.type
        if (started := _started_stream(request)) is not None:
            return await _end_stream(started, e)
        response = error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        facts.error = "not_found" if e.status == 404 else "http_error"
        response = http_error(request, e.status, e.reason)
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
        facts.error = "server_error"
        if (started := _started_stream(request)) is not None:
            failed = GatewayError("The gateway failed while handling this stream.")
            return await _end_stream(started, failed)
        body = error_body("The gateway failed while handling this request.", "server_error")
        response = json_error(500, orjson.dumps(body))
    if not response.prepared:  # streaming handlers set it before they prepare
        response.headers["x-request-id"] = rid
        if state.draining:  # the client should take its next request elsewhere
            response.force_close()
    return response


def http_error(request: web.Request, status: int, reason: str) -> web.Response:
    code = "not_found" if status == 404 else None
    message = f"{request.method} {request.path}: {reason}"
    if status == 413:
        code = "request_too_large"
        message = f"{request.method} {request.path}: {too_large(request)}"
    body = error_body(message, "invalid_request_error", None, code)
    return json_error(status, orjson.dumps(body))


def too_large(request: web.Request) -> str:
    """What a 413 says: the limit, the key that sets it, what to do."""
    limit = request[SNAPSHOT].config.server.max_request_bytes
    return (
        f"the request body is larger than {limit:,} bytes (server.max_request_bytes). Send "
        "a smaller body, or raise server.max_request_bytes in the gateway config."
    )


def error_response(error: GatewayError) -> web.Response:
    response = json_error(error.status, error.body_bytes())
    if error.headers:
        response.headers.update(error.headers)
    if error.status == 408:
        response.force_close()  # the rest of the body may never come
    return response


def json_error(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def check_client_key(request: web.Request, keys: tuple[bytes, ...]) -> int:
    """The index of the client's key in ``keys``; a missing or wrong key raises."""
    given = request.headers.get("Authorization", "")
    # aiohttp hands undecodable header bytes over as surrogates: turn them back into bytes
    raw = given[7:].strip().encode("utf-8", "surrogateescape")
    token = raw if given[:7].lower() == "bearer " else b""
    found = -1
    for i, key in enumerate(keys):  # compare with every key, always: timing says nothing
        if hmac.compare_digest(token, key):
            found = i
    if found < 0:
        what = "is missing" if not token else "is not valid for this gateway"
        raise AuthenticationFailed(
            f"The API key {what}. Send one of the keys in server.api_keys as "
            "'Authorization: Bearer <key>'."
        )
    return found


async def start_stream(request: web.Request, response: web.StreamResponse) -> None:
    """Send a streaming response's headers (with ``x-request-id``); the edge now knows it."""
    response.headers["x-request-id"] = request[REQUEST_ID]
    request[STREAM] = response
    await response.prepare(request)
    facts = request[FACTS]
    facts.obs.stream_started(facts)


def _started_stream(request: web.Request) -> web.StreamResponse | None:
    response = request.get(STREAM)
    return response if response is not None and response.prepared else None


async def _end_stream(response: web.StreamResponse, error: GatewayError) -> web.StreamResponse:
    """After the headers, an error can only be an SSE event: never a second status line."""
    with contextlib.suppress(ConnectionResetError, ClientConnectionResetError):
        await response.write(stream.error_event(error))
        await response.write_eof()
    return response
