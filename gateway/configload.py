"""Loading the config file: read, ``${VAR}`` interpolation, environment overrides, errors.

``load_config(path)`` is the only entry point; every problem it finds is reported as a
``ConfigError`` whose lines name the exact key path (``models[2].timeout: ...``), all at
once. Environment variables prefixed ``GATEWAY_`` (nested keys joined by ``__``) override
the file, e.g. ``GATEWAY_SERVER__PORT=9000`` (``gateway.envconfig``); their errors name
the variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from gateway import envconfig
from gateway.config import GatewayConfig
from gateway.configcheck import cross_check, raw_cross_check, selection_problems
from gateway.errors import ConfigError
from gateway.litellm import from_litellm

ENV_PREFIX = "GATEWAY_"
DEFAULT_CONFIG = Path("config/gateway.yaml")
_RESERVED = frozenset({"base_dir", "key_hints"})

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
        for p in raw_cross_check(data):
            found.add(p, set())
        raise found.error(source) from None
    for p in cross_check(config) + selection_problems(config):
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
