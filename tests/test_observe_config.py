"""The config's logging, metrics and tracing sections, and named client keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.configload import build_config
from gateway.errors import ConfigError


def test_api_keys_entries_may_carry_a_name_shown_instead_of_the_key():
    from gateway.state import key_name

    config = build_config(
        {"server": {"api_keys": ["plain-key", {"name": "team-a", "key": "named-key"}]}},
        "cfg",
        Path("."),
    )
    plain, named = config.server.api_keys
    assert named.get_secret_value() == "named-key" and "named-key" not in repr(named)
    assert key_name(named) == "team-a"
    assert key_name(plain).startswith("key-") and "plain" not in key_name(plain)
    for bad, message in (
        ({"name": "team a", "key": "k"}, "'name' must be"),
        ({"name": "x"}, "needs 'key'"),
        ({"key": "k", "team": "x"}, "unknown key(s) team"),
    ):
        with pytest.raises(ConfigError) as e:
            build_config({"server": {"api_keys": [bad]}}, "cfg", Path("."))
        assert f"server.api_keys[0]: {message}" in str(e.value)


def test_logging_metrics_and_tracing_sections_are_checked():
    config = build_config(
        {
            "logging": {"format": "json", "level": "warning", "access": False},
            "metrics": {"enabled": True, "port": 9464},
            "tracing": {"otlp_endpoint": "http://collector:4318"},
        },
        "cfg",
        Path("."),
    )
    assert config.logging.format == "json" and config.metrics.port == 9464
    with pytest.raises(ConfigError) as e:
        build_config({"logging": {"format": "xml"}, "metrics": {"port": 0}}, "cfg", Path("."))
    assert "logging.format:" in str(e.value) and "metrics.port:" in str(e.value)


def test_metrics_port_equal_to_server_port_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        build_config({"server": {"port": 9000}, "metrics": {"port": 9000}}, "cfg", Path("."))
    assert "metrics.port: 9000 is server.port too" in str(e.value)
