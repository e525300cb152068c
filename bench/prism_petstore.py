"""Every Petstore 2.0 and 3.0 operation through the gateway against Stoplight Prism 5 --errors.

    npm install --prefix bench/.cache/prism @stoplight/prism-cli@5
    python bench/prism_petstore.py

For each document (``tests/fixtures/openapi/readme/{2.0,3.0}/petstore.json``, from
``@readme/oas-examples``) Prism validates every request the gateway sends (parameters,
body, security) and answers 401 for a security violation, 422 for another request
validation error. Each operation is called once with small valid arguments, twice over:
with ``credentials`` for both of the document's schemes, and with one toolset ``auth``
(an api key header, or a bearer token, on every call), which is what the gateway could do
before.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from schema_example import example

from gateway.configload import build_config
from gateway.state import Snapshot
from gateway.toolexec import ToolExecutor
from gateway.tools import load_tools
from gateway.upstream import new_session

HERE = Path(__file__).parent
PRISM = HERE / ".cache" / "prism" / "node_modules" / ".bin" / "prism"
SPECS = HERE.parent / "tests" / "fixtures" / "openapi" / "readme"
CREDENTIALS = {"api_key": "bench-api-key", "petstore_auth": "bench-oauth-token"}
AUTHS = {
    "auth (api key header)": {"type": "header", "name": "api_key", "value": "bench-api-key"},
    "auth (bearer)": {"type": "bearer", "token": "bench-oauth-token"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LOG: list[str] = []  # Prism's output lines


async def start_prism(spec: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(PRISM),
        "mock",
        "--errors",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        str(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    while True:  # Prism prints "Prism is listening" once ready
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError("prism exited")
        if b"listening" in line:
            break
    asyncio.get_running_loop().create_task(_drain(proc))
    return proc, f"http://127.0.0.1:{port}"


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        LOG.append(line.decode(errors="replace").strip())


async def run_all(spec: Path, url: str, **toolset: Any) -> Counter[str]:
    raw = {"tools": [{"name": "pet", "spec": str(spec), "base_url": url, **toolset}]}
    config = build_config(raw, "bench", HERE)
    tools = await load_tools(config)
    snap = Snapshot.build(config, tools)
    outcome: Counter[str] = Counter()
    async with new_session() as session:
        ex = ToolExecutor(
            session, snap.toolsets, 65536, redactor=snap.redactor, credentials=snap.credentials
        )
        for tool in tools.tools.values():
            seen = len(LOG)
            result = await ex.run(tool, json.dumps(example(tool.parameters)))
            await asyncio.sleep(0.5)  # Prism logs the violations just after answering
            violations = [
                line.split("Violation: ", 1)[1] for line in LOG[seen:] if "Violation: " in line
            ]
            if result.status == 401 and "Invalid security scheme" in result.content:
                violations.append("Invalid security scheme used (the 401 answer)")
            kind = classify(sorted(set(violations)))
            outcome[kind] += 1
            if violations:
                text = "; ".join(sorted(set(violations)))
                print(f"    {tool.operation.label} (HTTP {result.status}): {text}")
    return outcome


def classify(violations: list[str]) -> str:
    """Prism's verdict on the request: its validation violations, security or other."""
    if not violations:
        return "passed validation"
    if any("security" in v.lower() for v in violations):
        return "security violation"
    return "other violation"


async def main() -> int:
    if not PRISM.exists():
        print(f"Prism is not installed at {PRISM}; see this file's docstring")
        return 1
    for version in ("2.0", "3.0"):
        spec = SPECS / version / "petstore.json"
        proc, url = await start_prism(spec)
        try:
            variants = [("credentials", {"credentials": CREDENTIALS})]
            variants += [(label, {"auth": auth}) for label, auth in AUTHS.items()]
            for label, toolset in variants:
                print(f"Petstore {version}, {label}:")
                outcome = await run_all(spec, url, **toolset)
                print(f"  {sum(outcome.values())} operations: {dict(outcome)}")
        finally:
            proc.terminate()
            await proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
