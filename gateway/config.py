"""The YAML config file: pydantic models, ``${VAR}`` interpolation, LiteLLM's spelling.

``load_config(path)`` is the only entry point; every problem it finds is reported as a
``ConfigError`` whose lines name the exact key path (``models[2].timeout: ...``).
Environment variables prefixed ``GATEWAY_`` (nested keys joined by ``__``) override the
file, e.g. ``GATEWAY_SERVER__PORT=9000``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import ConfigError

ENV_PREFIX = "GATEWAY_"
DEFAULT_CONFIG = Path("config/gateway.yaml")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value.rstrip("/")


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_keys: list[SecretStr] = []
    max_request_bytes: int = Field(32 * 1024 * 1024, gt=0)

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
    headers: dict[str, str] = {}
    timeout: float = Field(60.0, gt=0)
    retries: int = Field(0, ge=0, le=10)
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds, doubled each time")
    fallbacks: list[str] = []
    tools: list[str] = []
    tool_selection: ToolSelectionConfig | None = None

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return _http_url(v)


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

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)


class LimitsConfig(_Model):
    max_tool_rounds: int = Field(8, ge=1, le=100)
    max_tool_response_bytes: int = Field(32 * 1024, ge=256)
    max_description_length: int = Field(1024, ge=16)
    keepalive_interval: float = Field(10.0, gt=0)


class GatewayConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    models: list[ModelConfig] = []
    tools: list[ToolsetConfig] = []
    limits: LimitsConfig = LimitsConfig()
    #: directory that relative spec paths are resolved against (the config file's)
    base_dir: Path = Path(".")
    #: model id -> names of environment variables its api_key was meant to come from
    key_hints: dict[str, list[str]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment wins over the file

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)


# --- interpolation -----------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, path: str = "", unset: dict[str, list[str]] | None = None) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML tree.

    ``$$`` stands for a literal ``$``. ``unset`` collects, per key path, the variables that
    were unset and fell back to their default (used to hint at them in errors later).
    """
    if isinstance(node, dict):
        return {k: interpolate(v, _join(path, k), unset) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, f"{path}[{i}]", unset) for i, v in enumerate(node)]
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
            raise ConfigError(
                "config", [f"{path or '<root>'}: environment variable {name} is not set"]
            )
        if unset is not None:
            unset.setdefault(path, []).append(name)
        return default

    return _VAR.sub(replace, node)


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


def from_litellm(raw: dict[str, Any]) -> dict[str, Any]:
    """Convert LiteLLM's ``model_list`` form into ours (``os.environ/NAME`` -> ``${NAME}``)."""
    out = {k: v for k, v in raw.items() if k not in ("model_list", "general_settings")}
    models = out.setdefault("models", [])
    for i, entry in enumerate(raw.get("model_list") or []):
        if not isinstance(entry, dict) or "model_name" not in entry:
            raise ConfigError("config", [f"model_list[{i}]: needs model_name and litellm_params"])
        models.append(_litellm_model(entry))
    master = (raw.get("general_settings") or {}).get("master_key")
    if master:
        out.setdefault("server", {}).setdefault("api_keys", []).append(_env_ref(master, ""))
    return out


def _litellm_model(entry: dict[str, Any]) -> dict[str, Any]:
    lp = dict(entry.get("litellm_params") or {})
    upstream = str(lp.pop("model", entry["model_name"]))
    model: dict[str, Any] = {
        "id": entry["model_name"],
        "upstream_model": upstream.removeprefix("openai/"),
        "base_url": _env_ref(lp.pop("api_base", "https://api.openai.com/v1"), None),
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
    if lp:
        model["litellm_params"] = lp  # reported as unknown keys by validation
    return model


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
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read the file: {e.strerror or e}"]) from None
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
    """Validate a parsed YAML tree (interpolating it first) into a ``GatewayConfig``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["<root>: expected a mapping with server, models, tools"])
    try:
        if "model_list" in raw:
            raw = from_litellm(raw)
        unset: dict[str, list[str]] = {}
        data = interpolate(raw, "", unset)
    except ConfigError as e:
        raise ConfigError(source, e.problems) from None
    for reserved in ("base_dir", "key_hints"):
        if reserved in data:
            raise ConfigError(source, [f"{reserved}: unknown key"])
    data["base_dir"] = base_dir
    data["key_hints"] = _key_hints(data, unset)
    try:
        config = GatewayConfig(**data)
    except ValidationError as e:
        problems = [_format_error(err) for err in e.errors()]
        problems += [p for p in _raw_cross_check(data) if p not in problems]
        raise ConfigError(source, problems) from None
    problems = cross_check(config) + _selection_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def _key_hints(data: dict[str, Any], unset: dict[str, list[str]]) -> dict[str, list[str]]:
    hints = {}
    models = data.get("models")
    for i, m in enumerate(models if isinstance(models, list) else []):
        if isinstance(m, dict) and f"models[{i}].api_key" in unset:
            hints[str(m.get("id"))] = unset[f"models[{i}].api_key"]
    return hints


def _format_error(err: Any) -> str:
    path = ""
    for part in err["loc"]:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    return f"{path or '<root>'}: {message}"


def cross_check(config: GatewayConfig) -> list[str]:
    """Problems pydantic cannot see: duplicates and references between entries."""
    return _references(
        [m.id for m in config.models],
        [t.name for t in config.tools],
        [(m.fallbacks, m.tools) for m in config.models],
    )


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
