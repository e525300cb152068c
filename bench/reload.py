"""Reload under load: SIGHUP to the new config serving, with GitHub's REST description.

`python bench/reload.py [--reloads 3]` (also scenario 9 of `bench/run.py`). The gateway
serves a config whose toolset is GitHub's REST description (@octokit/openapi, fetched with
npm into bench/.cache). Each round opens streams held open across the reload and keeps
non-stream requests going, writes a config with one more model, sends SIGHUP and times
until ``GET /v1/models`` lists the new model; then it checks that every stream ended with
``[DONE]`` and every request got a 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from run import BENCH, PY, ROOT, free_port, github_spec, wait_port

MESSAGES = [{"role": "user", "content": "hi"}]


def write_config(path: Path, upstream: str, spec: Path, extra: int) -> None:
    model = {"base_url": upstream + "/v1", "api_key": "bench", "upstream_model": "up-model"}
    models = [
        {"id": "bench", **model},
        {"id": "bench-gh", **model, "tools": ["gh"]},
        *({"id": f"reload-{i}", **model} for i in range(extra)),
    ]
    tools = [{"name": "gh", "spec": str(spec), "base_url": upstream}]  # every operation
    path.write_text(json.dumps({"models": models, "tools": tools}))


async def until_listed(s: aiohttp.ClientSession, url: str, model_id: str) -> None:
    while True:
        async with s.get(url + "/v1/models") as r:
            if model_id in {m["id"] for m in (await r.json())["data"]}:
                return
        await asyncio.sleep(0.005)


async def until_ready(s: aiohttp.ClientSession, url: str) -> None:
    while True:
        async with s.get(url + "/readyz") as r:
            if r.status == 200:
                return
        await asyncio.sleep(0.05)


async def held_stream(s: aiohttp.ClientSession, url: str, hold: float) -> bool:
    body = {"model": "bench", "messages": MESSAGES, "stream": True, "x_hold": hold}
    async with s.post(url + "/v1/chat/completions", json=body) as r:
        data = await r.read()
    return r.status == 200 and data.endswith(b"data: [DONE]\n\n")


async def requests_until(s: aiohttp.ClientSession, url: str, done: asyncio.Event) -> list:
    """(ok, seconds) of back-to-back non-stream requests until ``done``."""
    body = {"model": "bench", "messages": MESSAGES}
    out = []
    while not done.is_set():
        t = time.perf_counter()
        async with s.post(url + "/v1/chat/completions", json=body) as r:
            await r.read()
        out.append((r.status == 200, time.perf_counter() - t))
    return out


async def one_reload(s, url, proc, config, args, i: int, hold: float) -> dict:
    streams = [asyncio.create_task(held_stream(s, url, hold)) for _ in range(args.streams)]
    done = asyncio.Event()
    load = [asyncio.create_task(requests_until(s, url, done)) for _ in range(args.concurrency)]
    await asyncio.sleep(0.3)  # streams open, requests flowing
    write_config(config, args.upstream, args.spec, i + 1)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGHUP)
    await until_listed(s, url, f"reload-{i}")
    seconds = time.perf_counter() - t0
    done.set()
    results = [r for task in load for r in await task]
    ok_streams = sum(await asyncio.gather(*streams))
    return {
        "seconds": seconds,
        "streams": (ok_streams, len(streams)),
        "requests": (sum(ok for ok, _ in results), len(results)),
        "max_ms": max(t for _, t in results) * 1000,
        "p50_ms": statistics.median(t for _, t in results) * 1000,
    }


async def bench(url: str, proc: subprocess.Popen, config: Path, args) -> list[dict]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await until_ready(s, url)  # the port is bound before the specs are loaded
        write_config(config, args.upstream, args.spec, 1)  # a first reload, to size the holds
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGHUP)
        await until_listed(s, url, "reload-0")
        hold = 2 * (time.perf_counter() - t0) + 1
        return [
            await one_reload(s, url, proc, config, args, i, hold)
            for i in range(1, args.reloads + 1)
        ]


def report(rounds: list[dict], functions: str) -> list[str]:
    secs = [r["seconds"] for r in rounds]
    streams = [r["streams"] for r in rounds]
    reqs = [r["requests"] for r in rounds]
    return [
        "## 9. reload under load (GitHub's REST description as a toolset)",
        "",
        f"- SIGHUP to the new config serving: median {statistics.median(secs):.2f} s "
        f"(min {min(secs):.2f}, max {max(secs):.2f}; {len(secs)} reloads; {functions})",
        f"- streams open across each reload that ended with [DONE]: "
        f"{sum(ok for ok, _ in streams)} of {sum(n for _, n in streams)}",
        f"- non-stream requests during the reloads answered 200: "
        f"{sum(ok for ok, _ in reqs)} of {sum(n for _, n in reqs)}; their p50 "
        f"{statistics.median(r['p50_ms'] for r in rounds):.1f} ms, worst "
        f"{max(r['max_ms'] for r in rounds):.0f} ms (the new config is built in a thread "
        "beside the serving loop)",
        "",
    ]


def run(workdir: Path, reloads: int = 3, streams: int = 20, concurrency: int = 4) -> list[str]:
    spec = github_spec(workdir)
    if spec is None:
        return ["## 9. reload under load", "", "skipped (no npm)", ""]
    procs = []
    try:
        up_port = free_port()
        up = subprocess.Popen([PY, str(BENCH / "upstream.py"), str(up_port)])
        procs.append(up)
        wait_port(up_port, up)
        args = argparse.Namespace(
            reloads=reloads,
            streams=streams,
            concurrency=concurrency,
            upstream=f"http://127.0.0.1:{up_port}",
            spec=spec,
        )
        config = workdir / "reload.json"
        write_config(config, args.upstream, spec, 0)
        port = free_port()
        log = (workdir / "reload-gateway.log").open("w")
        cmd = [PY, "-m", "gateway", "--log-level", "warning", "serve", "--config", str(config)]
        cmd += ["--port", str(port)]
        gw = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
        procs.append(gw)
        wait_port(port, gw, timeout=120)
        rounds = asyncio.run(bench(f"http://127.0.0.1:{port}", gw, config, args))
        return report(rounds, "every operation converted on each reload")
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--streams", type=int, default=20, help="streams held open per reload")
    ap.add_argument("--concurrency", type=int, default=4, help="non-stream request loops")
    a = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-reload-"))
    for line in run(workdir, a.reloads, a.streams, a.concurrency):
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
