"""Traces: spans per request, upstream round and tool call; traceparent passed on; OTLP out."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from aiohttp import web
from conftest import completion, model, start_app
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_tool_loop import USER, answer, calls
from toolapi import SPEC, ToolAPI

from gateway.observe import OBSERVER
from gateway.tracing import Tracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
async def api():
    server = ToolAPI()
    runner, server.url = await start_app(server.app)
    yield server
    await runner.cleanup()


async def test_spans_for_request_rounds_and_tool_calls_with_genai_attributes(
    fake_upstream, make_gateway, api, tmp_path, oai
):
    up = await fake_upstream()
    (tmp_path / "api.json").write_text(json.dumps(SPEC))
    toolset = {"name": "api", "spec": "api.json", "base_url": api.url}
    m = model("m", up, tools=["api"], upstream_model="up-model")
    gw = await make_gateway({"tools": [toolset], "models": [m]})
    exporter = InMemorySpanExporter()
    gw.app[OBSERVER].tracing = Tracing("gateway-test", exporter, batch=False)
    up.push(calls(("getWeather", {"location": "Paris"})), answer())
    await oai(gw).chat.completions.create(
        model="m", messages=USER, extra_headers={"traceparent": CLIENT_PARENT}
    )
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"chat m", "chat up-model", "execute_tool getWeather"}
    request, tool = spans["chat m"], spans["execute_tool getWeather"]
    rounds = [s for s in exporter.get_finished_spans() if s.name == "chat up-model"]
    assert len(rounds) == 2
    assert format(request.context.trace_id, "032x") == TRACE_ID  # the client's trace
    assert request.parent is not None and request.parent.span_id == 0xB7AD6B7169203331
    for child in [*rounds, tool]:
        assert child.context.trace_id == request.context.trace_id
        assert child.parent.span_id == request.context.span_id
    assert request.attributes["gen_ai.operation.name"] == "chat"
    assert request.attributes["gen_ai.request.model"] == "m"
    assert request.attributes["gen_ai.usage.input_tokens"] == 30
    assert request.attributes["gen_ai.usage.output_tokens"] == 3
    assert request.attributes["http.response.status_code"] == 200
    assert rounds[0].attributes["gen_ai.request.model"] == "up-model"
    assert tool.attributes["gen_ai.tool.name"] == "getWeather"
    assert tool.attributes["gen_ai.tool.call.id"] == "call_0"
    assert request.resource.attributes["service.name"] == "gateway-test"
    # W3C trace context went to the upstream (each round's span) and the tool server
    sent = [r.headers["traceparent"] for r in up.received]
    assert [p.split("-")[2] for p in sent] == [format(s.context.span_id, "016x") for s in rounds]
    assert all(p.split("-")[1] == TRACE_ID for p in sent)
    tool_parent = api.headers[0]["traceparent"]
    assert tool_parent.split("-")[1:3] == [TRACE_ID, format(tool.context.span_id, "016x")]


async def test_a_failed_request_span_says_why(fake_upstream, make_gateway, oai):
    import openai

    up = await fake_upstream()
    gw = await make_gateway({"models": [model("m", up)]})
    exporter = InMemorySpanExporter()
    gw.app[OBSERVER].tracing = Tracing("gateway", exporter, batch=False)
    with pytest.raises(openai.NotFoundError):
        await oai(gw).chat.completions.create(model="nope", messages=USER)
    [span] = exporter.get_finished_spans()
    assert span.attributes["error.type"] == "model_not_found"
    assert span.attributes["http.response.status_code"] == 404
    assert span.status.status_code.name == "ERROR"


async def test_spans_reach_an_otlp_http_receiver(fake_upstream, make_gateway, oai):
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    receiver = web.Application()
    receiver.router.add_post("/v1/traces", traces)
    runner, url = await start_app(receiver)
    try:
        up = await fake_upstream()
        up.default = up.default.__class__(json=completion())
        gw = await make_gateway(
            {
                "models": [model("m", up, upstream_model="up-model")],
                "tracing": {"otlp_endpoint": url, "service_name": "gw-otlp"},
            }
        )
        await oai(gw).chat.completions.create(model="m", messages=USER)
        # the batch exporter posts from its own thread; this loop must keep serving it
        await asyncio.to_thread(gw.app[OBSERVER].tracing.provider.force_flush)
    finally:
        await runner.cleanup()
    spans = [
        (span, rs.resource)
        for message in received
        for rs in message.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    names = sorted(span.name for span, _ in spans)
    assert names == ["chat m", "chat up-model"]
    resource = spans[0][1]
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "gw-otlp"


def test_without_tracing_nothing_of_opentelemetry_is_imported(tmp_path):
    code = (
        "import sys; from pathlib import Path; from gateway.configload import build_config; "
        "from gateway.app import create_app; import gateway.cli; "
        "create_app(build_config({}, 'x', Path('.'))); "
        "print([m for m in sys.modules if m.startswith('opentelemetry')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[]"


def test_the_endpoint_comes_from_the_config_or_the_standard_variables(monkeypatch):
    from gateway.config import TracingConfig
    from gateway.tracing import traces_url

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert traces_url(TracingConfig()) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert traces_url(TracingConfig()) == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom")
    assert traces_url(TracingConfig()) == "http://c:4318/custom"
    configured = TracingConfig(otlp_endpoint="http://mine:4318")
    assert traces_url(configured) == "http://mine:4318/v1/traces"  # the config wins
