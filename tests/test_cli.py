"""The ``gateway`` command: check's report, --version, pipes, ports, start-up warnings."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from conftest import start_app

from gateway import __version__
from gateway.cli import main
from gateway.configload import build_config
from gateway.errors import ConfigError
from gateway.openapi.load import fetch_with
from gateway.tools import load_tools
from gateway.upstream import new_session

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "config" / "specs" / "open-meteo.yaml"


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def test_version_flag_prints_the_version():
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"gateway {__version__}"


def test_check_prints_nothing_as_ok_before_a_bad_spec_fails(tmp_path, capsys):
    config = tmp_path / "gw.yaml"
    config.write_text(
        "models:\n  - {id: m, base_url: 'http://127.0.0.1:1/v1', tools: [good, gone, broken]}\n"
        f"tools:\n  - {{name: good, spec: {SPEC}}}\n"
        "  - {name: gone, spec: specs/missing.yaml}\n"
        "  - {name: broken, spec: broken.yaml}\n"
    )
    (tmp_path / "broken.yaml").write_text("openapi: 3.0.0\npaths: [unclosed\n")
    assert main(["check", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # not "OK", not "model m -> ..." before the failure
    assert "tools: 2 of 3 toolset spec(s) could not be loaded" in err
    missing = tmp_path / "specs" / "missing.yaml"
    assert f"toolset gone (tools[1].spec = {missing}): cannot read the file" in err
    assert f"toolset broken (tools[2].spec = {tmp_path / 'broken.yaml'}): line 3" in err


async def test_spec_url_that_times_out_is_reported_for_its_toolset(tmp_path):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_get("/spec.json", slow)
    runner, url = await start_app(app)
    config = build_config(
        {"tools": [{"name": "slow", "spec": f"{url}/spec.json"}]}, "cfg", tmp_path
    )
    try:
        async with new_session() as session:
            with pytest.raises(ConfigError) as e:
                await load_tools(config, fetch_with(session, timeout=0.2))
    finally:
        await runner.cleanup()
    (problem,) = e.value.problems
    assert problem == (
        f"toolset slow (tools[0].spec = {url}/spec.json): cannot fetch: timed out after 0.2 s"
    )


def test_check_prints_each_warning_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = tmp_path / "gw.yaml"
    config.write_text(
        "models:\n  - {id: m, base_url: 'http://127.0.0.1:1/v1', api_key: '${OPENAI_API_KEY:-}',"
        " tools: [w]}\n"
        f"tools:\n  - {{name: w, spec: {SPEC},"
        " include: [no_such_operation, get_weather_forecast]}\n"
    )
    assert main(["check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    text = out + err
    assert text.count("no_such_operation") == 1
    assert text.count("set OPENAI_API_KEY") == 1
    assert out.rstrip().splitlines()[-2:] == [
        "WARNING: model m: api_key is empty (set OPENAI_API_KEY); its requests get a 401 "
        "upstream_api_key_missing until it is set",
        "WARNING: toolset w: filter 'no_such_operation' matches no operation",
    ]


def test_check_piped_into_head_ends_without_a_broken_pipe_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "check"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # as `head` does once it has its lines
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_serve_on_a_port_in_use_is_a_clear_error_not_a_traceback(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("models: []\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run("serve", "--config", str(config), "--port", str(port))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"error: 127.0.0.1:{port}: cannot listen" in out.stderr
    assert "another process is already listening on this port" in out.stderr
    assert "--port" in out.stderr


def test_serve_warns_at_start_up_about_a_model_whose_key_is_unset(tmp_path, capsys, monkeypatch):
    import gateway.cli as cli

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    config = tmp_path / "gw.yaml"
    config.write_text(
        "models:\n  - {id: m, base_url: 'http://127.0.0.1:1/v1', api_key: '${NO_SUCH_KEY_VAR:-}',"
        " fallbacks: [n]}\n  - {id: n, base_url: 'http://127.0.0.1:1/v1'}\n"
    )
    monkeypatch.setattr(cli, "run", lambda *a, **kw: None)
    records = []
    monkeypatch.setattr(cli.log, "warning", lambda fmt, *a: records.append(fmt % a))
    assert main(["serve", "--config", str(config)]) == 0
    assert records == [
        "model m: api_key is empty (set NO_SUCH_KEY_VAR); its requests go to its fallbacks (n) "
        "until it is set"
    ]


def test_check_names_the_built_in_mock(capsys):
    assert main(["check", "--config", str(ROOT / "config" / "gateway.yaml")]) == 0
    assert "model demo -> mock:// (the built-in mock) as demo [tools: weather]" in (
        capsys.readouterr().out
    )
