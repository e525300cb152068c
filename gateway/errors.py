"""The gateway's one exception tree.

    GatewayError                       500 server_error
    ├── InvalidRequest                 400 invalid_request_error
    ├── AuthenticationFailed           401 invalid_request_error / invalid_api_key
    │   └── UpstreamKeyMissing         401 ... / upstream_api_key_missing
    ├── ModelNotFound                  404 invalid_request_error / model_not_found
    ├── NotFound                       404 invalid_request_error / not_found
    ├── UnsupportedMediaType           415 invalid_request_error / unsupported_media_type
    └── UpstreamError                  status of the upstream (or 502/504)
        ├── UpstreamUnreachable        502 upstream_error / upstream_unreachable
        └── UpstreamTimeout            504 upstream_error / upstream_timeout

    ConfigError                        not an HTTP error: a bad config file or spec

Handlers raise; the edge wrapped around every handler (``app.edge``) turns a ``GatewayError``
into an OpenAI-shaped body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        #: extra response headers (``x-should-retry: false`` once tool calls have run)
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class UpstreamKeyMissing(AuthenticationFailed):
    """The config gives this model an empty api_key (its variable is unset)."""

    code = "upstream_api_key_missing"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class UpstreamError(GatewayError):
    """The upstream answered with an error status; ``body`` may carry its own error object."""

    status = 502
    type = "upstream_error"

    def __init__(self, message: str, *, error: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.error = error

    def body(self) -> dict[str, Any]:
        if self.error is None:
            return super().body()
        merged = {**self.error, "message": self.message}
        # OpenAI's four keys keep OpenAI's types: some servers (vLLM) send ``code: 400``
        for key, default in (("type", self.type), ("param", None), ("code", self.code)):
            value = merged.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            merged[key] = value if isinstance(value, str) else default
        return {"error": merged}


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ConfigError(Exception):
    """A config file or spec is wrong; ``problems`` are lines like ``models[2].timeout: ...``."""

    def __init__(
        self, source: str, problems: list[str], headline: str = "invalid configuration"
    ) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {headline}\n{lines}")


class CannotServe(Exception):
    """``serve`` cannot start: the port is taken, a worker failed to start, ..."""


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object, always with its four keys."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
