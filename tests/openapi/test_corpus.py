"""Every vendored real-world document converts, and every function it yields is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_convert import assert_valid_function

from gateway.configload import build_config
from gateway.tools import load_tools

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "openapi"
DOCUMENTS = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".json", ".yaml"))


def test_corpus_is_big_enough():
    assert len(DOCUMENTS) >= 80
    assert len(list((CORPUS / "directory").glob("*.json"))) >= 30


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(CORPUS)))
async def test_document_converts(path):
    config = build_config(
        {
            "tools": [{"name": "t", "spec": str(path)}],
            "models": [{"id": "m", "base_url": "http://x", "tools": ["t"]}],
        },
        "corpus",
        path.parent,
    )
    tools = await load_tools(config)
    report = tools.reports[0]
    assert report.converted + len(report.skipped) > 0 or "webhooks" in path.name
    names = [t.name for t in tools.for_model("m")]
    assert len(names) == len(set(names))
    for tool in tools.tools.values():
        assert_valid_function(tool.openai()["function"])
        assert tool.description
    for skip in report.skipped:  # skipped only for a reason we state
        assert skip.reason and skip.method and skip.path
