"""The benchmark: `python bench/run.py` (see the README's "Performance" section).

Starts a fake upstream, a tool server, the floor proxy and the gateway on 127.0.0.1, drives
them with wrk (installed with apt-get if missing) and a small aiohttp client, and prints a
markdown table, also written to bench/results/latest.md. Every scenario measures the direct
path, the floor and the gateway in the same run, interleaved, and reports ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PY = sys.executable
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early: {proc.args}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


class Servers:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.upstream = self.start([PY, str(BENCH / "upstream.py")])
        self.floor = self.start([PY, str(BENCH / "floor.py")], self.upstream)
        self.config = self.write_config()
        self.gateway, self.gateway_proc = self.start_gateway(1)

    def start(self, cmd: list[str], *extra: str) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [*cmd, str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(proc)
        wait_port(port, proc)
        return f"http://127.0.0.1:{port}"

    def start_gateway(
        self,
        workers: int,
        config: Path | None = None,
        level: str = "warning",
        stderr: Path | None = None,
    ) -> tuple[str, subprocess.Popen]:
        port = free_port()
        err = stderr.open("ab") if stderr is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            [
                PY,
                "-m",
                "gateway",
                "--log-level",
                level,
                "serve",
                "--config",
                str(config or self.config),
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=ROOT,
        )
        if stderr is not None:
            err.close()  # the child has its own copy
        self.procs.append(proc)
        wait_port(port, proc)
        return f"http://127.0.0.1:{port}", proc

    def write_config(self) -> Path:
        spec = {
            "openapi": "3.0.3",
            "info": {"title": "bench", "version": "1"},
            "paths": {
                "/weather": {
                    "get": {
                        "operationId": "getWeather",
                        "parameters": [
                            {
                                "name": "location",
                                "in": "query",
                                "required": True,
                                "schema": {"type": "string"},
                            }
                        ],
                    }
                }
            },
        }
        (self.workdir / "tools.json").write_text(json.dumps(spec))
        config = {
            "models": [
                {
                    "id": "bench",
                    "base_url": self.upstream + "/v1",
                    "api_key": "bench",
                    "upstream_model": "up-model",
                },
                *self.bad_models(),
                {
                    "id": "bench-tools",
                    "base_url": self.upstream + "/v1",
                    "api_key": "bench",
                    "upstream_model": "up-model",
                    "tools": ["weather"],
                },
            ],
            "tools": [{"name": "weather", "spec": "tools.json", "base_url": self.upstream}],
        }
        path = self.workdir / "gateway.yaml"
        path.write_text(json.dumps(config))
        return path

    def bad_models(self) -> list[dict]:
        """Models whose upstream misbehaves (scenario 7), with the default limits."""
        models = []
        for kind in ("huge", "bomb", "endless", "endless-line"):
            entry = {
                "id": f"bad-{kind}",
                "base_url": f"{self.upstream}/bad/{kind}/v1",
                "request_timeout": 5,
            }
            if kind == "endless-line":  # parsed by the tool loop, not relayed
                entry["tools"] = ["weather"]
            models.append(entry)
        return models

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- wrk -----------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print(
        "wrk not found: installing Debian's package with apt-get (needs root) ...", file=sys.stderr
    )
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"],
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed: install it (apt-get install wrk, brew install wrk)")
    return found


def wrk(
    url: str, body: dict, conns: int, seconds: float, workdir: Path, limit: int | None = None
) -> dict:
    body_path = workdir / f"body-{abs(hash(json.dumps(body, sort_keys=True)))}.json"
    body_path.write_text(json.dumps(body))
    script = workdir / "post.lua"
    lua = (
        f'wrk.method = "POST"\nwrk.body = io.open("{body_path}"):read("*a")\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer bench"\n'
    )
    flag = workdir / "wrk-limit-reached"
    flag.unlink(missing_ok=True)
    if limit:
        # wrk sleeps out its whole -d even when its thread stops: the script drops a file
        # at the limit, and SIGINT (which makes wrk print its report at once) ends it
        lua += (
            f"local n = 0\nfunction response(status, headers, body)\n  n = n + 1\n"
            f'  if n == {limit} then io.open("{flag}", "w"):close(); wrk.thread:stop() end\n'
            "end\n"
        )
    script.write_text(lua)
    proc = subprocess.Popen(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url + "/v1/chat/completions",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if limit:
        while proc.poll() is None and not flag.exists():
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {err.strip()}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {
        p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\b", out, re.M)
    }
    return {
        "rps": rps,
        "p50": lat.get("50"),
        "p99": lat.get("99"),
        "requests": total,
        "errors": int(errors.group(1)) if errors else 0,
    }


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# --- scenarios -----------------------------------------------------------------------------


def interleaved(targets: dict[str, str], run, reps: int) -> dict[str, dict]:
    """Run each target in turn, `reps` times; keep the median of every figure."""
    samples: dict[str, list[dict]] = {name: [] for name in targets}
    for _ in range(reps):
        for name, url in targets.items():
            samples[name].append(run(url))
    return {
        name: {
            k: statistics.median(s[k] for s in runs if s[k] is not None)
            for k in runs[0]
            if k != "errors"
        }
        | {"errors": sum(s["errors"] for s in runs)}
        for name, runs in samples.items()
    }


def tools_body(n_tools: int = 20, size: int = 30_000) -> dict:
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"client_tool_{i}",
                "description": "A client-side tool " * 4,
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "what to look up"},
                        "limit": {"type": "integer"},
                    },
                    "required": ["query"],
                },
            },
        }
        for i in range(n_tools)
    ]
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    while len(json.dumps(messages)) + len(json.dumps(tools)) < size:
        messages.append({"role": "user", "content": "Tell me about the history of " * 8})
        messages.append({"role": "assistant", "content": "Here is a long answer. " * 12})
    messages.append({"role": "user", "content": "And now?"})
    return {"model": "bench", "messages": messages, "tools": tools}


async def ttfb(urls: dict[str, str], n: int) -> dict[str, dict]:
    """Time to first byte of a streamed reply, sequentially, interleaved across targets."""
    times: dict[str, list[float]] = {k: [] for k in urls}
    body = {"model": "bench", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as s:
        for i in range(n + 20):
            for name, url in urls.items():
                t0 = time.perf_counter()
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    await r.content.readany()
                    first = time.perf_counter() - t0
                    await r.read()
                if i >= 20:  # warm-up
                    times[name].append(first * 1000)
    return {k: {"p50": _pct(v, 50), "p99": _pct(v, 99)} for k, v in times.items()}


def _pct(values: list[float], p: int) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


async def tool_round(gateway: str, upstream: str, n: int) -> dict:
    """The gateway's own time for one tool round: total minus upstream and tool time."""
    gw_body = {"model": "bench-tools", "messages": MESSAGES}
    first = {
        "model": "up-model",
        "messages": MESSAGES,
        "tools": [
            {
                "type": "function",
                "function": {"name": "getWeather", "parameters": {"type": "object"}},
            }
        ],
    }
    second = {"model": "up-model", "messages": [*MESSAGES, {"role": "tool", "content": "x"}]}
    parts: dict[str, list[float]] = {"gateway": [], "up1": [], "up2": [], "tool": []}
    async with aiohttp.ClientSession() as s:

        async def timed(method: str, url: str, body: dict | None = None) -> float:
            t0 = time.perf_counter()
            async with s.request(method, url, json=body) as r:
                await r.read()
                assert r.status == 200, await r.text()
            return (time.perf_counter() - t0) * 1000

        for i in range(n + 20):
            g = await timed("POST", gateway + "/v1/chat/completions", gw_body)
            a = await timed("POST", upstream + "/v1/chat/completions", first)
            b = await timed("POST", upstream + "/v1/chat/completions", second)
            t = await timed("GET", upstream + "/weather?location=Paris")
            if i >= 20:
                for k, v in zip(parts, (g, a, b, t), strict=True):
                    v and parts[k].append(v)
    med = {k: statistics.median(v) for k, v in parts.items()}
    return {**med, "own": med["gateway"] - med["up1"] - med["up2"] - med["tool"]}


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    return {"rss": rss, "peak": peak, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def open_streams(url: str, n: int, hold: float, pid: int) -> dict:
    body = {"model": "bench", "messages": MESSAGES, "stream": True, "x_hold": hold}
    during: dict = {}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one() -> None:
            async with s.post(url + "/v1/chat/completions", json=body) as r:
                await r.content.readany()
                opened.append(1)
                await r.read()

        opened: list[int] = []
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        while len(opened) < n and not all(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        during = proc_stats(pid)
        await asyncio.gather(*tasks)
    return {"opened": len(opened), **during}


def startup_times(workdir: Path) -> dict:
    code = (
        "import time,asyncio;t=time.perf_counter();from gateway.configload import load_config;"
        "from gateway.tools import load_tools;from gateway.app import create_app;"
        "c=load_config('config/gateway.yaml');ts=asyncio.run(load_tools(c));create_app(c,ts);"
        "print(time.perf_counter()-t)"
    )
    example = float(
        subprocess.run(
            [PY, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )
    github = github_spec(workdir)
    gh = None
    if github:
        code = (
            "import time,asyncio;from pathlib import Path;from gateway.configload import "
            "build_config;from gateway.tools import load_tools;"
            f"c=build_config({{'tools':[{{'name':'gh','spec':{str(github)!r}}}]}},'x',Path('.'));"
            "t=time.perf_counter();ts=asyncio.run(load_tools(c));"
            "print(time.perf_counter()-t, len(ts.tools))"
        )
        times = []
        for _ in range(3):
            out = subprocess.run(
                [PY, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.split()
            times.append(float(out[0]))
        gh = (statistics.median(times), int(out[1]))
    return {"example": example, "github": gh}


def github_spec(workdir: Path) -> Path | None:
    cache = BENCH / ".cache"
    target = cache / "package" / "generated" / "api.github.com.json"
    if target.exists():
        return target
    if not shutil.which("npm"):
        print("npm not found: skipping the GitHub conversion timing", file=sys.stderr)
        return None
    cache.mkdir(exist_ok=True)
    out = subprocess.run(
        ["npm", "pack", "@octokit/openapi", "--silent"], cwd=cache, capture_output=True, text=True
    )
    tgz = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else ""
    if not tgz:
        print("could not fetch @octokit/openapi: skipping the GitHub timing", file=sys.stderr)
        return None
    subprocess.run(["tar", "xzf", tgz], cwd=cache, check=True)
    return target if target.exists() else None


# --- report --------------------------------------------------------------------------------


def fmt(v: float | None, nd: int = 2) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5, help="length of each wrk run")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--quick", action="store_true", help="2 s runs, 1 repetition")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (1a,1b,1c,2a,2b,3a,3b,4,5,6,7,8,9); default all",
    )
    args = ap.parse_args()
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.quick:
        args.seconds, args.reps = 2, 1
    ensure_wrk()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    servers = Servers(workdir)
    lines = Report()
    try:
        run_all(servers, args, workdir, lines)
    finally:
        servers.stop()
    if args.only:  # a partial run is printed, never taken for the full report
        return
    report = "\n".join(lines) + "\n"
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / "latest.md").write_text(report)


class Report(list):
    """Lines of the report, printed as they come."""

    def append(self, line: str) -> None:
        super().append(line)
        print(line, flush=True)

    def extend(self, lines) -> None:
        for line in lines:
            self.append(line)

    def __iadd__(self, lines):
        self.extend(lines)
        return self


def run_all(servers: Servers, args: argparse.Namespace, workdir: Path, lines: Report) -> None:
    targets = {"direct": servers.upstream, "floor": servers.floor, "gateway": servers.gateway}
    small = {"model": "bench", "messages": MESSAGES}
    stream = {**small, "stream": True}
    sec, reps = args.seconds, args.reps
    out = lines
    out.extend(
        [
            f"# gateway bench ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
            f"python {sys.version.split()[0]}, {sec:g} s runs × {reps}, medians)",
            "",
        ]
    )

    def table(title: str, res: dict[str, dict], unit: str = "req/s") -> None:
        out.extend(
            [
                f"## {title}",
                "",
                f"| path | {unit} | p50 ms | p99 ms | errors |",
                "| --- | ---: | ---: | ---: | ---: |",
            ]
        )
        for name, r in res.items():
            out.append(
                f"| {name} | {fmt(r['rps'], 0)} | {fmt(r['p50'])} | {fmt(r['p99'])} | "
                f"{r['errors']} |"
            )
        g, f, d = res["gateway"], res["floor"], res["direct"]
        out.extend(
            [
                "",
                f"gateway/direct throughput {g['rps'] / d['rps']:.2f}, "
                f"gateway/floor throughput {g['rps'] / f['rps']:.2f}; added p50 "
                f"{g['p50'] - d['p50']:+.2f} ms, added p99 {g['p99'] - d['p99']:+.2f} ms "
                f"(floor: {f['p50'] - d['p50']:+.2f} / {f['p99'] - d['p99']:+.2f})",
                "",
            ]
        )

    big = tools_body()
    big_kb = len(json.dumps(big)) // 1000

    def load(title: str, body: dict, conns: int) -> Callable[[], None]:
        return lambda: table(
            title, interleaved(targets, lambda u: wrk(u, body, conns, sec, workdir), reps)
        )

    def streams() -> None:
        res = interleaved(targets, lambda u: wrk(u, stream, 16, sec, workdir), reps)
        table("2a. stream of 100 chunks, concurrency 16", res)
        out.append("chunks/s: " + ", ".join(f"{k} {v['rps'] * 100:,.0f}" for k, v in res.items()))
        out.append("")

    scenarios: dict[str, Callable[[], object]] = {
        "1a": load("1a. non-stream, concurrency 1 (added latency)", small, 1),
        "1b": load("1b. non-stream, concurrency 32 (throughput)", small, 32),
        "2a": streams,
        "2b": lambda: out.extend(first_byte(targets, reps)),
        "3a": load(f"3a. 20 client tools + long history ({big_kb} KB body), concurrency 1", big, 1),
        "3b": load("3b. the same, concurrency 32", big, 32),
        "4": lambda: out.extend(tool_round_report(servers, reps)),
        "5": lambda: out.extend(memory(servers, workdir)),
        "1c": lambda: out.extend(workers(servers, small, sec, reps, workdir)),
        "6": lambda: out.extend(startup_report(workdir)),
        "7": lambda: out.extend(robustness(servers)),
        "8": lambda: out.extend(observability(servers, small, sec, reps, workdir)),
        "9": lambda: out.extend(reload_report(workdir)),
    }
    unknown = args.only - set(scenarios)
    if unknown:
        raise SystemExit(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
    for url in targets.values():  # warm-up
        wrk(url, small, 8, 1, workdir)
    for name, run in scenarios.items():
        if not args.only or name in args.only:
            run()


def first_byte(targets: dict[str, str], reps: int) -> list[str]:
    t = asyncio.run(ttfb(targets, 100 * reps))
    out = []
    out.extend(
        [
            "## 2b. stream: time to first byte, concurrency 1",
            "",
            "| path | p50 ms | p99 ms |",
            "| --- | ---: | ---: |",
        ]
    )
    out += [f"| {k} | {v['p50']:.2f} | {v['p99']:.2f} |" for k, v in t.items()]
    out.extend(
        [
            "",
            f"gateway adds {t['gateway']['p50'] - t['direct']['p50']:+.2f} ms p50 to the "
            f"first byte (floor {t['floor']['p50'] - t['direct']['p50']:+.2f} ms)",
            "",
        ]
    )
    return out


def tool_round_report(servers: Servers, reps: int) -> list[str]:
    r = asyncio.run(tool_round(servers.gateway, servers.upstream, 200 * reps))
    return [
        "## 4. one gateway tool round (upstream calls a tool, then answers)",
        "",
        "| request through the gateway | upstream round 1 | upstream round 2 | tool | "
        "gateway's own time |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {r['gateway']:.2f} ms | {r['up1']:.2f} ms | {r['up2']:.2f} ms | "
        f"{r['tool']:.2f} ms | **{r['own']:.2f} ms** |",
        "",
    ]


def startup_report(workdir: Path) -> list[str]:
    s = startup_times(workdir)
    gh = (
        f"{s['github'][0]:.2f} s for {s['github'][1]} functions"
        if s["github"]
        else "skipped (no npm)"
    )
    return [
        "## 6. start-up",
        "",
        f"- example config loaded, tools converted, app built: {s['example'] * 1000:.0f} ms",
        f"- GitHub's REST description (@octokit/openapi) loaded and converted: {gh}",
        "",
    ]


def memory(servers: Servers, workdir: Path) -> list[str]:
    pid = servers.gateway_proc.pid
    small = {"model": "bench", "messages": MESSAGES}
    before = proc_stats(pid)
    wrk(servers.gateway, small, 32, 120, workdir, limit=5000)
    at_5k = proc_stats(pid)
    wrk(servers.gateway, small, 32, 600, workdir, limit=45000)
    at_50k = proc_stats(pid)
    streams = asyncio.run(open_streams(servers.gateway, 1000, 3.0, pid))
    time.sleep(1)
    after = proc_stats(pid)
    streams2 = asyncio.run(open_streams(servers.gateway, 1000, 3.0, pid))
    waited = time.monotonic()
    idle = proc_stats(pid)
    while idle["fds"] > before["fds"] + 10 and time.monotonic() - waited < 60:
        time.sleep(1)  # idle pooled upstream connections expire after 15-30 s
        idle = proc_stats(pid)
    waited = time.monotonic() - waited
    growth = (at_50k["rss"] / at_5k["rss"] - 1) * 100
    return [
        "## 5. memory and file descriptors (gateway process)",
        "",
        "| moment | RSS MiB | peak RSS MiB | open fds |",
        "| --- | ---: | ---: | ---: |",
        f"| idle, after warm-up | {before['rss']:.1f} | {before['peak']:.1f} | {before['fds']} |",
        f"| after 5,000 requests | {at_5k['rss']:.1f} | {at_5k['peak']:.1f} | {at_5k['fds']} |",
        f"| after 50,000 requests | {at_50k['rss']:.1f} | {at_50k['peak']:.1f} | {at_50k['fds']} |",
        f"| {streams['opened']:,} streams open at once | {streams['rss']:.1f} | "
        f"{streams['peak']:.1f} | {streams['fds']} |",
        f"| after they closed | {after['rss']:.1f} | {after['peak']:.1f} | {after['fds']} |",
        f"| 1,000 streams again, at once | {streams2['rss']:.1f} | {streams2['peak']:.1f} | "
        f"{streams2['fds']} |",
        f"| {waited:.0f} s later (idle upstream connections expired) | {idle['rss']:.1f} | "
        f"{idle['peak']:.1f} | {idle['fds']} |",
        "",
        f"RSS after 50,000 vs after 5,000 requests: {growth:+.1f}%",
        "",
    ]


BAD = {
    "huge": ("1 GiB body", False),
    "bomb": ("gzip bomb (1 MB inflating to 1 GiB)", False),
    "endless": ("endless stream, relayed", True),
    "endless-line": ("endless SSE line, tool loop", True),
}


async def misbehave(url: str, pid: int, kind: str, parallel: int) -> dict:
    """``parallel`` requests to a misbehaving upstream; peak RSS and /healthz while they run."""
    body = {"model": f"bad-{kind}", "messages": MESSAGES, "stream": BAD[kind][1]}
    peak, health, statuses = proc_stats(pid)["rss"], [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:

        async def one() -> None:
            async with s.post(url + "/v1/chat/completions", json=body) as r:
                size = 0
                async for chunk in r.content.iter_any():
                    size += len(chunk)
                statuses.append(
                    f"{r.status}" + (f" ({size >> 20} MiB relayed)" if size > 1 << 20 else "")
                )

        tasks = [asyncio.create_task(one()) for _ in range(parallel)]
        t0 = time.monotonic()
        while not all(t.done() for t in tasks):
            peak = max(peak, proc_stats(pid)["rss"])
            h0 = time.perf_counter()
            async with s.get(url + "/healthz") as r:
                await r.read()
            health.append((time.perf_counter() - h0) * 1000)
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
    return {
        "peak": peak,
        "seconds": time.monotonic() - t0,
        "health_max": max(health, default=0.0),
        "health_p50": statistics.median(health) if health else 0.0,
        "statuses": ", ".join(sorted(set(statuses))),
    }


def robustness(servers: Servers, parallel: int = 3) -> list[str]:
    """Each misbehaving upstream against a fresh gateway process, so each peak is its own."""
    rows = []
    for kind, (label, _) in BAD.items():
        url, proc = servers.start_gateway(1)
        wrk(url, {"model": "bench", "messages": MESSAGES}, 8, 1, servers.workdir)  # warm up
        idle = proc_stats(proc.pid)
        r = asyncio.run(misbehave(url, proc.pid, kind, parallel))
        peak = proc_stats(proc.pid)["peak"]  # VmHWM: the process's peak, sampled or not
        proc.terminate()
        proc.wait(10)
        rows.append(
            f"| {label} | {r['statuses']} | {r['seconds']:.1f} s | {idle['rss']:.0f} MiB | "
            f"{peak:.0f} MiB | {r['health_p50']:.1f} / {r['health_max']:.0f} ms |"
        )
    return [
        f"## 7. robustness: {parallel} requests at once to a misbehaving upstream",
        "",
        "A fresh gateway process per row; default limits (max_response_bytes 32 MiB), "
        "request_timeout 5 s for these models. Before these limits: a 1 GiB body took the "
        "process to 2,145 MiB, three gzip bombs to 6,218 MiB.",
        "",
        "| upstream sends | client gets | took | idle RSS | peak RSS | /healthz p50 / max |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def observability(servers: Servers, body: dict, sec: float, reps: int, workdir: Path) -> list[str]:
    """Scenario 1 against the same build with its access line and metrics on, then off.

    Besides wrk's throughput (noisy on a shared machine), the gateway's own CPU time per
    request is measured: on a core of its own, its throughput is the inverse of that.
    """
    config = json.loads(servers.config.read_text())
    quiet = workdir / "quiet.yaml"
    quiet.write_text(
        json.dumps({**config, "logging": {"access": False}, "metrics": {"enabled": False}})
    )
    log_file = workdir / "access.log"
    on = servers.start_gateway(1, level="info", stderr=log_file)
    off = servers.start_gateway(1, config=quiet, level="info")
    targets = {"logs + metrics on": on, "both off": off}
    for url, _ in targets.values():
        wrk(url, body, 8, 1, workdir)
    lines = ["## 8. cost of the access line and metrics (scenario 1, same build)", ""]
    for conns in (1, 32):
        res = _observed(targets, body, conns, max(reps, 5), workdir)
        a, b = res["logs + metrics on"], res["both off"]
        lines += [
            f"| concurrency {conns} | req/s | p50 ms | p99 ms | gateway CPU µs/request |",
            "| --- | ---: | ---: | ---: | ---: |",
            *[
                f"| {k} | {v['rps']:,.0f} | {v['p50']:.2f} | {v['p99']:.2f} | {v['cpu']:.0f} |"
                for k, v in res.items()
            ],
            "",
            f"on/off: throughput {a['rps'] / b['rps']:.3f}, CPU per request "
            f"{a['cpu'] / b['cpu']:.3f}, so throughput on a core of its own "
            f"{b['cpu'] / a['cpu']:.3f} (the budget: at least 0.95)",
            "",
        ]
    written = sum(1 for _ in log_file.open("rb"))
    lines += [f"({written:,} access lines written to a file by the gateway with logs on)", ""]
    for _, proc in targets.values():
        proc.terminate()
    return lines


def _observed(targets: dict, body: dict, conns: int, reps: int, workdir: Path) -> dict:
    """Interleaved runs of 3,000 requests each; medians of throughput, latency, CPU/request."""
    samples: dict[str, list[dict]] = {name: [] for name in targets}
    for _ in range(reps):
        for name, (url, proc) in targets.items():
            before = cpu_seconds(proc.pid)
            r = wrk(url, body, conns, 120, workdir, limit=3000)
            r["cpu"] = (cpu_seconds(proc.pid) - before) / r["requests"] * 1e6
            samples[name].append(r)
    return {
        name: {k: statistics.median(s[k] for s in runs) for k in ("rps", "p50", "p99", "cpu")}
        for name, runs in samples.items()
    }


def workers(servers: Servers, body: dict, sec: float, reps: int, workdir: Path) -> list[str]:
    url2, proc2 = servers.start_gateway(2)
    wrk(url2, body, 8, 1, workdir)
    res = interleaved(
        {"1 worker": servers.gateway, "2 workers": url2},
        lambda u: wrk(u, body, 32, sec, workdir),
        reps,
    )
    proc2.terminate()
    return [
        "## 1c. throughput with --workers (non-stream, concurrency 32)",
        "",
        "| gateway | req/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {k} | {v['rps']:,.0f} | {v['p50']:.2f} | {v['p99']:.2f} |" for k, v in res.items()],
        "",
        "(wrk, the fake upstream and the gateway share this machine's cores)",
        "",
    ]


def reload_report(workdir: Path) -> list[str]:
    """Scenario 9 (bench/reload.py): SIGHUP to the new config serving, under load."""
    import reload

    return reload.run(workdir)


if __name__ == "__main__":
    main()
