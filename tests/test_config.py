"""The config file: interpolation, validation messages with key paths, LiteLLM's spelling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.configload import build_config, load_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def problems(raw, tmp_path=Path(".")):
    with pytest.raises(ConfigError) as e:
        build_config(raw, "cfg.yaml", tmp_path)
    return e.value.problems


def test_example_config_loads_with_no_environment(monkeypatch):
    for var in ("OPENAI_API_KEY", "GATEWAY_API_KEY", "PETSTORE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(ROOT / "config" / "gateway.yaml")
    assert config.models and config.server.api_keys == []


def test_interpolation_with_defaults_and_escapes(monkeypatch):
    monkeypatch.setenv("UP_URL", "http://up:1/v1")
    monkeypatch.delenv("NOPE", raising=False)
    config = build_config(
        {
            "models": [
                {
                    "id": "m",
                    "base_url": "${UP_URL}",
                    "api_key": "${NOPE:-fallback}",
                    "headers": {"X-Price": "$$5 ${NOPE:-}x"},
                }
            ]
        },
        "cfg",
        Path("."),
    )
    m = config.models[0]
    assert m.base_url == "http://up:1/v1"
    assert m.api_key.get_secret_value() == "fallback"
    assert m.headers["X-Price"] == "$5 x"


def test_unset_variable_without_default_names_variable_and_key(monkeypatch):
    monkeypatch.delenv("MISSING_KEY_VAR", raising=False)
    assert problems(
        {"models": [{"id": "m", "base_url": "http://x", "api_key": "${MISSING_KEY_VAR}"}]}
    ) == [
        "models[0].api_key: environment variable MISSING_KEY_VAR is not set "
        "(set it, or give a default: ${MISSING_KEY_VAR:-default})"
    ]


def test_errors_name_exact_key_paths():
    found = problems(
        {
            "server": {"port": "high", "colour": "red"},
            "models": [
                {"id": "a", "base_url": "http://a", "timeout": "soon"},
                {"id": "b", "base_url": "ftp://b"},
                {"id": "a", "base_url": "http://c", "fallbacks": ["zz", "a"]},
                {"base_url": "http://d"},
            ],
        }
    )
    assert (
        "server.port: Input should be a valid integer, unable to parse string as an integer"
        in found
    )
    assert (
        "server.colour: unknown key (known keys here: api_keys, body_timeout, header_timeout, "
        "host, max_request_bytes, port, shutdown_timeout)" in found
    )
    assert any(p.startswith("models[0].timeout: Input should be a valid number") for p in found)
    assert (
        "models[1].base_url: must be an http:// or https:// URL with a host, got 'ftp://b'; "
        "e.g. http://127.0.0.1:8000/v1" in found
    )
    assert "models[3].id: required key is missing" in found


def test_cross_checks_name_paths():
    found = problems(
        {
            "models": [
                {"id": "a", "base_url": "http://a", "fallbacks": ["zz", "a"], "tools": ["pets"]},
                {"id": "a", "base_url": "http://c"},
            ]
        }
    )
    assert found == [
        "models[1].id: duplicate 'a' (first at models[0])",
        "models[0].fallbacks[0]: unknown model id 'zz' (configured: a)",
        "models[0].fallbacks[1]: a model cannot fall back to itself",
        "models[0].tools[0]: unknown toolset 'pets' (configured: none)",
    ]


def test_reference_errors_come_with_type_errors_all_at_once():
    found = problems(
        {
            "models": [
                {"id": "a", "base_url": "http://a", "timeout": -1, "fallbacks": ["zz"]},
                {"id": "a", "base_url": "ftp://c", "tools": ["pets"]},
                "not a mapping",
            ]
        }
    )
    assert found == [
        "models[0].timeout: Input should be greater than 0",
        "models[1].base_url: must be an http:// or https:// URL with a host, got 'ftp://c'; "
        "e.g. http://127.0.0.1:8000/v1",
        "models[2]: Input should be a valid dictionary or instance of ModelConfig",
        "models[1].id: duplicate 'a' (first at models[0])",
        "models[0].fallbacks[0]: unknown model id 'zz' (configured: a)",
        "models[1].tools[0]: unknown toolset 'pets' (configured: none)",
    ]


def test_malformed_yaml_gives_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - id: a\n    base_url: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.source == str(path)
    assert e.value.problems[0].startswith("line 4, column 1:")


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value) and "not found" in str(e.value)


def test_environment_overrides_file(monkeypatch):
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9123")
    monkeypatch.setenv("GATEWAY_LIMITS__MAX_TOOL_ROUNDS", "3")
    config = build_config({"server": {"port": 8080, "host": "0.0.0.0"}}, "cfg", Path("."))
    assert config.server.port == 9123 and config.server.host == "0.0.0.0"
    assert config.limits.max_tool_rounds == 3


def test_secrets_never_in_repr():
    config = build_config(
        {
            "server": {"api_keys": ["client-secret"]},
            "models": [{"id": "m", "base_url": "http://a", "api_key": "sk-very-secret"}],
        },
        "cfg",
        Path("."),
    )
    assert "sk-very-secret" not in repr(config) and "client-secret" not in repr(config)


def test_litellm_model_list_is_converted(monkeypatch):
    monkeypatch.setenv("AZ_KEY", "sk-az")
    monkeypatch.delenv("NOT_THERE", raising=False)
    config = build_config(
        {
            "model_list": [
                {
                    "model_name": "gpt-4o",
                    "litellm_params": {
                        "model": "openai/gpt-4o",
                        "api_base": "http://vllm:8000/v1",
                        "api_key": "os.environ/AZ_KEY",
                        "temperature": 0.1,
                        "timeout": 20,
                    },
                },
                {
                    "model_name": "local",
                    "litellm_params": {
                        "model": "openai/llama",
                        "api_base": "http://ollama/v1",
                        "api_key": "os.environ/NOT_THERE",
                    },
                },
            ],
            "general_settings": {"master_key": "sk-master"},
        },
        "litellm.yaml",
        Path("."),
    )
    first, second = config.models
    assert (first.id, first.upstream_model, first.base_url) == (
        "gpt-4o",
        "gpt-4o",
        "http://vllm:8000/v1",
    )
    assert first.api_key.get_secret_value() == "sk-az"
    assert first.params == {"temperature": 0.1} and first.timeout == 20
    assert second.upstream_model == "llama" and second.api_key.get_secret_value() == ""
    assert config.key_hints == {"local": ["NOT_THERE"]}
    assert [k.get_secret_value() for k in config.server.api_keys] == ["sk-master"]


def test_litellm_unknown_params_are_reported():
    found = problems(
        {
            "model_list": [
                {
                    "model_name": "x",
                    "litellm_params": {"model": "openai/x", "api_base": "http://x", "rpm": 5},
                }
            ]
        }
    )
    assert found == [
        "model_list[0].litellm_params.rpm: not supported by the gateway (it reads model, "
        "api_base, api_key, timeout, max_retries, extra_headers, frequency_penalty, max_tokens, "
        "presence_penalty, seed, stop, temperature, top_p); remove it"
    ]


def test_check_command_reports_ok_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["check", "--config", str(ROOT / "config" / "gateway.yaml")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "model gpt-4o-mini" in out and "OPENAI_API_KEY" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - id: a\n    base_url: http://a\n    timeout: -1\n")
    assert main(["check", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "models[0].timeout: Input should be greater than 0" in err


def test_config_path_from_environment(tmp_path, capsys, monkeypatch):
    path = tmp_path / "env.yaml"
    path.write_text("models: []\n")
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    assert main(["check"]) == 0
    assert str(path) in capsys.readouterr().out


def test_console_script_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "serve" in out and "check" in out and "tools" in out


def test_serve_starts_on_example_config_with_empty_environment(unused_tcp_port):
    import os
    import time
    import urllib.request

    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(unused_tcp_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{unused_tcp_port}/healthz") as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)


def test_workers_share_the_port_and_stop_together(unused_tcp_port, tmp_path):
    import signal
    import time
    import urllib.request

    config = tmp_path / "gw.yaml"
    config.write_text("models: []\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--port",
            str(unused_tcp_port),
            "--workers",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{unused_tcp_port}/healthz"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.1)
        children = _children(proc.pid)
        assert len(children) >= 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    deadline = time.monotonic() + 5  # no orphaned worker (or tracker) outlives the parent
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, "a worker outlived the parent"
        time.sleep(0.1)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def _alive(pid):
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _children(pid):
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            out.append(int(status.parent.name))
    return out


# --- issue 11: errors that point at the fix -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:abc/v1", "the port must be a number"),
        ("http://127.0.0.1:99999/v1", "the port must be between 1 and 65535"),
        ("127.0.0.1:8000/v1", "has no scheme; write it as http://127.0.0.1:8000/v1"),
        ("http://exa mple.com/v1", "contains spaces"),
        (" http://a/v1", "contains spaces"),
        ("http://:80/v1", "has no host"),
        ("http://a..b/v1", "is not a valid host name"),
        ("http://u:p@a/v1", "credentials in the URL are not supported"),
        ("http://a/v1?x=1", "has a query or fragment"),
        ("http://a:0/v1", "port 0"),
        ("http://[::1/v1", "not a valid URL"),
        ("mock://x", "the built-in mock is written 'mock://'"),
        ("http://1.2.3.4.5/v1", "is not a valid IPv4 address"),
        ("http://a.1/v1", "is not a valid IPv4 address"),
        ("http://a:/v1", "has an empty port"),
    ],
)
def test_bad_base_url_is_a_config_error_not_a_500_per_request(url, says):
    found = problems({"models": [{"id": "m", "base_url": url}]})
    assert len(found) == 1 and found[0].startswith("models[0].base_url: ") and says in found[0]


def test_bad_toolset_urls_are_config_errors():
    found = problems(
        {"tools": [{"name": "t", "spec": "http://h:xx/spec.json", "base_url": "http://h:1 /"}]}
    )
    assert [p.partition(":")[0] for p in found] == ["tools[0].spec", "tools[0].base_url"]


async def test_odd_but_valid_base_url_is_a_502_not_a_500(make_gateway, oai):
    gw = await make_gateway({"models": [{"id": "m", "base_url": "http://[::1]:1/v1/"}]})
    client = oai(gw)
    with pytest.raises(Exception) as e:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert getattr(e.value, "status_code", None) == 502


async def test_a_base_url_aiohttp_refuses_is_a_502_not_a_500(make_gateway, oai):
    gw = await make_gateway({"models": [{"id": "m", "base_url": "http://127.0.0.1:1/v1"}]})
    from gateway.state import STATE, Snapshot

    config = gw.config
    bad = config.models[0].model_copy(update={"base_url": "http://1.2.3.4.5/v1"})  # unchecked
    gw.app[STATE].swap(Snapshot.build(config.model_copy(update={"models": [bad]})))
    with pytest.raises(Exception) as e:
        await oai(gw).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert getattr(e.value, "status_code", None) == 502
    assert "fix it in the gateway config" in str(e.value)


def test_model_header_with_a_line_break_is_a_config_error():
    found = problems({"models": [{"id": "m", "base_url": "http://a", "headers": {"X": "a\nb"}}]})
    assert found == ["models[0].headers: the value of header 'X' contains a line break; remove it"]


def test_all_missing_variables_are_reported_at_once(monkeypatch):
    for var in ("NOPE_URL", "NOPE_KEY", "NOPE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    found = problems(
        {
            "models": [{"id": "m", "base_url": "${NOPE_URL}", "api_key": "${NOPE_KEY}"}],
            "tools": [
                {
                    "name": "t",
                    "spec": "s.yaml",
                    "auth": {"type": "bearer", "token": "${NOPE_TOKEN}"},
                }
            ],
        }
    )
    assert [p.split(" (")[0] for p in found] == [
        "models[0].base_url: environment variable NOPE_URL is not set",
        "models[0].api_key: environment variable NOPE_KEY is not set",
        "tools[0].auth.token: environment variable NOPE_TOKEN is not set",
    ]


def test_unknown_key_gets_did_you_mean():
    found = problems(
        {
            "server": {"prot": 1},
            "models": [{"id": "m", "base_url": "http://a", "fallback": []}],
            "tools": [{"name": "t", "spec": "s", "auth": {"type": "bearer", "tokn": "x"}}],
            "limit": {},
        }
    )
    assert "server.prot: unknown key; did you mean 'port'?" in found
    assert "models[0].fallback: unknown key; did you mean 'fallbacks'?" in found
    assert "tools[0].auth.tokn: unknown key; did you mean 'token'?" in found
    assert "limit: unknown key; did you mean 'limits'?" in found


def test_missing_config_file_mentions_config_flag_and_env(tmp_path, capsys):
    assert main(["check", "--config", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert "config file not found" in err and "invalid configuration" not in err
    assert "--config" in err and "GATEWAY_CONFIG" in err


def test_env_api_keys_as_a_plain_string_is_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("GATEWAY_SERVER__API_KEYS", "k1, k2")
    config = build_config({}, "cfg", Path("."))
    assert [k.get_secret_value() for k in config.server.api_keys] == ["k1", "k2"]
    monkeypatch.setenv("GATEWAY_SERVER__API_KEYS", '["k3"]')
    config = build_config({}, "cfg", Path("."))
    assert [k.get_secret_value() for k in config.server.api_keys] == ["k3"]


def test_env_models_with_bad_json_names_the_variable_and_an_example(monkeypatch):
    monkeypatch.setenv("GATEWAY_MODELS", '[{"id":"z",}]')
    with pytest.raises(ConfigError) as e:
        build_config({}, "cfg.yaml", Path("."))
    assert e.value.source.startswith("environment")
    (problem,) = e.value.problems
    assert problem.startswith("GATEWAY_MODELS: is not valid JSON (")
    assert 'expected a JSON array, e.g. GATEWAY_MODELS=\'[{"id": "m", "base_url"' in problem


def test_env_bad_port_is_not_reported_as_an_error_of_the_yaml_file(monkeypatch):
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "abc")
    with pytest.raises(ConfigError) as e:
        build_config({"server": {"port": 8080}}, "cfg.yaml", Path("."))
    assert "cfg.yaml" not in str(e.value)
    assert e.value.problems == [
        "GATEWAY_SERVER__PORT: server.port: Input should be a valid integer, unable to parse "
        "string as an integer (e.g. GATEWAY_SERVER__PORT=8080)"
    ]


def test_env_error_beside_file_errors_names_each_source(monkeypatch):
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "abc")
    found = problems({"limits": {"max_tool_rounds": 0}})
    assert found[0].startswith("limits.max_tool_rounds: ")
    assert found[1].startswith("GATEWAY_SERVER__PORT: server.port: ")


def test_env_index_overrides_one_model_of_the_file(monkeypatch):
    monkeypatch.setenv("GATEWAY_MODELS__0__TIMEOUT", "5")
    monkeypatch.setenv("GATEWAY_MODELS__1__PARAMS__TEMPERATURE", "0.5")
    config = build_config(
        {"models": [{"id": "a", "base_url": "http://a"}, {"id": "b", "base_url": "http://b"}]},
        "cfg",
        Path("."),
    )
    assert config.models[0].timeout == 5 and config.models[1].params == {"temperature": 0.5}


def test_env_index_past_the_list_says_how_to_add_it(monkeypatch):
    monkeypatch.setenv("GATEWAY_MODELS__0__TIMEOUT", "5")
    found = problems({})
    assert found == [
        "GATEWAY_MODELS__0__TIMEOUT: models has 0 entries, so there is no models[0] to change; "
        "add it in the file, or set the whole list as JSON in GATEWAY_MODELS"
    ]


def test_env_unknown_key_suggests_the_variable(monkeypatch):
    monkeypatch.setenv("GATEWAY_SERVER__PROT", "9000")
    assert problems({}) == [
        "GATEWAY_SERVER__PROT: 'prot' is not a key of server (keys: api_keys, "
        "body_timeout, header_timeout, host, max_request_bytes, port, shutdown_timeout); "
        "did you mean GATEWAY_SERVER__PORT?"
    ]


def test_env_variables_that_are_not_keys_are_left_alone(monkeypatch):
    monkeypatch.setenv("GATEWAY_API_KEY", "used-by-interpolation")
    monkeypatch.setenv("GATEWAY_CONFIG", "elsewhere.yaml")
    assert build_config({}, "cfg", Path(".")).server.api_keys == []


def test_litellm_master_key_naming_an_unset_variable_is_an_error(monkeypatch):
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    raw = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    (problem,) = problems(raw)
    assert problem.startswith(
        "general_settings.master_key: environment variable LITELLM_MASTER_KEY is not set"
    )
    assert "remove master_key" in problem
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-m")
    config = build_config(raw, "cfg", Path("."))
    assert [k.get_secret_value() for k in config.server.api_keys] == ["sk-m"]


def _litellm(*entries: dict) -> list[str]:
    return problems({"model_list": list(entries)})


@pytest.mark.parametrize(
    "model", ["anthropic/claude-3-5-sonnet", "azure/gpt-4o", "bedrock/anthropic.claude-v2"]
)
def test_litellm_anthropic_prefix_is_a_config_error(model):
    """The gateway speaks OpenAI's API only: that entry's key would go to the wrong host."""
    entry = {"model_name": "c", "litellm_params": {"model": model, "api_key": "k"}}
    [found] = _litellm({"model_name": "ok", "litellm_params": {"model": "gpt-4o"}}, entry)
    provider = model.split("/")[0]
    assert found.startswith(f"model_list[1] (c): model {model!r}: provider {provider!r}")
    assert "not OpenAI-compatible" in found and "openai/<model>" in found


def test_litellm_bare_non_openai_model_name_is_a_config_error():
    [found] = _litellm({"model_name": "c", "litellm_params": {"model": "claude-3-opus"}})
    assert "model_list[0] (c): model 'claude-3-opus' has no provider prefix" in found


def test_litellm_openai_compatible_prefix_needs_an_api_base():
    [found] = _litellm({"model_name": "v", "litellm_params": {"model": "hosted_vllm/llama"}})
    assert found.startswith("model_list[0] (v): provider 'hosted_vllm' needs an api_base")


def test_litellm_openai_compatible_prefixes_are_converted():
    config = build_config(
        {
            "model_list": [
                {
                    "model_name": "v",
                    "litellm_params": {
                        "model": "hosted_vllm/meta/llama",
                        "api_base": "http://v/v1",
                    },
                },
                {
                    "model_name": "c",
                    "litellm_params": {
                        "model": "my-model",
                        "custom_llm_provider": "openai",
                        "api_base": "http://c/v1",
                    },
                },
                {"model_name": "o", "litellm_params": {"model": "gpt-4o-mini"}},
            ]
        },
        "litellm.yaml",
        Path("."),
    )
    routes = [(m.upstream_model, m.base_url) for m in config.models]
    assert routes == [
        ("meta/llama", "http://v/v1"),
        ("my-model", "http://c/v1"),
        ("gpt-4o-mini", "https://api.openai.com/v1"),
    ]


@pytest.mark.parametrize("bad", ["a\x0bb", "a\x0cb", "a\x7fb", "a\x00b"])
def test_control_character_in_a_configured_header_is_a_config_error(bad):
    """aiohttp refuses to send it: every request to the model would be a 500."""
    [found] = problems({"models": [{"id": "m", "base_url": "http://x/v1", "headers": {"X": bad}}]})
    assert found == "models[0].headers: the value of header 'X' contains a control character"


def test_auth_without_type_names_the_types():
    found = problems({"tools": [{"name": "t", "spec": "s.yaml", "auth": {"token": "x"}}]})
    assert found[0].startswith("tools[0].auth: needs a 'type' key: one of 'bearer', ")


def test_env_variable_that_creates_a_section_is_blamed_for_its_errors(monkeypatch):
    monkeypatch.setenv("GATEWAY_TOOLS__0__AUTH__TOKEN", "abc")
    with pytest.raises(ConfigError) as e:
        build_config({"tools": [{"name": "t", "spec": "s.yaml"}]}, "cfg.yaml", Path("."))
    assert e.value.source.startswith("environment")
    assert e.value.problems[0].startswith("GATEWAY_TOOLS__0__AUTH__TOKEN: tools[0].auth: needs")
