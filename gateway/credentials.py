"""Per-operation credentials: a toolset's ``credentials`` by the document's security schemes.

At start-up, ``check`` holds the config against the document's schemes. Per call,
``ToolsetCredentials.for_call`` picks the operation's first ``security`` alternative whose
schemes all have a value (the client request's header for ``from_header`` ones), and says
where each value goes, as the scheme says:

    apiKey                      header, query or cookie, under the scheme's name
    http basic                  Authorization: Basic base64(username:password)
    http bearer (other http)    Authorization: Bearer <value>  (<Scheme> <value>)
    oauth2, openIdConnect       Authorization: Bearer <value, or the client-credentials token>

OAuth2 client-credentials tokens are fetched from the token URL with the configured scopes,
cached until shortly before ``expires_in``, one request at a time per toolset and scheme;
``ToolsetCredentials`` lives in the config snapshot, so a reload starts a fresh cache.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote_plus

import aiohttp
import orjson

from gateway.config import BasicCredential, ClientCredentials, FromHeader, ToolsetConfig
from gateway.openapi.ir import Operation, SecurityScheme

MAX_TOKEN_RESPONSE = 64 * 1024
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Credential:
    """One credential a call carries: where it goes, its name there, its value as sent."""

    location: Literal["header", "query", "cookie"]
    name: str
    value: str

    def claims(self, location: str, name: str) -> bool:
        """Would a parameter ``name`` in ``location`` set or shadow this credential?"""
        key = name.strip().lower()
        if (location, key, self.location) == ("header", "cookie", "cookie"):
            return True  # a Cookie header would replace the cookie credential
        return location == self.location and key == self.name.lower()


class CredentialError(Exception):
    """A call cannot be made with its credentials; the message goes to the model."""


@dataclass
class CallCredentials:
    """What one call sends, and what that adds to the secrets to redact."""

    credentials: list[Credential] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # known only now (tokens)
    #: client-credentials tokens sent, to be expired when the API answers 401
    tokens: list[tuple[TokenSource, str]] = field(default_factory=list)


# --- start-up checks --------------------------------------------------------------------------


def check(ts: ToolsetConfig, schemes: dict[str, SecurityScheme]) -> list[str]:
    """Config problems: unknown scheme names, values that do not fit their scheme."""
    defined = ", ".join(s.describe() for s in schemes.values()) or "none"
    problems = []
    for key, value in ts.credentials.items():
        scheme = schemes.get(key)
        problem = (
            "not a security scheme of the document" if scheme is None else _misfit(scheme, value)
        )
        if problem:
            problems.append(
                f"toolset {ts.name}: credentials.{key}: {problem} "
                f"(the document {ts.spec} defines: {defined})"
            )
    return problems


def _misfit(scheme: SecurityScheme, value: Any) -> str | None:
    basic = scheme.type == "http" and scheme.http_scheme == "basic"
    if isinstance(value, BasicCredential):
        return None if basic else f"{{username, password}} is for http basic, not {scheme.type}"
    if basic:
        return "an http basic scheme takes {username, password}"
    if isinstance(value, ClientCredentials):
        if scheme.type != "oauth2":
            return f"{{client_id, client_secret}} is for oauth2, not {scheme.describe()}"
        if not (value.token_url or scheme.token_url):
            return "the scheme has no clientCredentials tokenUrl; set token_url"
        return None
    if scheme.type == "mutualTLS":
        return "mutualTLS is not supported"
    return None


def unsatisfied(ts: ToolsetConfig, operations: list[Operation]) -> list[str]:
    """Operations that need credentials when no configured alternative covers them."""
    if ts.auth is not None:
        return []
    configured = set(ts.credentials)
    return [
        op.label
        for op in operations
        if op.security and not any(set(alt) <= configured for alt in op.security)
    ]


# --- per call ---------------------------------------------------------------------------------


class ToolsetCredentials:
    """A toolset's credentials at run time: static values, per-user headers, token caches."""

    def __init__(self, ts: ToolsetConfig, schemes: dict[str, SecurityScheme]) -> None:
        self.toolset = ts.name
        self.values = {k: v for k, v in ts.credentials.items() if k in schemes}
        self.schemes = schemes
        self.tokens = {
            name: TokenSource(ts.name, value, _token_url(value, schemes[name]), ts.timeout)
            for name, value in self.values.items()
            if isinstance(value, ClientCredentials)
        }

    def header_names(self) -> list[str]:
        """The client request headers that carry per-user values."""
        return [v.from_header for v in self.values.values() if isinstance(v, FromHeader)]

    async def for_call(
        self, op: Operation, session: aiohttp.ClientSession, client_headers: Mapping[str, str]
    ) -> CallCredentials:
        """The credentials for one call of ``op``; ``CredentialError`` when it must not be made."""
        chosen = self._choose(op, client_headers)
        call = CallCredentials()
        for name in chosen:
            await self._add(call, name, session, client_headers)
        return call

    def _available(self, name: str, client_headers: Mapping[str, str]) -> bool:
        value = self.values.get(name)
        if isinstance(value, FromHeader):
            return bool(client_headers.get(value.from_header, "").strip())
        return value is not None

    def _choose(self, op: Operation, client_headers: Mapping[str, str]) -> tuple[str, ...]:
        for alternative in op.security:
            if all(self._available(n, client_headers) for n in alternative):
                return alternative
        for alternative in op.security:  # configured, but the request lacks a per-user value
            if all(n in self.values for n in alternative):
                missing = [
                    f"{n} (the client request's {_header_of(self.values[n])} header)"
                    for n in alternative
                    if not self._available(n, client_headers)
                ]
                raise CredentialError(
                    f"{op.label} needs the credential {', '.join(missing)}, which this "
                    "request did not carry, so the call was not made."
                )
        return ()  # nothing configured covers it: called without credentials

    async def _add(
        self,
        call: CallCredentials,
        name: str,
        session: aiohttp.ClientSession,
        client_headers: Mapping[str, str],
    ) -> None:
        scheme, value = self.schemes[name], self.values[name]
        if isinstance(value, BasicCredential):
            pair = f"{value.username}:{value.password.get_secret_value()}"
            token = base64.b64encode(pair.encode()).decode()
            call.credentials.append(Credential("header", "Authorization", f"Basic {token}"))
            return
        if isinstance(value, ClientCredentials):
            source = self.tokens[name]
            secret = await source.get(session)
            call.tokens.append((source, secret))
        elif isinstance(value, FromHeader):
            secret = client_headers.get(value.from_header, "").strip()
        else:
            call.credentials.append(_placed(scheme, value.get_secret_value()))
            return
        call.secrets.append(secret)
        call.credentials.append(_placed(scheme, secret))


def _header_of(value: Any) -> str:
    return value.from_header if isinstance(value, FromHeader) else "?"


def _token_url(value: ClientCredentials, scheme: SecurityScheme) -> str:
    return value.token_url or scheme.token_url or ""


def _placed(scheme: SecurityScheme, value: str) -> Credential:
    if scheme.type == "apiKey":
        where = scheme.location
        location: Literal["header", "query", "cookie"] = (
            "query" if where == "query" else "cookie" if where == "cookie" else "header"
        )
        return Credential(location, scheme.param or "", value)
    kind = scheme.http_scheme if scheme.type == "http" else "bearer"
    label = "Bearer" if kind in (None, "bearer") else str(kind).capitalize()
    return Credential("header", "Authorization", f"{label} {value}")


# --- OAuth2 client credentials ----------------------------------------------------------------


class TokenSource:
    """One toolset scheme's client-credentials token: fetched once, shared, refreshed."""

    def __init__(self, toolset: str, config: ClientCredentials, token_url: str, timeout: float):
        self.toolset = toolset
        self.config = config
        self.token_url = token_url
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self.requests = 0  # token requests made (for tests and logs)

    def _valid(self) -> str | None:
        if self._token is not None and time.monotonic() < self._expires:
            return self._token
        return None

    async def get(self, session: aiohttp.ClientSession) -> str:
        token = self._valid()
        if token is not None:
            return token
        async with self._lock:  # one token request at a time; the others wait and share it
            token = self._valid()
            if token is None:
                token, lifetime = await self._request(session)
                self._token, self._expires = token, time.monotonic() + _cache_for(lifetime)
            return token

    def expire(self, token: str) -> None:
        """The API refused ``token``: the next call fetches a new one (unless one already did)."""
        if self._token == token:
            self._token = None

    async def _request(self, session: aiohttp.ClientSession) -> tuple[str, float | None]:
        self.requests += 1
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post(session)
        except TimeoutError:
            raise self._error(f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as e:
            reason = e.os_error.strerror if isinstance(e, aiohttp.ClientConnectorError) else None
            raise self._error(str(reason or type(e).__name__)) from None

    async def _post(self, session: aiohttp.ClientSession) -> tuple[str, float | None]:
        form = {"grant_type": "client_credentials"}
        if self.config.scopes:
            form["scope"] = " ".join(self.config.scopes)
        # RFC 6749 2.3.1: client_secret_basic, both parts form-encoded before base64
        pair = f"{quote_plus(self.config.client_id)}:"
        pair += quote_plus(self.config.client_secret.get_secret_value())
        headers = {
            "Accept": "application/json",
            "Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
        }
        async with session.post(
            self.token_url, data=form, headers=headers, allow_redirects=False
        ) as resp:
            raw = await resp.content.read(MAX_TOKEN_RESPONSE + 1)
            while len(raw) <= MAX_TOKEN_RESPONSE and not resp.content.at_eof():
                raw += await resp.content.read(MAX_TOKEN_RESPONSE + 1 - len(raw))
            return self._parse(resp.status, raw)

    def _parse(self, status: int, raw: bytes) -> tuple[str, float | None]:
        try:
            body = orjson.loads(raw) if len(raw) <= MAX_TOKEN_RESPONSE else None
        except orjson.JSONDecodeError:
            body = None
        data = body if isinstance(body, dict) else {}
        if status != 200:
            code = data.get("error")
            detail = f" ({code})" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
            raise self._error(f"HTTP {status}{detail}")
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise self._error("the answer has no access_token")
        kind = data.get("token_type", "bearer")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise self._error(f"token_type {kind!r} is not bearer")
        lifetime = data.get("expires_in")
        if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool):
            return token, float(lifetime)
        return token, None

    def _error(self, reason: str) -> CredentialError:
        return CredentialError(
            f"could not get an OAuth2 token for toolset {self.toolset} from "
            f"{self.token_url}: {reason}. The call was not made."
        )


def _cache_for(lifetime: float | None) -> float:
    """Seconds to reuse a token: until 30 s (or a tenth of its life) before it expires."""
    if lifetime is None:
        return float("inf")  # no expires_in: used until the API refuses it (401)
    return max(0.0, lifetime - min(30.0, lifetime / 10))
