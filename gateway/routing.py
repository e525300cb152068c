"""Model id -> route: everything the upstream call needs, computed once at start-up. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.config import GatewayConfig, ModelConfig
from gateway.errors import ModelNotFound, UpstreamKeyMissing
from gateway.mock import upstream_url
from gateway.redact import Redactor, for_config, model_secrets


@dataclass(frozen=True)
class Route:
    id: str
    base_url: str
    upstream_model: str
    params: dict[str, Any]
    headers: dict[str, str]  # extra headers plus Authorization, ready to send
    timeout: float
    request_timeout: float
    max_response_bytes: int
    retries: int
    backoff: float
    fallbacks: tuple[str, ...]
    toolsets: tuple[str, ...]
    key_problem: str | None = None  # why the key is unusable, raised at request time
    #: defaults for other endpoints, by path after ``/v1`` without its slash (``embeddings``)
    endpoint_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    has_key: bool = True  # an api_key is configured (even an empty one)
    #: every secret of the config, for what this upstream sends back (its error bodies)
    redactor: Redactor = field(default=Redactor(()), compare=False, repr=False)
    host: str = field(init=False)
    #: ready-made per-request values (the hot path only copies them)
    send_headers: dict[str, str] = field(init=False)
    stream_headers: dict[str, str] = field(init=False)
    client_timeout: aiohttp.ClientTimeout = field(init=False)
    #: the defaults for each endpoint path (``/chat/completions``): params_for looks them up
    path_params: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", urlsplit(self.base_url).netloc)
        base = {**self.headers, "Content-Type": "application/json"}
        object.__setattr__(self, "send_headers", base)
        object.__setattr__(self, "stream_headers", {**base, "Accept": "text/event-stream"})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=self.timeout
        )
        object.__setattr__(self, "client_timeout", timeout)
        object.__setattr__(self, "path_params", _path_params(self.params, self.endpoint_params))

    def params_for(self, path: str) -> dict[str, Any]:
        """The defaults for ``path`` (``/chat/completions``): ``params`` are for chat only."""
        return self.path_params.get(path, _NONE)

    def rewrite(self, body: dict[str, Any], path: str = "/chat/completions") -> dict[str, Any]:
        """The request for this upstream: its model name, and the path's params where unset."""
        out = dict(body)
        out["model"] = self.upstream_model
        for key, value in self.params_for(path).items():
            out.setdefault(key, value)
        return out

    def url(self, path: str) -> str:
        """``path`` is the part after ``/v1``, e.g. ``/chat/completions``."""
        return self.base_url + path

    def check_key(self) -> None:
        if self.key_problem:
            raise UpstreamKeyMissing(self.key_problem)


_NONE: dict[str, Any] = {}
#: the endpoints a model's ``params`` apply to: the others reject sampling arguments
PARAMS_ENDPOINTS = ("chat/completions", "completions")


def _path_params(
    params: dict[str, Any], per_endpoint: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    out = {f"/{name}": dict(values) for name, values in per_endpoint.items()}
    for name in PARAMS_ENDPOINTS:
        out[f"/{name}"] = {**params, **per_endpoint.get(name, {})}
    return {path: values for path, values in out.items() if values}


def build_route(
    m: ModelConfig, key_hints: list[str] | None = None, redactor: Redactor | None = None
) -> Route:
    headers = dict(m.headers)
    problem = None
    if m.api_key is not None:
        key = m.api_key.get_secret_value()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        else:
            hint = f" (set {' or '.join(key_hints)})" if key_hints else ""
            problem = (
                f"model {m.id!r} has an empty api_key in the gateway config{hint}; "
                "the request was not sent upstream"
            )
    return Route(
        id=m.id,
        base_url=upstream_url(m.base_url),
        upstream_model=m.upstream_model or m.id,
        params=dict(m.params),
        headers=headers,
        timeout=m.timeout,
        request_timeout=m.request_timeout,
        max_response_bytes=m.max_response_bytes,
        retries=m.retries,
        backoff=m.backoff,
        fallbacks=tuple(m.fallbacks),
        toolsets=tuple(m.tools),
        key_problem=problem,
        endpoint_params={k: dict(v) for k, v in m.endpoint_params.items()},
        has_key=m.api_key is not None,
        redactor=Redactor(model_secrets(m)) if redactor is None else redactor,
    )


class Router:
    def __init__(self, config: GatewayConfig) -> None:
        #: every secret the config holds (see ``gateway.redact``), built once
        self.redactor = for_config(config)
        self.routes: dict[str, Route] = {
            m.id: build_route(m, config.key_hints.get(m.id), self.redactor) for m in config.models
        }
        self._chains = {
            r.id: [r, *(self.routes[f] for f in r.fallbacks)] for r in self.routes.values()
        }

    def resolve(self, model_id: Any) -> Route:
        route = self.routes.get(model_id) if isinstance(model_id, str) else None
        if route is None:
            known = ", ".join(self.routes) or "none"
            raise ModelNotFound(
                f"The model {model_id!r} does not exist on this gateway. "
                f"Configured models: {known}",
                param="model",
            )
        return route

    def chain(self, route: Route) -> list[Route]:
        """The route followed by its fallbacks, in order (built once, at start-up)."""
        return self._chains[route.id]
