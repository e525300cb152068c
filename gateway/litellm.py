"""LiteLLM's config spelling (``model_list``, ``litellm_params``, ``os.environ/NAME``) into ours.

The gateway speaks only OpenAI's API: an entry is converted only when its key goes to the
host it was meant for; every other entry is reported, naming its place in ``model_list``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from gateway.errors import ConfigError

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
