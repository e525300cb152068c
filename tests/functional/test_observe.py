"""Access lines, tool-call lines and /metrics, after known traffic through a real gateway."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import openai
import pytest
from conftest import Reply, completion, model, start_app, text_stream
from prometheus_client.parser import text_string_to_metric_families
from test_tool_loop import USER, answer, calls
from toolapi import SPEC, TOKEN, ToolAPI

from gateway import logs
from gateway.metrics import MULTIPROC_ENV
from gateway.observe import OBSERVER
from gateway.state import STATE

MESSAGES = [{"role": "user", "content": "hi"}]
ACCESS_FIELDS = [
    "request_id",
    "method",
    "path",
    "model",
    "served_model",
    "status",
    "upstream_status",
    "stream",
    "duration_ms",
    "ttfb_ms",
    "prompt_tokens",
    "completion_tokens",
    "tool_rounds",
    "tool_calls",
    "error",
    "client_key",
]


@pytest.fixture
async def api():
    server = ToolAPI()
    runner, server.url = await start_app(server.app)
    yield server
    await runner.cleanup()


def access(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "gateway.access"]


def tool_lines(caplog) -> list[dict]:
    return [
        r.fields
        for r in caplog.records
        if r.name == "gateway.toolexec" and getattr(r, "event", "") == "tool call"
    ]


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page, by (name, sorted labels)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- the access line ------------------------------------------------------------------------


async def test_access_line_for_success_fallback_and_tokens(fake_upstream, make_gateway, caplog):
    caplog.set_level(logging.INFO)
    first, second = await fake_upstream(), await fake_upstream()
    first.default = Reply(status=503, json={"error": {"message": "down"}})
    gw = await make_gateway({"models": [model("a", first, fallbacks=["b"]), model("b", second)]})
    async with aiohttp.ClientSession() as s:
        body = {"model": "a", "messages": MESSAGES}
        async with s.post(gw.v1 + "/chat/completions", json=body) as r:
            assert r.status == 200
            rid = r.headers["x-request-id"]
    [line] = access(caplog)
    assert list(line) == ACCESS_FIELDS
    assert line["request_id"] == rid and line["method"] == "POST"
    assert line["path"] == "/v1/chat/completions"
    assert (line["model"], line["served_model"]) == ("a", "b")
    assert (line["status"], line["upstream_status"], line["stream"]) == (200, 200, False)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 3)
    assert line["duration_ms"] >= 0 and line["ttfb_ms"] is None
    assert line["error"] is None and line["client_key"] is None


async def test_access_line_for_a_stream_has_ttfb_and_usage(fake_upstream, make_gateway, caplog):
    caplog.set_level(logging.INFO)
    up = await fake_upstream()
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    up.default = Reply(
        chunks=[*text_stream(["a", "b"])[:-1], {"usage": usage}, b"data: [DONE]\n\n"]
    )
    gw = await make_gateway({"models": [model("m", up)]})
    async with aiohttp.ClientSession() as s:
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        async with s.post(gw.v1 + "/chat/completions", json=body) as r:
            await r.read()
    [line] = access(caplog)
    assert line["stream"] is True and line["status"] == 200
    assert 0 <= line["ttfb_ms"] <= line["duration_ms"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 2)


@pytest.mark.parametrize(
    "body, key, status, error",
    [
        ({"model": "nope", "messages": MESSAGES}, "k1", 404, "model_not_found"),
        ({"model": "m", "messages": MESSAGES}, "wrong", 401, "invalid_api_key"),
        ({"model": "m", "messages": []}, "k1", 400, None),
        ({"model": "m", "messages": MESSAGES, "x": "upstream-fails"}, "k1", 500, None),
    ],
)
async def test_every_failure_gets_an_access_line(
    fake_upstream, make_gateway, caplog, body, key, status, error
):
    caplog.set_level(logging.INFO)
    up = await fake_upstream()
    up.default = Reply(status=500, json={"error": {"message": "boom"}})
    gw = await make_gateway({"server": {"api_keys": ["k1"]}, "models": [model("m", up)]})
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {key}"}
        async with s.post(gw.v1 + "/chat/completions", json=body, headers=headers) as r:
            assert r.status == status
    [line] = access(caplog)
    assert line["status"] == status
    if error:
        assert line["error"] == error
    if status == 500:
        assert line["upstream_status"] == 500 and line["served_model"] is None
    assert "k1" not in json.dumps(line)


async def test_client_key_is_named_or_hashed_never_shown(fake_upstream, make_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    up = await fake_upstream()
    keys = ["plain-client-key", {"name": "team-a", "key": "named-client-key"}]
    gw = await make_gateway({"server": {"api_keys": keys}, "models": [model("m", up)]})
    async with aiohttp.ClientSession() as s:
        for key in ("plain-client-key", "named-client-key"):
            headers = {"Authorization": f"Bearer {key}"}
            body = {"model": "m", "messages": MESSAGES}
            async with s.post(gw.v1 + "/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200
    first, second = access(caplog)
    assert first["client_key"].startswith("key-") and len(first["client_key"]) == 12
    assert second["client_key"] == "team-a"
    assert "client-key" not in caplog.text


async def test_access_line_for_a_later_round_failure_in_a_tool_stream(
    fake_upstream, make_gateway, api, tmp_path, caplog, oai
):
    caplog.set_level(logging.INFO)
    up, gw, client = await _tool_gateway(fake_upstream, make_gateway, api, tmp_path, oai)
    up.push(
        calls(("getWeather", {"location": "X"})),
        Reply(status=400, json={"error": {"message": "context too long", "type": "x"}}),
    )
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    [line] = access(caplog)
    assert line["status"] == 200 and line["stream"] is True
    assert line["upstream_status"] == 400 and line["error"] is not None
    assert (line["tool_rounds"], line["tool_calls"]) == (1, 1)


def test_json_lines_are_one_object_each_with_stable_fields(capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.setup("json", "info")
    try:
        logging.getLogger("gateway.access").info(
            "%s %s", "request", "x", extra={"event": "request", "fields": {"status": 200}}
        )
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logging.getLogger("gateway").exception("plain message\nwith a newline")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = capsys.readouterr().err.strip().split("\n")
    first, second = (json.loads(line) for line in lines)
    assert list(first) == ["time", "level", "logger", "pid", "event", "status"]
    assert first["event"] == "request" and first["status"] == 200 and first["level"] == "info"
    assert first["time"].endswith("Z")
    assert second["message"] == "plain message\nwith a newline"
    assert "ValueError" in second["exception"]


def test_text_values_chosen_by_clients_cannot_break_the_line():
    text = str(logs.Fields({"model": "evil\nINFO forged", "path": "/v1/x y", "n": None}))
    assert "\n" not in text
    assert text == 'model="evil\\nINFO forged" path="/v1/x y" n=-'


# --- tool calls -----------------------------------------------------------------------------


async def _tool_gateway(fake_upstream, make_gateway, api, tmp_path, oai, **extra):
    up = await fake_upstream()
    (tmp_path / "api.json").write_text(json.dumps(SPEC))
    toolset = {
        "name": "api",
        "spec": "api.json",
        "base_url": api.url,
        "auth": {"type": "bearer", "token": TOKEN},
    }
    gw = await make_gateway(
        {"tools": [toolset], "models": [model("m", up, tools=["api"])], **extra}
    )
    return up, gw, oai(gw)


async def test_tool_call_lines_name_model_round_call_and_why_it_failed(
    fake_upstream, make_gateway, api, tmp_path, caplog, oai
):
    caplog.set_level(logging.INFO)
    up, gw, client = await _tool_gateway(fake_upstream, make_gateway, api, tmp_path, oai)
    up.push(
        calls(("getWeather", {"location": "Paris"}), ("fail", {})),
        calls(("getWeather", {"wrong": 1}), ("madeUp", {})),
        answer(),
    )
    res = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert res.headers["x-gateway-tool-calls"] == "2"  # neither the rejected nor the unknown
    ok, failed, rejected, unknown = tool_lines(caplog)
    assert ok["model"] == "m" and ok["round"] == 1 and ok["call_id"] == "call_0"
    assert ok["toolset"] == "api" and ok["function"] == "getWeather"
    assert (ok["status"], ok["outcome"], ok["error"]) == (200, "ok", None)
    assert (failed["status"], failed["outcome"], failed["error"]) == (500, "http_error", "HTTP 500")
    assert rejected["round"] == 2 and rejected["outcome"] == "rejected"
    assert rejected["error"].startswith("the arguments of getWeather do not match")
    assert rejected["ms"] is None and rejected["status"] is None
    assert (unknown["function"], unknown["outcome"], unknown["toolset"]) == (
        "madeUp",
        "unknown_function",
        None,
    )
    rejected_text = [r.getMessage() for r in caplog.records if "outcome=rejected" in r.getMessage()]
    assert len(rejected_text) == 1 and "\n" not in rejected_text[0]
    [line] = access(caplog)
    assert (line["tool_rounds"], line["tool_calls"]) == (2, 2)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (40, 4)


async def test_tool_requests_carry_the_request_id(fake_upstream, make_gateway, api, tmp_path, oai):
    up, gw, client = await _tool_gateway(fake_upstream, make_gateway, api, tmp_path, oai)
    up.push(calls(("getWeather", {"location": "Paris"})), answer())
    await client.chat.completions.create(
        model="m", messages=USER, extra_headers={"X-Request-Id": "join-me-1"}
    )
    assert api.headers[0]["X-Request-Id"] == "join-me-1"


async def test_keys_and_tool_credentials_never_reach_any_line(
    fake_upstream, make_gateway, api, tmp_path, caplog, oai
):
    caplog.set_level(logging.DEBUG)
    up, gw, client = await _tool_gateway(
        fake_upstream,
        make_gateway,
        api,
        tmp_path,
        oai,
        server={"api_keys": ["client-secret-1"]},
    )
    up.push(calls(("secure", {}), ("getWeather", {"location": TOKEN})), answer())
    client = oai(gw, api_key="client-secret-1")
    await client.chat.completions.create(model="m", messages=USER)
    assert len(tool_lines(caplog)) == 2 and len(access(caplog)) == 1
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))
    for secret in ("client-secret-1", TOKEN, "sk-upstream-secret"):
        assert secret not in ours
        assert all(secret not in json.dumps(f) for f in tool_lines(caplog) + access(caplog))


# --- metrics --------------------------------------------------------------------------------


async def test_metrics_count_known_traffic(fake_upstream, make_gateway, api, tmp_path, oai):
    flaky, backup = await fake_upstream(), await fake_upstream()
    flaky.push(Reply(status=503, json={}), Reply(status=503, json={}), Reply(json=completion()))
    (tmp_path / "api.json").write_text(json.dumps(SPEC))
    gw = await make_gateway(
        {
            "tools": [{"name": "api", "spec": "api.json", "base_url": api.url}],
            "models": [
                model("a", flaky, fallbacks=["b"], retries=1, backoff=0),
                model("b", backup),
                model("t", backup, tools=["api"]),
            ],
        }
    )
    client = oai(gw)
    await client.chat.completions.create(model="a", messages=MESSAGES)  # retried, fell back
    await client.chat.completions.create(model="a", messages=MESSAGES)  # ok at once
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="client-made-up", messages=MESSAGES)
    backup.push(calls(("getWeather", {"location": "Paris"}), ("nope", {})), answer())
    await client.chat.completions.create(model="t", messages=USER)
    backup.push(Reply(chunks=text_stream(["x"])))
    async for _ in await client.chat.completions.create(model="b", messages=USER, stream=True):
        pass
    m = await scrape(gw.url)
    req = "gateway_requests_total"
    chat = {"endpoint": "chat_completions"}
    assert value(m, req, **chat, model="a", served_model="b", status="200") == 1
    assert value(m, req, **chat, model="a", served_model="a", status="200") == 1
    assert value(m, req, **chat, model="unknown", served_model="none", status="404") == 1
    assert value(m, req, **chat, model="t", served_model="t", status="200") == 1
    assert value(m, req, **chat, model="b", served_model="b", status="200") == 1
    assert not any("client-made-up" in str(k) for k in m)
    att = "gateway_upstream_attempts_total"
    assert value(m, att, model="a", outcome="retried") == 1
    assert value(m, att, model="a", outcome="fell_back") == 1
    assert value(m, att, model="a", outcome="ok") == 1
    assert value(m, att, model="b", outcome="ok") == 2  # the fallback and the stream
    assert value(m, att, model="t", outcome="ok") == 2
    assert value(m, "gateway_tokens_total", model="b", kind="prompt") == 5
    assert value(m, "gateway_tokens_total", model="t", kind="prompt") == 30
    calls_ = "gateway_tool_calls_total"
    assert value(m, calls_, toolset="api", function="getWeather", outcome="ok") == 1
    assert value(m, calls_, toolset="none", function="unknown", outcome="unknown_function") == 1
    assert value(m, "gateway_tool_call_duration_seconds_count", toolset="api") == 1
    assert value(m, "gateway_tool_rounds_count", model="t") == 1
    assert value(m, "gateway_tool_rounds_sum", model="t") == 1
    assert value(m, "gateway_request_duration_seconds_count", **chat, model="a") == 2
    assert value(m, "gateway_time_to_first_byte_seconds_count", **chat, model="b") == 1
    assert value(m, "gateway_requests_in_flight") == 1  # the scrape itself
    assert value(m, "gateway_open_streams") == 0
    digest = gw.app[STATE].current.digest
    assert value(m, "gateway_config_info", digest=digest) == 1


async def test_metrics_off_or_on_a_port_of_their_own(fake_upstream, make_gateway, unused_tcp_port):
    up = await fake_upstream()
    off = await make_gateway({"models": [model("m", up)], "metrics": {"enabled": False}})
    async with aiohttp.ClientSession() as s, s.get(off.url + "/metrics") as r:
        assert r.status == 404
    own = await make_gateway({"models": [model("m", up)], "metrics": {"port": unused_tcp_port}})
    async with aiohttp.ClientSession() as s:
        async with s.get(own.url + "/metrics") as r:
            assert r.status == 404
        body = {"model": "m", "messages": MESSAGES}
        async with s.post(own.v1 + "/chat/completions", json=body) as r:
            assert r.status == 200
    m = await scrape(f"http://127.0.0.1:{unused_tcp_port}")
    assert (
        value(
            m,
            "gateway_requests_total",
            endpoint="chat_completions",
            model="m",
            served_model="m",
            status="200",
        )
        == 1
    )


async def test_metrics_need_no_client_key(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"server": {"api_keys": ["k"]}, "models": [model("m", up)]})
    await scrape(gw.url)


async def test_reload_hook_counts_and_shows_the_new_digest(fake_upstream, make_gateway):
    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    gw.app[OBSERVER].reloaded(False)
    gw.app[OBSERVER].reloaded(True, "abcdef012345")
    m = await scrape(gw.url)
    assert value(m, "gateway_config_reloads_total", outcome="ok") == 1
    assert value(m, "gateway_config_reloads_total", outcome="failed") == 1
    assert value(m, "gateway_config_info", digest="abcdef012345") == 1
    assert sum(v for (n, _), v in m.items() if n == "gateway_config_info") == 1


# --- workers --------------------------------------------------------------------------------


async def test_metrics_are_summed_over_workers(fake_upstream, tmp_path, unused_tcp_port):
    """The real CLI with 2 workers: every scrape, whichever worker answers, has all requests."""
    up = await fake_upstream()
    config = tmp_path / "gw.yaml"
    config.write_text(json.dumps({"models": [model("m", up)], "logging": {"format": "json"}}))
    stderr = tmp_path / "stderr.log"
    url = f"http://127.0.0.1:{unused_tcp_port}"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--log-level",
                "info",
                "--config",
                str(config),
                "--port",
                str(unused_tcp_port),
                "--workers",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={k: v for k, v in os.environ.items() if k != MULTIPROC_ENV},
        )
    try:
        # a connection per request, so that the kernel spreads them over both workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            await _until_up(s, url, proc)
            await _until_workers_log(stderr, proc, 2)
            body = {"model": "m", "messages": MESSAGES}
            for _ in range(N_REQUESTS):
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
        for _ in range(4):
            m = await scrape(url)
            total = value(
                m,
                "gateway_requests_total",
                endpoint="chat_completions",
                model="m",
                served_model="m",
                status="200",
            )
            assert total == N_REQUESTS
            assert (
                value(m, "gateway_upstream_attempts_total", model="m", outcome="ok") == N_REQUESTS
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.strip()]
    requests = [line for line in lines if line.get("event") == "request"]
    assert len([r for r in requests if r["path"] == "/v1/chat/completions"]) == N_REQUESTS
    assert len({r["request_id"] for r in requests}) == len(requests)
    assert len({r["pid"] for r in requests}) == 2  # both workers served (and were summed)


N_REQUESTS = 24


async def _until_workers_log(stderr, proc: subprocess.Popen, n: int) -> None:
    """Both workers listen once each has logged that it runs (JSON lines carry the pid)."""
    deadline = time.monotonic() + 30
    while True:
        pids = set()
        for line in stderr.read_text().splitlines():
            if "serving on" in line:
                pids.add(json.loads(line)["pid"])
        if len(pids - {proc.pid}) >= n:
            return
        assert time.monotonic() < deadline, "the workers did not start"
        await asyncio.sleep(0.1)


async def _until_up(s: aiohttp.ClientSession, url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with s.get(url + "/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert proc.poll() is None, "the gateway exited"
        assert time.monotonic() < deadline, "the gateway did not start"
        await asyncio.sleep(0.1)


async def test_every_upstream_attempt_outcome_is_counted(fake_upstream, make_gateway, oai):
    """timeout, unreachable, no_key, 4xx and 5xx each land under their own outcome label."""
    slow, bad, broken = await fake_upstream(), await fake_upstream(), await fake_upstream()
    slow.push(Reply(json=completion(), delay=2.0))
    bad.push(Reply(status=400, json={"error": {"message": "no", "type": "invalid_request_error"}}))
    broken.push(Reply(status=500, json={}))
    dead = {"id": "dead", "base_url": "http://127.0.0.1:9/v1"}  # nothing listens on port 9
    gw = await make_gateway(
        {
            "models": [
                model("slow", slow, timeout=0.3),
                dead,
                model("nokey", bad, api_key=""),
                model("bad", bad),
                model("broken", broken),
            ]
        }
    )
    client = oai(gw).with_options(max_retries=0)
    for name in ("slow", "dead", "nokey", "bad", "broken"):
        with pytest.raises(openai.APIError):
            await client.chat.completions.create(model=name, messages=MESSAGES)
    m = await scrape(gw.url)
    att = "gateway_upstream_attempts_total"
    assert value(m, att, model="slow", outcome="timeout") == 1
    assert value(m, att, model="dead", outcome="unreachable") == 1
    assert value(m, att, model="nokey", outcome="no_key") == 1
    assert value(m, att, model="bad", outcome="4xx") == 1
    assert value(m, att, model="broken", outcome="5xx") == 1


def test_log_level_after_the_subcommand_filters_lines(tmp_path):
    """``serve --log-level error`` keeps the start-up warnings out; ``info`` lets them in."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "models:\n  - {id: m, base_url: 'http://127.0.0.1:11434', api_key: ''}\n"  # warns
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            input="",
            check=False,
        )
        return done.stderr

    # a port that is taken makes serve stop right after its start-up warnings
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        quiet = run("--port", port, "--log-level", "error")
        loud = run("--port", port, "--log-level", "info")
    assert "cannot listen" in quiet and "cannot listen" in loud
    assert "api_key is empty" not in quiet
    assert "api_key is empty" in loud
