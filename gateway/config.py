"""The YAML config file's shape: frozen pydantic models, secrets as ``SecretStr``.

``gateway.configload.load_config(path)`` reads, interpolates and validates a file into a
``GatewayConfig``; LiteLLM's spelling is converted by ``gateway.litellm``; URLs and headers
are checked by ``gateway.urls``; checks across entries are in ``gateway.configcheck``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from gateway.urls import check_headers, http_url, upstream_url


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientKey(SecretStr):
    """A client key (``server.api_keys``) and the name logs and metrics show for it."""

    def __init__(self, secret_value: str, name: str | None = None) -> None:
        super().__init__(secret_value)
        self.name = name


_KEY_NAME = re.compile(r"^[A-Za-z0-9._:@/-]{1,64}$")


def _client_key(entry: Any) -> Any:
    """A plain string, or ``{name, key}``."""
    if not isinstance(entry, dict):
        return entry
    unknown = set(entry) - {"name", "key"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; use name and key")
    key, name = entry.get("key"), entry.get("name")
    if not isinstance(key, str):
        raise ValueError("needs 'key', a string (the key clients send)")
    if name is not None and not (isinstance(name, str) and _KEY_NAME.match(name)):
        raise ValueError("'name' must be 1-64 letters, digits or . _ : @ / - (it is shown in logs)")
    return ClientKey(key, name)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: plain strings or ``{name, key}`` mappings
    api_keys: list[Annotated[ClientKey, BeforeValidator(_client_key)]] = []
    max_request_bytes: int = Field(32 * 1024 * 1024, gt=0)
    #: seconds a connection has to send a request's headers (from its opening or from the
    #: end of its previous response); idle keep-alive connections are closed after it too
    header_timeout: float = Field(15.0, gt=0)
    #: seconds a client has to send a whole request body
    body_timeout: float = Field(60.0, gt=0)
    #: seconds a SIGTERM waits for requests and streams in flight before cutting them
    shutdown_timeout: float = Field(30.0, ge=0)

    @field_validator("api_keys")
    @classmethod
    def _drop_empty(cls, keys: list[SecretStr]) -> list[SecretStr]:
        return [k for k in keys if k.get_secret_value()]


class ToolSelectionConfig(_Model):
    """Offer a model only the functions that fit the conversation (README: Tool selection)."""

    max_functions: int = Field(24, ge=1, le=128)
    search: bool = False
    method: Literal["bm25", "embeddings", "hybrid"] = "bm25"
    embedding_model: str | None = None


class ModelConfig(_Model):
    id: str = Field(min_length=1)
    base_url: str
    api_key: SecretStr | None = None
    upstream_model: str | None = None
    params: dict[str, Any] = {}
    endpoint_params: dict[str, dict[str, Any]] = {}
    headers: dict[str, str] = {}
    timeout: float = Field(60.0, gt=0)
    #: seconds for a whole client request on this model: every round, retry, fallback and
    #: tool call, and a stream to its end
    request_timeout: float = Field(600.0, gt=0)
    #: largest upstream response body read (decompressed), and largest stream event parsed
    max_response_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    retries: int = Field(0, ge=0, le=10)
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds, doubled each time")
    fallbacks: list[str] = []
    tools: list[str] = []
    tool_selection: ToolSelectionConfig | None = None

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return upstream_url(v)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, str]) -> dict[str, str]:
        return check_headers(v)

    @field_validator("endpoint_params")
    @classmethod
    def _check_endpoints(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in v:
            if not _ENDPOINT.match(name):
                raise ValueError(
                    f"{name!r} is not an endpoint path: use the path after /v1 without "
                    "slashes around it, e.g. embeddings, responses, chat/completions"
                )
        return v


_ENDPOINT = re.compile(r"^(?!v1/)[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class BearerAuth(_Model):
    type: Literal["bearer"]
    token: SecretStr


class HeaderAuth(_Model):
    type: Literal["header"]
    name: str
    value: SecretStr


class QueryAuth(_Model):
    type: Literal["query"]
    name: str
    value: SecretStr


class CookieAuth(_Model):
    type: Literal["cookie"]
    name: str
    value: SecretStr


class BasicAuth(_Model):
    type: Literal["basic"]
    username: str
    password: SecretStr


Auth = Annotated[
    BearerAuth | HeaderAuth | QueryAuth | CookieAuth | BasicAuth, Field(discriminator="type")
]


class BasicCredential(_Model):
    """``credentials`` value for an http basic scheme."""

    username: str
    password: SecretStr


class ClientCredentials(_Model):
    """``credentials`` value for an oauth2 scheme: the gateway obtains the token itself."""

    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scopes: list[str] = []
    token_url: str | None = None  # when the document's scheme has no clientCredentials flow

    @field_validator("token_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return None if v is None else http_url(v)


class FromHeader(_Model):
    """``credentials`` value taken from each client request's header (a per-user token)."""

    from_header: str = Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _credential_kind(value: Any) -> str:
    if not isinstance(value, (dict, BaseModel)):
        return "secret"
    keys = value.keys() if isinstance(value, dict) else type(value).model_fields.keys()
    if "from_header" in keys:
        return "from_header"
    return "oauth2_client" if "client_id" in keys or "client_secret" in keys else "basic"


#: a value under ``credentials:`` (keys are the document's security scheme names): a
#: secret, ``{username, password}``, ``{client_id, client_secret, ...}`` or ``{from_header}``
Credential = Annotated[
    Annotated[SecretStr, Tag("secret")]
    | Annotated[BasicCredential, Tag("basic")]
    | Annotated[ClientCredentials, Tag("oauth2_client")]
    | Annotated[FromHeader, Tag("from_header")],
    Discriminator(_credential_kind),
]


class ToolsetConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    spec: str = Field(min_length=1)
    base_url: str | None = None
    auth: Auth | None = None
    include: list[str] = []
    exclude: list[str] = []
    prefix: str = Field("", pattern=r"^[A-Za-z0-9_-]*$", max_length=32)
    allow_remote_refs: bool = False
    timeout: float = Field(30.0, gt=0)
    headers: dict[str, str] = {}
    #: ``compact`` leaves out what a model does not need (examples, x- extensions, ...)
    schema_detail: Literal["compact", "full"] = "compact"
    #: sent when fetching the spec and its remote refs on the spec's own origin
    spec_headers: dict[str, SecretStr] = {}
    max_concurrency: int = Field(8, ge=1, le=1024)  # requests to this toolset at a time
    #: per security scheme of the document (its own names): the value to send
    credentials: dict[str, Credential] = {}

    @model_validator(mode="after")
    def _auth_or_credentials(self) -> ToolsetConfig:
        if self.auth is not None and self.credentials:
            raise ValueError(
                "set either auth (one credential for every call, for documents without "
                "security schemes) or credentials (per security scheme), not both"
            )
        return self

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return None if v is None else http_url(v)

    @field_validator("spec")
    @classmethod
    def _check_spec(cls, v: str) -> str:
        return http_url(v) if v.startswith(("http://", "https://")) else v

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, str]) -> dict[str, str]:
        return check_headers(v)


class LimitsConfig(_Model):
    max_tool_rounds: int = Field(8, ge=1, le=100)
    max_tool_calls_per_round: int = Field(16, ge=1, le=1024)
    max_tool_response_bytes: int = Field(32 * 1024, ge=256)
    max_description_length: int = Field(1024, ge=16)
    keepalive_interval: float = Field(10.0, gt=0)


class LoggingConfig(_Model):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: one line per request when it ends (``gateway.access``)
    access: bool = True


class MetricsConfig(_Model):
    enabled: bool = True
    #: serve ``/metrics`` on this port instead of the gateway's own
    port: int | None = Field(None, ge=1, le=65535)
    #: the address of that port (default: server.host)
    host: str | None = None


class TracingConfig(_Model):
    #: OTLP/HTTP endpoint (``http://collector:4318``); else $OTEL_EXPORTER_OTLP_ENDPOINT
    otlp_endpoint: str | None = None
    service_name: str = "gateway"

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return None if v is None else http_url(v)


class GatewayConfig(_Model):
    server: ServerConfig = ServerConfig()
    models: list[ModelConfig] = []
    tools: list[ToolsetConfig] = []
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    #: directory that relative spec paths are resolved against (the config file's)
    base_dir: Path = Path(".")
    #: model id -> names of environment variables its api_key was meant to come from
    key_hints: dict[str, list[str]] = {}

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)

    def warnings(self) -> list[str]:
        """What works but will fail at request time (``check`` prints, ``serve`` logs)."""
        out = []
        for m in self.models:
            out += _missing_v1(m)
            if m.api_key is not None and not m.api_key.get_secret_value():
                hint = self.key_hints.get(m.id)
                todo = f"set {' or '.join(hint)}" if hint else "set it in the config"
                then = (
                    f"its requests go to its fallbacks ({', '.join(m.fallbacks)})"
                    if m.fallbacks
                    else "its requests get a 401 upstream_api_key_missing"
                )
                out.append(f"model {m.id}: api_key is empty ({todo}); {then} until it is set")
        return out


#: default ports of local OpenAI-compatible servers, which all serve the API under /v1
_LOCAL_SERVERS = {
    11434: "Ollama",
    8000: "vLLM",
    1234: "LM Studio",
    8080: "llama.cpp's server",
    5000: "text-generation-webui",
}


def _missing_v1(m: ModelConfig) -> list[str]:
    """The classic mistake: a local server's base_url without its /v1 (every request a 404)."""
    parts = urlsplit(m.base_url)
    try:
        server = _LOCAL_SERVERS.get(parts.port or 0)
    except ValueError:
        return []
    if server is None or parts.path.rstrip("/").endswith("/v1"):
        return []
    fixed = m.base_url.rstrip("/") + "/v1"
    return [
        f"model {m.id}: base_url {m.base_url} does not end with /v1, where {server} (port "
        f"{parts.port}) serves the OpenAI API; every request would get a 404. "
        f"Use base_url: {fixed}"
    ]
