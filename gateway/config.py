"""The YAML config file: pydantic models, ``${VAR}`` interpolation, LiteLLM's spelling.

``load_config(path)`` is the only entry point; every problem it finds is reported as a
``ConfigError`` whose lines name the exact key path (``models[2].timeout: ...``), all at
once. Environment variables prefixed ``GATEWAY_`` (nested keys joined by ``__``) override
the file, e.g. ``GATEWAY_SERVER__PORT=9000`` (``gateway.envconfig``); their errors name
the variable.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway import envconfig
from gateway.errors import ConfigError

ENV_PREFIX = "GATEWAY_"
DEFAULT_CONFIG = Path("config/gateway.yaml")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MOCK_URL = "mock://"
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_URL_EXAMPLE = "e.g. http://127.0.0.1:8000/v1"


def _http_url(value: str) -> str:
    """An http(s) URL that the client can always use: checked here, never at request time."""
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} contains spaces or line breaks; remove them")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise ValueError(
            f"{value!r} is not a valid URL ({_url_reason(e)}); {_URL_EXAMPLE}"
        ) from None
    if "://" not in value:
        raise ValueError(f"{value!r} has no scheme; write it as http://{value}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"must be an http:// or https:// URL with a host, got {value!r}; {_URL_EXAMPLE}"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{parts.scheme}://{parts.hostname}...: credentials in the URL are not supported; "
            "put the key in api_key (models) or auth (tools)"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} has a query or fragment; remove the part after ? or #")
    if port is None and parts.netloc.endswith(":"):
        raise ValueError(f"{value!r} has an empty port; remove the ':' or add the port number")
    if port == 0:
        raise ValueError(f"{value!r}: port 0 cannot be connected to; use the server's port")
    _check_host(value, parts.hostname or "")
    return value.rstrip("/")


def _url_reason(e: ValueError) -> str:
    text = str(e)
    if "could not be cast" in text:
        return "the port must be a number"
    if "out of range" in text:
        return "the port must be between 1 and 65535"
    return text


def _check_host(value: str, host: str) -> None:
    if not host:
        raise ValueError(f"{value!r} has no host; {_URL_EXAMPLE}")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if host.rstrip(".").rpartition(".")[2].isdigit():  # ends in a number: an IPv4 address
        raise ValueError(f"{value!r}: {host!r} is not a valid IPv4 address; {_URL_EXAMPLE}")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    if not ascii_host or not all(_LABEL.match(label) for label in ascii_host.split(".")):
        raise ValueError(f"{value!r}: {host!r} is not a valid host name; {_URL_EXAMPLE}")


def _upstream_url(value: str) -> str:
    """A model's base_url: http(s), or ``mock://`` for the built-in mock (``gateway.mock``)."""
    if value.startswith("mock:"):
        if value not in (MOCK_URL, "mock:"):
            raise ValueError(f"the built-in mock is written {MOCK_URL!r}, got {value!r}")
        return MOCK_URL
    return _http_url(value)


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not a valid header name (letters, digits, '-')")
        if "\r" in value or "\n" in value:
            raise ValueError(f"the value of header {name!r} contains a line break; remove it")
        if _CONTROL.search(value):  # aiohttp refuses them: every request would fail
            raise ValueError(f"the value of header {name!r} contains a control character")
    return headers


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
        return _upstream_url(v)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, str]) -> dict[str, str]:
        return _headers(v)

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
        return None if v is None else _http_url(v)


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
        return None if v is None else _http_url(v)

    @field_validator("spec")
    @classmethod
    def _check_spec(cls, v: str) -> str:
        return _http_url(v) if v.startswith(("http://", "https://")) else v

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, str]) -> dict[str, str]:
        return _headers(v)


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
        return None if v is None else _http_url(v)


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


_RESERVED = frozenset({"base_dir", "key_hints"})

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


# --- interpolation -----------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    node: Any,
    path: str = "",
    unset: dict[str, list[str]] | None = None,
    missing: dict[str, list[str]] | None = None,
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML tree.

    ``$$`` stands for a literal ``$``. ``unset`` collects, per key path, the variables that
    were unset and fell back to their default (used to hint at them in errors later);
    ``missing`` the unset ones without a default (replaced by ""), so that all of them
    are reported at once. Without ``missing``, the first one raises ``ConfigError``.
    """
    if isinstance(node, dict):
        return {k: interpolate(v, _join(path, k), unset, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, f"{path}[{i}]", unset, missing) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is not None:
            return value
        if default is None:
            if missing is None:
                raise ConfigError("config", [_missing_problem(path, name)])
            missing.setdefault(path or "<root>", []).append(name)
            return ""
        if unset is not None:
            unset.setdefault(path, []).append(name)
        return default

    return _VAR.sub(replace, node)


def _missing_problem(path: str, name: str) -> str:
    return (
        f"{path or '<root>'}: environment variable {name} is not set "
        f"(set it, or give a default: ${{{name}:-default}})"
    )


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- LiteLLM's spelling ------------------------------------------------------------------

_LITELLM_PARAMS = {
    "temperature",
    "max_tokens",
    "top_p",
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
}


#: LiteLLM providers that speak OpenAI's API at an ``api_base`` the entry must give
_OPENAI_COMPATIBLE = frozenset(
    {"hosted_vllm", "lm_studio", "llamafile", "litellm_proxy", "custom_openai"}
)
#: model names LiteLLM routes to OpenAI without a prefix; others (``claude-...``) it
#: routes to their own provider, whose key must not be sent to OpenAI
_OPENAI_NAMES = re.compile(
    r"^(gpt-|chatgpt-|o\d|text-embedding-|dall-e-|whisper-|tts-|omni-moderation-"
    r"|text-moderation-|davinci-|babbage-|codex-|computer-use-)"
)
OPENAI_BASE = "https://api.openai.com/v1"


def from_litellm(raw: dict[str, Any]) -> dict[str, Any]:
    """Convert LiteLLM's ``model_list`` form into ours (``os.environ/NAME`` -> ``${NAME}``)."""
    out = {k: v for k, v in raw.items() if k not in ("model_list", "general_settings")}
    models = out.setdefault("models", [])
    problems = []
    for i, entry in enumerate(raw.get("model_list") or []):
        if not isinstance(entry, dict) or "model_name" not in entry:
            problems.append(f"model_list[{i}]: needs model_name and litellm_params")
            continue
        problem = _litellm_provider_problem(entry)
        if problem:
            problems.append(f"model_list[{i}] ({entry['model_name']}): {problem}")
            continue
        model, unknown = _litellm_model(entry)
        models.append(model)
        problems += [
            f"model_list[{i}].litellm_params.{key}: not supported by the gateway (it reads "
            f"{', '.join(_LITELLM_KEYS)}, {', '.join(sorted(_LITELLM_PARAMS))}); remove it"
            for key in unknown
        ]
    if problems:
        raise ConfigError("config", problems)
    master = (raw.get("general_settings") or {}).get("master_key")
    if master:
        _check_master_key(master)
        out.setdefault("server", {}).setdefault("api_keys", []).append(_env_ref(master, ""))
    return out


def _check_master_key(master: Any) -> None:
    """An unset master key must not leave the gateway open without a word."""
    if not isinstance(master, str) or not master.startswith("os.environ/"):
        return
    name = master.removeprefix("os.environ/")
    if not os.environ.get(name):
        raise ConfigError(
            "config",
            [
                f"general_settings.master_key: environment variable {name} is "
                f"{'empty' if name in os.environ else 'not set'}; set it (clients must then "
                "send it as a Bearer token), or remove master_key to accept requests "
                "without a key"
            ],
        )


def _litellm_provider(lp: dict[str, Any], model: str) -> tuple[str | None, str]:
    """(provider, the model name the provider knows), from ``provider/name`` or
    ``custom_llm_provider``; no provider when the name has no prefix."""
    if lp.get("custom_llm_provider"):
        return str(lp["custom_llm_provider"]), model
    provider, slash, name = model.partition("/")
    return (provider, name) if slash else (None, model)


def _litellm_provider_problem(entry: dict[str, Any]) -> str | None:
    """Why the gateway cannot call this entry's provider where LiteLLM would, if it cannot.

    The gateway speaks only OpenAI's API. An entry is converted only when the key goes to
    the host it was meant for: OpenAI (``openai/`` or an OpenAI model name), or the
    ``api_base`` of an OpenAI-compatible provider.
    """
    lp = entry.get("litellm_params")
    lp = lp if isinstance(lp, dict) else {}
    model = str(lp.get("model", entry["model_name"]))
    provider, _ = _litellm_provider(lp, model)
    has_base = bool(lp.get("api_base"))
    hint = "use 'openai/<model>' with the api_base of an OpenAI-compatible server"
    if provider == "openai":
        return None
    if provider in _OPENAI_COMPATIBLE:
        return None if has_base else f"provider {provider!r} needs an api_base; {hint}"
    if provider is not None:
        return (
            f"model {model!r}: provider {provider!r} is not OpenAI-compatible, and the gateway "
            f"speaks only OpenAI's API (its key would go to the wrong host); {hint}"
        )
    if has_base or _OPENAI_NAMES.match(model):
        return None
    return (
        f"model {model!r} has no provider prefix and is not an OpenAI model name, so LiteLLM "
        f"would send it to another provider; {hint}, or 'openai/{model}' for OpenAI"
    )


_LITELLM_KEYS = ("model", "api_base", "api_key", "timeout", "max_retries", "extra_headers")


def _litellm_model(entry: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    lp = dict(entry.get("litellm_params") or {})
    _, upstream = _litellm_provider(lp, str(lp.pop("model", entry["model_name"])))
    lp.pop("custom_llm_provider", None)
    model: dict[str, Any] = {
        "id": entry["model_name"],
        "upstream_model": upstream,
        "base_url": _env_ref(lp.pop("api_base", OPENAI_BASE), None),
    }
    if "api_key" in lp:
        model["api_key"] = _env_ref(lp.pop("api_key"), "")
    if "timeout" in lp:
        model["timeout"] = lp.pop("timeout")
    if "max_retries" in lp:
        model["retries"] = lp.pop("max_retries")
    if "extra_headers" in lp:
        model["headers"] = lp.pop("extra_headers")
    params = {k: lp.pop(k) for k in list(lp) if k in _LITELLM_PARAMS}
    if params:
        model["params"] = params
    return model, sorted(lp)


def _env_ref(value: Any, default: str | None) -> Any:
    if isinstance(value, str) and value.startswith("os.environ/"):
        name = value.removeprefix("os.environ/")
        return "${" + name + (f":-{default}" if default is not None else "") + "}"
    return value


# --- loading -----------------------------------------------------------------------------


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """``--config``, else ``$GATEWAY_CONFIG``, else ``config/gateway.yaml``."""
    return Path(explicit or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(path),
            [
                f"no such file (looked in {path.absolute()})",
                "pass the config file with --config PATH or set GATEWAY_CONFIG=PATH "
                f"(without either, {DEFAULT_CONFIG} in the current directory is used)",
            ],
            headline="config file not found",
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 text ({e.reason})"
        raise ConfigError(str(path), [f"cannot read the file: {reason or e}"]) from None
    raw = parse_yaml(text, str(path))
    return build_config(raw, str(path), path.resolve().parent)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(source, [f"{where}: {e.problem or e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, [str(e)]) from None


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def build_config(raw: Any, source: str, base_dir: Path) -> GatewayConfig:
    """Validate a parsed YAML tree (interpolated, then overridden by the environment)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["<root>: expected a mapping with server, models, tools"])
    try:
        if "model_list" in raw:
            raw = from_litellm(raw)
    except ConfigError as e:
        raise ConfigError(source, e.problems) from None
    unset: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    data = interpolate(raw, "", unset, missing)
    problems = [_missing_problem(p, name) for p, names in missing.items() for name in names]
    problems += [f"{key}: unknown key" for key in _RESERVED if key in data]
    env = envconfig.overlay(data, os.environ, GatewayConfig, ENV_PREFIX, _RESERVED)
    data = {k: v for k, v in env.data.items() if k not in _RESERVED}
    data["base_dir"] = base_dir
    data["key_hints"] = _key_hints(data, unset)
    found = _Found(problems, env.problems)
    try:
        config = GatewayConfig(**data)
    except ValidationError as e:
        for err in e.errors():
            found.add(_format_error(err, env.origins), set(missing))
        for p in _raw_cross_check(data):
            found.add(p, set())
        raise found.error(source) from None
    for p in cross_check(config) + _selection_problems(config):
        found.add(p, set())
    if found.file or found.env:
        raise found.error(source)
    return config


class _Found:
    """Problems of the file and of the environment, kept apart so each is named right."""

    def __init__(self, file: list[str], env: list[str]) -> None:
        self.file, self.env = file, env

    def add(self, problem: tuple[str, str | None] | str, skip: set[str]) -> None:
        text, var = (problem, None) if isinstance(problem, str) else problem
        if text.partition(": ")[0] in skip:  # its ${VAR} is unset: already reported
            return
        target = self.env if var else self.file
        if text not in target:
            target.append(text)

    def error(self, source: str) -> ConfigError:
        if not self.file:
            return ConfigError(f"environment ({ENV_PREFIX}* variables)", self.env)
        return ConfigError(source, self.file + self.env)


def _key_hints(data: dict[str, Any], unset: dict[str, list[str]]) -> dict[str, list[str]]:
    hints = {}
    models = data.get("models")
    for i, m in enumerate(models if isinstance(models, list) else []):
        if isinstance(m, dict) and f"models[{i}].api_key" in unset:
            hints[str(m.get("id"))] = unset[f"models[{i}].api_key"]
    return hints


def _format_error(err: Any, origins: envconfig.Origins) -> tuple[str, str | None]:
    """One pydantic error as ``path: message``, and the variable that caused it, if any."""
    loc = _clean_loc(tuple(err["loc"]))
    path = _path_text(loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = _unknown_key(loc)
    elif err["type"] == "missing":
        message = "required key is missing"
    elif err["type"] == "union_tag_not_found":
        tags = ", ".join(repr(t) for t in _tags(loc))
        message = f"needs a 'type' key: one of {tags}"
    origin = envconfig.origin_of(origins, loc)
    if origin is None:
        return f"{path or '<root>'}: {message}", None
    set_path, var = origin
    found = envconfig.field_at(GatewayConfig, set_path)
    typ, info = found or (Any, None)
    example = envconfig.example(set_path, typ, info)
    if envconfig.value_kind(typ) in ("list", "object"):
        example = f"'{example}'"
    return f"{var}: {path}: {message} (e.g. {var}={example})", var


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the union tags pydantic puts in locations (``auth.bearer.token``)."""
    out: tuple[Any, ...] = ()
    for seg in loc:
        if not (isinstance(seg, str) and _is_tag(out, seg)):
            out = (*out, seg)
    return out


def _is_tag(path: tuple[Any, ...], seg: str) -> bool:
    found = envconfig.field_at(GatewayConfig, path)
    models = envconfig.models_in(found[0]) if found else []
    return len(models) > 1 and any(
        getattr(m.model_fields.get("type"), "annotation", None) == Literal[seg] for m in models
    )


def _tags(path: tuple[Any, ...]) -> list[str]:
    found = envconfig.field_at(GatewayConfig, path)
    models = envconfig.models_in(found[0]) if found else []
    annotations = [getattr(m.model_fields.get("type"), "annotation", None) for m in models]
    return [str(a.__args__[0]) for a in annotations if a is not None and hasattr(a, "__args__")]


def _unknown_key(loc: tuple[Any, ...]) -> str:
    keys = [k for k in envconfig.keys_at(GatewayConfig, loc[:-1]) if k not in _RESERVED]
    close = envconfig.suggest(str(loc[-1]), keys) if keys else None
    if close:
        return f"unknown key; did you mean {close!r}?"
    return f"unknown key (known keys here: {', '.join(keys)})" if keys else "unknown key"


def _path_text(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path


def cross_check(config: GatewayConfig) -> list[str]:
    """Problems pydantic cannot see: duplicates and references between entries."""
    problems = _references(
        [m.id for m in config.models],
        [t.name for t in config.tools],
        [(m.fallbacks, m.tools) for m in config.models],
    )
    if config.metrics.port is not None and config.metrics.port == config.server.port:
        problems.append(
            f"metrics.port: {config.metrics.port} is server.port too; choose another port, "
            "or leave metrics.port out to serve /metrics on the gateway's own port"
        )
    return problems


def _selection_problems(config: GatewayConfig) -> list[str]:
    """``tool_selection``: a known embedding model where one is needed, bm25s installed."""
    problems = []
    ids = [m.id for m in config.models]
    for i, m in enumerate(config.models):
        sel = m.tool_selection
        if sel is None:
            continue
        key = f"models[{i}].tool_selection"
        if sel.method != "bm25" and sel.embedding_model is None:
            problems.append(f"{key}.embedding_model: required for method {sel.method!r}")
        elif sel.embedding_model is not None and sel.embedding_model not in ids:
            problems.append(
                f"{key}.embedding_model: unknown model id {sel.embedding_model!r} "
                f"(configured: {', '.join(ids)})"
            )
        if importlib.util.find_spec("bm25s") is None:
            problems.append(
                f"{key}: needs the selection extra, which is not installed: "
                "pip install 'gateway[selection]'"
            )
    return problems


def _raw_cross_check(data: dict[str, Any]) -> list[str]:
    """The same checks on the raw entries, so they are reported beside pydantic's errors."""

    def entries(key: str) -> list[Any]:
        value = data.get(key)
        return value if isinstance(value, list) else []

    def field(entry: Any, key: str) -> Any:
        return entry.get(key) if isinstance(entry, dict) else None

    def names(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    models = entries("models")
    return _references(
        [field(m, "id") for m in models],
        [field(t, "name") for t in entries("tools")],
        [(names(field(m, "fallbacks")), names(field(m, "tools"))) for m in models],
    )


def _references(
    ids: list[Any], toolsets: list[Any], refs: list[tuple[list[Any], list[Any]]]
) -> list[str]:
    problems = _duplicates("models", "id", ids) + _duplicates("tools", "name", toolsets)
    known_ids = ", ".join(dict.fromkeys(i for i in ids if isinstance(i, str)))
    known_sets = ", ".join(dict.fromkeys(t for t in toolsets if isinstance(t, str))) or "none"
    for i, (fallbacks, tools) in enumerate(refs):
        for j, fb in enumerate(fallbacks):
            if fb == ids[i]:
                problems.append(f"models[{i}].fallbacks[{j}]: a model cannot fall back to itself")
            elif isinstance(fb, str) and fb not in ids:
                problems.append(
                    f"models[{i}].fallbacks[{j}]: unknown model id {fb!r} (configured: {known_ids})"
                )
        for j, ts in enumerate(tools):
            if isinstance(ts, str) and ts not in toolsets:
                problems.append(
                    f"models[{i}].tools[{j}]: unknown toolset {ts!r} (configured: {known_sets})"
                )
    return problems


def _duplicates(section: str, key: str, values: list[Any]) -> list[str]:
    first: dict[str, int] = {}
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            continue
        if v in first:
            out.append(f"{section}[{i}].{key}: duplicate {v!r} (first at {section}[{first[v]}])")
        else:
            first[v] = i
    return out
