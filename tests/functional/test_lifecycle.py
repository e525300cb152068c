"""The real ``python -m gateway serve`` process: reload, drain, probes, supervised workers.

Each test starts the CLI on a free port against fake upstreams running in the test's own
event loop, and talks to it over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from conftest import FakeUpstream, Reply, model, start_app, text_stream
from toolapi import SPEC

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A gateway process; ``lines`` is its stderr so far."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, config: Path) -> None:
        self.proc = proc
        self.port = port
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_log(self, pattern: str, timeout: float = 20.0, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if m := re.search(pattern, line):
                    return m
            if self.proc.returncode is not None and self._reader.done():
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} in:\n{self.log()}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def exit_code(self, timeout: float = 20.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``gw = await gateway_process(config_dict, "--workers", "2")``, up and ready."""
    started: list[Served] = []

    async def start(raw: dict[str, Any], *args: str, wait: str = "serving on") -> Served:
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump(raw))
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            *args,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: teardown ends workers too
        )
        served = Served(proc, port, config)
        started.append(served)
        if wait:
            await served.wait_log(wait)
        return served

    yield start
    for served in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(served.proc.pid, signal.SIGKILL)
        await served.proc.wait()
        served._reader.cancel()


def write_config(served: Served, raw: dict[str, Any]) -> None:
    served.config.write_text(yaml.safe_dump(raw))


async def model_ids(session: aiohttp.ClientSession, url: str) -> list[str]:
    async with session.get(url + "/v1/models") as resp:
        return [m["id"] for m in (await resp.json())["data"]]


async def until(check: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def slow_stream(parts: int = 12, delay: float = 0.15) -> Reply:
    return Reply(chunks=text_stream([f"w{i} " for i in range(parts)]), chunk_delay=delay)


async def open_stream(session: aiohttp.ClientSession, url: str, model_id: str) -> Any:
    body = {"model": model_id, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    resp = await session.post(url + "/v1/chat/completions", json=body)
    assert resp.status == 200
    first = await resp.content.readline()
    assert first.startswith(b"data: ")
    return resp


async def read_rest(resp: aiohttp.ClientResponse) -> bytes:
    rest = await resp.content.read()
    resp.release()
    return rest


# --- hot reload ----------------------------------------------------------------------------


async def test_sighup_reload_keeps_open_stream_and_serves_new_config(
    gateway_process, fake_upstream
):
    up: FakeUpstream = await fake_upstream()
    up.default = slow_stream()
    old = {"models": [model("m", up, upstream_model="old-up")]}
    gw = await gateway_process(old)
    async with aiohttp.ClientSession() as s:
        stream = await open_stream(s, gw.url, "m")
        new = {"models": [model("m", up, upstream_model="new-up"), model("m2", up)]}
        write_config(gw, {**new, "server": {"port": 1}})
        gw.signal(signal.SIGHUP)
        await until(lambda: _has(s, gw.url, "m2"))
        assert stream.content.at_eof() is False  # the stream is still open across the swap
        rest = await read_rest(stream)
        assert rest.endswith(b"data: [DONE]\n\n") and b"w11" in rest
        up.default = Reply(json={"id": "x", "object": "chat.completion", "choices": []})
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(gw.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
    assert [r.body["model"] for r in up.received] == ["old-up", "new-up"]
    await gw.wait_log(r"reload: now serving config \w+ \(was \w+\): 2 model\(s\)")
    await gw.wait_log(r"server.port changed \(8080 -> 1\): a reload cannot apply it; restart")


async def _has(s: aiohttp.ClientSession, url: str, model_id: str) -> bool:
    return model_id in await model_ids(s, url)


async def test_invalid_reload_is_refused_and_old_config_keeps_serving(
    gateway_process, fake_upstream
):
    up = await fake_upstream()
    gw = await gateway_process({"models": [model("m", up)]})
    write_config(gw, {"models": [model("m", up, timeout=-1)], "tools": [{"name": "x"}]})
    gw.signal(signal.SIGHUP)
    await gw.wait_log("reload refused, still serving config")
    log = gw.log()
    assert "models[0].timeout: Input should be greater than 0" in log
    assert "tools[0].spec" in log  # every problem at once, as `gateway check` reports them
    async with aiohttp.ClientSession() as s:
        assert await model_ids(s, gw.url) == ["m"]
        async with s.get(gw.url + "/readyz") as resp:
            assert resp.status == 200


async def test_reload_with_an_unloadable_spec_is_refused(gateway_process, fake_upstream, tmp_path):
    up = await fake_upstream()
    gw = await gateway_process({"models": [model("m", up)]})
    (tmp_path / "bad.yaml").write_text("openapi: [unclosed")
    write_config(gw, {"models": [model("m2", up)], "tools": [{"name": "t", "spec": "bad.yaml"}]})
    gw.signal(signal.SIGHUP)
    await gw.wait_log("reload refused")
    assert "bad.yaml" in gw.log()
    async with aiohttp.ClientSession() as s:
        assert await model_ids(s, gw.url) == ["m"]


async def test_sighup_while_specs_load_at_start_up_is_a_reload_once_serving(
    gateway_process, fake_upstream
):
    up = await fake_upstream()
    spec_app = web.Application()
    spec_app.router.add_get("/openapi.json", _slow_spec)
    runner, spec_url = await start_app(spec_app)
    try:
        toolset = {"name": "t", "spec": spec_url + "/openapi.json"}
        gw = await gateway_process(
            {"models": [model("m", up)], "tools": [toolset]}, wait=r"config .*model\(s\)"
        )
        write_config(gw, {"models": [model("m", up), model("m2", up)], "tools": [toolset]})
        gw.signal(signal.SIGHUP)  # the port is bound, the spec still loading
        await gw.wait_log("reload requested \\(SIGHUP during start-up\\)")
        async with aiohttp.ClientSession() as s:
            await until(lambda: _has(s, gw.url, "m2"))
        assert gw.proc.returncode is None
    finally:
        await runner.cleanup()


async def _slow_spec(request: web.Request) -> web.Response:
    await asyncio.sleep(1.5)
    return web.json_response(SPEC)


async def test_watch_reloads_on_config_file_change(gateway_process, fake_upstream):
    up = await fake_upstream()
    gw = await gateway_process({"models": [model("m", up)]}, "--watch")
    await gw.wait_log("watching")
    await asyncio.sleep(0.3)  # the watcher is set up
    write_config(gw, {"models": [model("m", up), model("watched", up)]})
    async with aiohttp.ClientSession() as s:
        await until(lambda: _has(s, gw.url, "watched"))
    await gw.wait_log(r"reload requested \(file change\)")


# --- stop: the drain -------------------------------------------------------------------------


async def test_sigterm_drains_open_stream_and_readyz_goes_503(gateway_process, fake_upstream):
    up = await fake_upstream()
    up.default = slow_stream(parts=10)
    gw = await gateway_process({"models": [model("m", up)]})
    probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    async with aiohttp.ClientSession() as s, probe:
        async with probe.get(gw.url + "/readyz") as resp:  # a kept-alive connection
            assert resp.status == 200
            assert (await resp.json())["status"] == "ready"
        stream = await open_stream(s, gw.url, "m")
        gw.signal(signal.SIGTERM)
        await gw.wait_log("stopped accepting")
        async with probe.get(gw.url + "/readyz") as resp:
            assert resp.status == 503
            assert await resp.json() == {"status": "draining"}
            assert resp.headers.get("Connection", "").lower() == "close"
        with pytest.raises(aiohttp.ClientConnectionError):  # no new connections
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(gw.url + "/healthz")
        rest = await read_rest(stream)
        assert rest.endswith(b"data: [DONE]\n\n")
    assert await gw.exit_code() == 0


async def test_sigterm_cuts_what_outlives_shutdown_timeout(gateway_process, fake_upstream):
    up = await fake_upstream()
    up.default = Reply(chunks=text_stream(["a"]), then_hang=True)
    gw = await gateway_process({"server": {"shutdown_timeout": 0.5}, "models": [model("m", up)]})
    async with aiohttp.ClientSession() as s:
        stream = await open_stream(s, gw.url, "m")
        gw.signal(signal.SIGTERM)
        assert await gw.exit_code() == 0
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_rest(stream)
    assert "server.shutdown_timeout reached: cutting 1 request(s)" in gw.log()


async def missing_gauge(s: aiohttp.ClientSession, url: str) -> float:
    async with s.get(url + "/metrics") as resp:
        text = await resp.text()
    line = next(x for x in text.splitlines() if x.startswith("gateway_toolset_missing{"))
    assert 'toolset="pets"' in line
    return float(line.split()[-1])


async def _spec(request: web.Request) -> web.Response:
    return web.json_response(SPEC)


# --- start: missing toolsets, the port ------------------------------------------------------


async def test_missing_spec_at_startup_serves_and_recovers(gateway_process, fake_upstream):
    up = await fake_upstream()
    spec_port = free_port()
    raw = {
        "models": [model("m", up, tools=["pets"])],
        "tools": [{"name": "pets", "spec": f"http://127.0.0.1:{spec_port}/openapi.json"}],
    }
    gw = await gateway_process(raw)
    await gw.wait_log("toolset pets is missing")
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/readyz") as resp:
            assert resp.status == 200  # its models work: the replica stays in service
            body = await resp.json()
            assert body["status"] == "degraded" and body["missing_toolsets"] == ["pets"]
        assert await model_ids(s, gw.url) == ["m"]  # its models are served
        assert await missing_gauge(s, gw.url) == 1.0

        spec_app = web.Application()
        spec_app.router.add_get("/openapi.json", _spec)
        runner = web.AppRunner(spec_app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", spec_port).start()
        try:

            async def ready() -> bool:
                async with s.get(gw.url + "/readyz") as resp:
                    return (await resp.json())["status"] == "ready"

            await until(ready)
        finally:
            await runner.cleanup()
        assert await missing_gauge(s, gw.url) == 0.0
    await gw.wait_log("missing toolset\\(s\\) loaded: now serving")


async def test_port_in_use_with_workers_is_exit_1_with_a_clear_message(fake_upstream, tmp_path):
    up = await fake_upstream()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"models": [model("m", up)]}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "serve", "--config", str(config)),
            *("--port", str(port), "--workers", "2"),
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert f"error: 127.0.0.1:{port}: cannot listen" in err.decode()
    assert "another process is already listening on this port" in err.decode()
    assert "started (pid" not in err.decode()  # no worker was started


# --- workers ---------------------------------------------------------------------------------


async def test_killed_worker_is_restarted(gateway_process, fake_upstream):
    up = await fake_upstream()
    gw = await gateway_process({"models": [model("m", up)]}, "--workers", "2", wait="2 workers")
    m = await gw.wait_log(r"worker 0 started \(pid (\d+)\)")
    os.kill(int(m.group(1)), signal.SIGKILL)
    mark = len(gw.lines)
    await gw.wait_log(r"worker 0 \(pid \d+\) died \(signal SIGKILL\)", after=mark)
    again = await gw.wait_log(r"worker 0 started \(pid (\d+)\)", after=mark)
    assert again.group(1) != m.group(1)
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            assert await model_ids(s, gw.url) == ["m"]
    gw.signal(signal.SIGTERM)
    assert await gw.exit_code() == 0
    assert "all 2 workers stopped" in gw.log()


async def test_workers_reload_on_sighup_to_the_parent(gateway_process, fake_upstream):
    up = await fake_upstream()
    gw = await gateway_process({"models": [model("m", up)]}, "--workers", "2", wait="2 workers")
    write_config(gw, {"models": [model("m", up), model("m2", up)]})
    gw.signal(signal.SIGHUP)
    for _ in range(2):
        await gw.wait_log(r"reload: now serving config")
    await until(lambda: _two_reloads(gw))
    connector = aiohttp.TCPConnector(force_close=True)  # new connections: both workers
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(6):
            assert await model_ids(s, gw.url) == ["m", "m2"]


async def test_workers_watch_is_the_parents_and_reloads_every_worker(
    gateway_process, fake_upstream
):
    up = await fake_upstream()
    gw = await gateway_process(
        {"models": [model("m", up)]}, "--workers", "2", "--watch", wait="2 workers"
    )
    await gw.wait_log("watching")
    await asyncio.sleep(0.3)
    write_config(gw, {"models": [model("m", up), model("m2", up)]})
    await gw.wait_log(r"reload requested \(file change\): passing it to 2 workers")
    await until(lambda: _two_reloads(gw))
    assert sum("watching" in line for line in gw.lines) == 1  # the parent only


async def _two_reloads(gw: Served) -> bool:
    return sum("reload: now serving config" in line for line in gw.lines) >= 2


async def test_worker_that_cannot_start_makes_parent_exit_nonzero(gateway_process, fake_upstream):
    """Here the workers cannot listen on the metrics port: a clear error, and exit 1."""
    up = await fake_upstream()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        raw = {"models": [model("m", up)], "metrics": {"port": port}}
        gw = await gateway_process(raw, "--workers", "2", wait="")
        assert await gw.exit_code() == 1
    assert "could not start" in gw.log() and "metrics.port" in gw.log()
    assert "Traceback" not in gw.log()


async def test_restarted_worker_serves_the_config_its_siblings_serve(
    gateway_process, fake_upstream
):
    """An edit nobody reloaded yet must not reach a worker started again after a crash."""
    up = await fake_upstream()
    gw = await gateway_process({"models": [model("m", up)]}, "--workers", "2", wait="2 workers")
    write_config(gw, {"models": [model("edited", up)]})  # no SIGHUP
    m = await gw.wait_log(r"worker 0 started \(pid (\d+)\)")
    os.kill(int(m.group(1)), signal.SIGKILL)
    mark = len(gw.lines)
    await gw.wait_log(r"worker 0 started \(pid (\d+)\)", after=mark)
    await gw.wait_log(r"serving on", after=mark)
    connector = aiohttp.TCPConnector(force_close=True)  # new connections: both workers
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(8):
            assert await model_ids(s, gw.url) == ["m"]


async def test_metrics_port_in_use_is_a_clear_error_not_a_traceback(gateway_process, fake_upstream):
    up = await fake_upstream()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = await gateway_process({"models": [model("m", up)], "metrics": {"port": port}}, wait="")
        assert await gw.exit_code() == 1
    assert f"127.0.0.1:{port}: cannot listen" in gw.log() and "metrics.port" in gw.log()
    assert "Traceback" not in gw.log()


async def test_reloaded_functions_are_embedded_at_once_not_on_a_request(
    gateway_process, fake_upstream, tmp_path
):
    """After a reload, the new snapshot's functions are embedded beside it, not in a request."""
    from test_tool_selection import api_spec, keyword_embeddings

    up, emb = await fake_upstream(), await fake_upstream()
    emb.default = keyword_embeddings
    (tmp_path / "api.json").write_text(json.dumps(api_spec()))
    selection = {"max_functions": 5, "method": "embeddings", "embedding_model": "emb"}
    raw = {
        "tools": [{"name": "api", "spec": "api.json"}],
        "models": [model("m", up, tools=["api"], tool_selection=selection), model("emb", emb)],
    }
    gw = await gateway_process(raw)
    await until(lambda: _async(len(emb.received) == 1))  # all 50 functions, at start-up
    raw["models"][0]["params"] = {"temperature": 0}
    write_config(gw, raw)
    gw.signal(signal.SIGHUP)
    await gw.wait_log(r"reload: now serving config")
    await until(lambda: _async(len(emb.received) == 2))  # again, with no request sent
    assert up.received == []


async def _async(value: bool) -> bool:
    return value
