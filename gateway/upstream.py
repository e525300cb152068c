"""The only code that talks to LLM servers.

One pooled ``aiohttp.ClientSession`` for the life of the app. ``Upstream.call`` sends one
request along a chain of routes (the model, then its fallbacks), retrying connection
errors, 429 and 5xx with exponential backoff that honours ``Retry-After``. It returns only
a successful reply; every failure becomes an ``UpstreamError`` here and nowhere else.
Nothing is retried once the caller has started to send the reply to its client: ``call``
returns before that point.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDictProxy

from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamKeyMissing,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.facts import Facts
from gateway.redact import Redactor
from gateway.routing import Route

log = logging.getLogger("gateway.upstream")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0
MAX_ERROR_BODY = 1 << 20
#: upstream response headers worth passing on to the client
_FORWARD_PREFIXES = ("openai-", "x-ratelimit-", "anthropic-")
_FORWARD_HEADERS = frozenset({"content-type", "retry-after"})


@dataclass
class Reply:
    """A successful upstream answer; ``response`` is open (stream) or already read (``body``)."""

    route: Route
    response: aiohttp.ClientResponse
    body: bytes | None

    @property
    def status(self) -> int:
        return self.response.status

    def client_headers(self) -> dict[str, str]:
        return forwarded_headers(self.response.headers)

    def release(self) -> None:
        self.response.release()

    def close(self) -> None:
        self.response.close()


def forwarded_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The upstream response headers worth passing on (these never repeat)."""
    out = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _FORWARD_HEADERS or low.startswith(_FORWARD_PREFIXES):
            out[name] = value
    return out


def new_session(resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """The pooled session; ``resolver`` (the app's ``MockResolver``) is closed by its owner."""
    connector = aiohttp.TCPConnector(
        limit=0, ttl_dns_cache=300, keepalive_timeout=15, resolver=resolver
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
        json_serialize=lambda o: orjson.dumps(o).decode(),
    )


BodyFor = Callable[[Route], bytes]


class Upstream:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self,
        chain: list[Route],
        path: str,
        body_for: BodyFor,
        *,
        stream: bool,
        request_id: str = "",
        query: str = "",
        facts: Facts | None = None,
    ) -> Reply:
        """Send to the first route that answers successfully; raise the last failure."""
        tracing = facts.obs.tracing if facts is not None else None
        if tracing is None:
            return await self._call_chain(chain, path, body_for, stream, request_id, query, facts)
        first = chain[0]
        with tracing.round(first.id, first.upstream_model, first.host):
            return await self._call_chain(chain, path, body_for, stream, request_id, query, facts)

    async def _call_chain(
        self,
        chain: list[Route],
        path: str,
        body_for: BodyFor,
        stream: bool,
        request_id: str,
        query: str,
        facts: Facts | None,
    ) -> Reply:
        error: GatewayError | None = None
        tried: list[str] = []  # why the models before this one were passed over
        for i, route in enumerate(chain):
            try:
                reply = await self._call_route(
                    route, path, body_for(route), stream, request_id, query, facts
                )
            except (UpstreamError, UpstreamKeyMissing) as e:
                error = e
                falls_back = _falls_back(e) and route is not chain[-1]
                if facts is not None:
                    _failed(facts, route, e, falls_back)
                if not falls_back:
                    _tell_tried(e, tried)
                    raise
                log.warning(
                    "model %s failed (%s); falling back to %s", route.id, e.message, chain[i + 1].id
                )
                tried.append(e.message)
                continue
            if facts is not None:
                facts.served, facts.upstream_status = route.id, reply.status
                facts.obs.attempt(route.id, "ok")
            return reply
        raise error or UpstreamUnreachable("no route")  # pragma: no cover - chain is never empty

    async def _call_route(
        self,
        route: Route,
        path: str,
        body: bytes,
        stream: bool,
        request_id: str,
        query: str,
        facts: Facts | None = None,
    ) -> Reply:
        route.check_key()
        headers = _send_headers(route, stream, request_id, facts)
        url = route.url(path) + (f"?{query}" if query else "")
        timeout = route.client_timeout
        for attempt in range(route.retries + 1):
            last = attempt == route.retries
            try:
                resp = await self.session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                )
            except aiohttp.ClientConnectionError as e:
                if last or isinstance(e, aiohttp.ServerTimeoutError):
                    raise _connection_error(route, e) from None
                _retried(facts, route)
                await asyncio.sleep(_delay(route, attempt, None) or 0.0)
                continue
            except asyncio.TimeoutError:
                raise _timeout(route) from None
            except aiohttp.InvalidURL as e:  # config URLs are checked; this is a last resort
                raise UpstreamUnreachable(
                    f"The base_url of model {route.id!r} cannot be used ({e}); "
                    "fix it in the gateway config"
                ) from None
            if 300 <= resp.status < 400:
                raise _redirected(route, resp)
            if resp.status < 400:
                return await _finish(route, resp, stream)
            if resp.status in RETRY_STATUSES and not last:
                delay = _delay(route, attempt, resp.headers.get("Retry-After"))
                resp.release()
                if delay is not None:
                    _retried(facts, route)
                    log.info(
                        "model %s: HTTP %s, retry %d in %.2fs",
                        route.id,
                        resp.status,
                        attempt + 1,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
            raise await error_from_response(route, resp)
        raise AssertionError("unreachable")  # pragma: no cover


def _send_headers(
    route: Route, stream: bool, request_id: str, facts: Facts | None
) -> dict[str, str]:
    """The route's ready-made headers, plus this request's id and trace context."""
    headers = route.stream_headers if stream else route.send_headers
    if request_id:
        headers = {**headers, "X-Request-Id": request_id}
    if facts is not None and facts.obs.tracing is not None:
        headers = facts.obs.tracing.inject(headers)
    return headers


def _retried(facts: Facts | None, route: Route) -> None:
    if facts is not None:
        facts.obs.attempt(route.id, "retried")


def _redirected(route: Route, resp: aiohttp.ClientResponse) -> UpstreamError:
    """Upstream redirects are not followed: the model's key headers would go along.

    (aiohttp drops ``Authorization`` on a redirect to another host, but not ``api-key``
    or any other header that carries a key.)
    """
    resp.release()
    where = urlsplit(resp.headers.get("Location", "").strip())
    target = route.redactor.redact(f"{where.scheme}://{where.netloc}{where.path}")
    return UpstreamError(
        f"The upstream of model {route.id!r} at {route.host} answered HTTP {resp.status}, a "
        f"redirect to {target}; the gateway does not follow upstream redirects (the model's "
        "key would go along). Set this model's base_url to the address it should call.",
        status=502,
        code="upstream_redirect",
    )


async def _finish(route: Route, resp: aiohttp.ClientResponse, stream: bool) -> Reply:
    if stream and resp.content_type == "text/event-stream":
        return Reply(route, resp, None)
    try:
        body, whole = await read_capped(resp.content, route.max_response_bytes)
        if not whole:
            resp.close()
            raise too_large(route)
    except asyncio.TimeoutError:
        resp.close()
        raise _timeout(route) from None
    except aiohttp.ClientError as e:
        resp.close()
        raise _connection_error(route, e) from None
    return Reply(route, resp, body)


async def read_capped(content: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read to the end or to ``limit`` bytes (decompressed, counted as they arrive).

    Returns the bytes and whether that was all of it. A read that returns less than asked
    is not the end: this reads on until the stream ends or the cap is passed. Gives the
    event loop a turn every megabyte, so one large body never stalls other requests.
    """
    if content.is_eof():  # all of it already arrived (small replies do): no await
        data = content.read_nowait()
        return (data, True) if len(data) <= limit else (data[:limit], False)
    parts: list[bytes] = []
    size = since_yield = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            parts.append(chunk[: len(chunk) - (size - limit)])
            return b"".join(parts), False
        parts.append(chunk)
        since_yield += len(chunk)
        if since_yield >= _YIELD_EVERY:
            since_yield = 0
            await asyncio.sleep(0)
    return b"".join(parts), True


_YIELD_EVERY = 1 << 20


def too_large(route: Route, what: str = "a response") -> UpstreamError:
    return UpstreamError(
        f"The upstream of model {route.id!r} at {route.host} sent {what} larger than "
        f"{route.max_response_bytes:,} bytes (max_response_bytes of this model); the "
        "gateway stopped reading it.",
        status=502,
        code="upstream_response_too_large",
    )


def _tell_tried(e: GatewayError, tried: list[str]) -> None:
    """A fallback's own failure also says why the models before it were not used
    (an unset key would otherwise go unmentioned); an upstream's own error stays as sent."""
    if tried and not (isinstance(e, UpstreamError) and e.error is not None):
        e.message = f"{e.message} (a fallback, tried because {'; then '.join(tried)})"


def _falls_back(e: GatewayError) -> bool:
    """Unreachable, timed out, overloaded, or no key to send (its variable is unset)."""
    if isinstance(e, (UpstreamUnreachable, UpstreamTimeout, UpstreamKeyMissing)):
        return True
    return isinstance(e, UpstreamError) and e.status in RETRY_STATUSES


def _failed(facts: Facts, route: Route, e: GatewayError, falls_back: bool) -> None:
    """Note a route's failure: its outcome, and the upstream's status if it answered."""
    answered = isinstance(e, UpstreamError) and not isinstance(
        e, (UpstreamUnreachable, UpstreamTimeout)
    )
    facts.upstream_status = e.status if answered else None
    if falls_back:
        outcome = "fell_back"
    elif isinstance(e, UpstreamTimeout):
        outcome = "timeout"
    elif isinstance(e, UpstreamKeyMissing):
        outcome = "no_key"
    elif not answered:
        outcome = "unreachable"
    else:
        outcome = "4xx" if e.status < 500 else "5xx"
    facts.obs.attempt(route.id, outcome)


def _delay(route: Route, attempt: int, retry_after: str | None) -> float | None:
    """Seconds to wait before the next attempt; None when Retry-After asks for too long."""
    base = route.backoff * (2**attempt)
    if retry_after:
        wanted = parse_retry_after(retry_after)
        if wanted is not None:
            return wanted if wanted <= MAX_RETRY_AFTER else None
    return min(base, MAX_RETRY_AFTER)


def parse_retry_after(value: str) -> float | None:
    """``Retry-After`` as seconds (a number, or an HTTP date); None when unreadable."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _connection_error(route: Route, e: Exception) -> UpstreamError:
    if isinstance(e, aiohttp.ServerTimeoutError):
        return _timeout(route)
    reason = type(e).__name__
    if isinstance(e, aiohttp.ClientConnectorError):
        reason = str(e.os_error.strerror or e.os_error) if e.os_error else reason
    return UpstreamUnreachable(
        f"Could not reach the upstream of model {route.id!r} at {route.host}: {reason}"
    )


def midstream_error(route: Route, e: BaseException) -> UpstreamError:
    """A stream that failed after it started (the client already has part of it)."""
    if isinstance(e, asyncio.TimeoutError):
        return UpstreamTimeout(
            f"The upstream of model {route.id!r} at {route.host} stopped sending for "
            f"{route.timeout:g} s in the middle of the stream"
        )
    return UpstreamUnreachable(
        f"The upstream of model {route.id!r} at {route.host} broke off the stream "
        f"({type(e).__name__})"
    )


def _timeout(route: Route) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"The upstream of model {route.id!r} at {route.host} did not answer within "
        f"{route.timeout:g} s"
    )


async def error_from_response(route: Route, resp: aiohttp.ClientResponse) -> UpstreamError:
    """Turn an upstream error status into our error, keeping its status and message."""
    try:
        raw, _ = await read_capped(resp.content, MAX_ERROR_BODY)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        raw = b""
    finally:
        resp.release()
    status = resp.status
    if status in (401, 403):
        return _key_refused(route, status)
    error, message = _upstream_error(raw, route.redactor)
    if status == 404 and _wrong_path(error, message):
        return _path_not_found(route, resp, message)
    message = message or f"HTTP {status} from the upstream of model {route.id!r}"
    etype = "invalid_request_error" if status < 500 else "upstream_error"
    return UpstreamError(message, error=error, status=status, type=etype, code=None)


def _key_refused(route: Route, status: int) -> UpstreamError:
    if not route.has_key:
        return UpstreamError(
            f"The upstream of model {route.id!r} ({route.host}) answered HTTP {status}: it "
            "wants an API key, and none is configured for this model. Add "
            "'api_key: ${YOUR_KEY_VARIABLE}' to this model in the gateway config (the "
            "client's own key is never forwarded upstream).",
            status=status,
            type="invalid_request_error",
            code="upstream_api_key_missing",
        )
    return UpstreamError(
        f"The upstream of model {route.id!r} ({route.host}) rejected the gateway's API key "
        f"(HTTP {status}). Check this model's api_key in the gateway config.",
        status=status,
        type="invalid_request_error",
        code="invalid_api_key",
    )


#: what servers say for a path they do not have (a model they lack is another message)
_BARE_404 = re.compile(
    r"^(404\W*)?((page|file|resource|url) )?not found\W*$"
    r"|^cannot (post|get)\b|^unexpected endpoint|^<|^$",
    re.IGNORECASE,
)


def _wrong_path(error: dict[str, Any] | None, message: str) -> bool:
    """A 404 for the path itself (a base_url without /v1), not OpenAI's model_not_found."""
    if error is not None and error.get("code") == "model_not_found":
        return False
    return bool(_BARE_404.match(message.strip()))


def _path_not_found(route: Route, resp: aiohttp.ClientResponse, said: str) -> UpstreamError:
    url = resp.url.with_query(None).with_user(None).with_password(None)
    said = said.strip()
    answer = f" ({said[:200]!r})" if said and not said.startswith("<") else ""
    return UpstreamError(
        f"The upstream of model {route.id!r} answered 404 Not Found{answer} for {url}. Check "
        "that this model's base_url in the gateway config ends where the OpenAI paths begin "
        "(usually with /v1, e.g. http://127.0.0.1:11434/v1 for Ollama, "
        "http://127.0.0.1:8000/v1 for vLLM), and that the upstream serves this endpoint.",
        status=404,
        type="invalid_request_error",
        code="upstream_not_found",
    )


def _upstream_error(raw: bytes, redactor: Redactor) -> tuple[dict[str, Any] | None, str]:
    """The error object and message of an upstream error body, every secret redacted.

    Upstreams that echo the request put the key anywhere (``error.details``, lists, a
    plain-text body): a JSON body is redacted in every string, keys included, whatever its
    structure and escapes; any other body as text, before it is cut.
    """
    try:
        data = redactor.redact_json(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None, redactor.redact(raw.decode("utf-8", "replace")).strip()[:2000]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err, err["message"]
        for key in ("error", "message", "detail"):
            if isinstance(data.get(key), str):
                return None, data[key]
    return None, redactor.redact(raw.decode("utf-8", "replace")).strip()[:2000]
