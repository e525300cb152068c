"""Snapshots built for start-up, reload and missing toolsets (``gateway.reload``), no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import reload
from gateway.configload import build_config, load_config
from gateway.errors import ConfigError
from gateway.reload import Reloader, build_snapshot, fingerprint, retry_missing, watched_files
from gateway.state import Snapshot, State

SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "t", "version": "1"},
    "servers": [{"url": "http://127.0.0.1:9"}],
    "paths": {
        "/ping": {"get": {"operationId": "ping", "responses": {"200": {"description": "ok"}}}}
    },
}


def config(tmp_path: Path, **toolset: object):
    raw = {
        "models": [{"id": "m", "base_url": "http://127.0.0.1:9/v1", "tools": ["t"]}],
        "tools": [{"name": "t", "spec": "spec.json", **toolset}],
    }
    return build_config(raw, "test", tmp_path)


def test_spec_that_fails_at_start_up_is_missing_not_fatal(tmp_path):
    snapshot = build_snapshot(config(tmp_path))
    assert list(snapshot.missing) == ["t"]
    assert "spec.json" in snapshot.missing["t"]
    assert snapshot.tools.for_model("m") == []


def test_missing_toolset_comes_back_when_its_spec_loads(tmp_path):
    first = build_snapshot(config(tmp_path))
    assert retry_missing(first) is None  # still not there
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    again = retry_missing(first)
    assert again is not None and not again.missing
    assert again.tools.for_model("m")
    assert again.digest == first.digest  # the same config, now whole


def test_reload_keeps_a_toolset_missing_only_if_its_settings_did_not_change(tmp_path):
    current = build_snapshot(config(tmp_path))
    assert list(build_snapshot(config(tmp_path), current).missing) == ["t"]
    with pytest.raises(ConfigError) as e:
        build_snapshot(config(tmp_path, prefix="x"), current)
    assert "toolset t (tools[0].spec = " in str(e.value)


def test_reload_refuses_a_spec_that_fails_when_the_old_config_had_it(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    current = build_snapshot(config(tmp_path))
    assert not current.missing
    (tmp_path / "spec.json").write_text("{not json")
    with pytest.raises(ConfigError, match="1 of 1 toolset spec"):
        build_snapshot(config(tmp_path), current)


def test_watch_fingerprint_covers_config_and_local_specs(tmp_path):
    (tmp_path / "gw.yaml").write_text("models: []\n")
    cfg = config(tmp_path)
    files = watched_files(tmp_path / "gw.yaml", cfg)
    assert files == [(tmp_path / "gw.yaml").resolve(), (tmp_path / "spec.json").resolve()]
    before = fingerprint(files)
    (tmp_path / "spec.json").write_text("{}")  # a spec that appears counts as a change
    assert fingerprint(files) != before


class FakeObserver:
    def __init__(self) -> None:
        self.reloads: list[bool] = []

    def reloaded(self, ok: bool, digest: str | None = None) -> None:
        self.reloads.append(ok)

    def toolsets(self, configured, missing) -> None:
        pass


async def test_a_bug_during_a_reload_is_logged_and_the_old_config_keeps_serving(
    tmp_path, monkeypatch, caplog
):
    path = tmp_path / "gw.yaml"
    path.write_text("models: []\n")
    state = State(Snapshot.build(load_config(path)))
    before = state.current

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(reload, "build_snapshot", broken)
    observer = FakeObserver()
    assert await Reloader(state, path, observer).reload() is False
    assert state.current is before
    assert observer.reloads == [False]
    assert "reload failed, still serving config" in caplog.text
