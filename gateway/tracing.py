"""OpenTelemetry traces (the optional extra ``gateway[otel]``).

With ``tracing.otlp_endpoint`` (or ``$OTEL_EXPORTER_OTLP_ENDPOINT``) set, each request is a
server span, each upstream round a client span under it and each tool call an
``execute_tool`` span, with OpenTelemetry's GenAI attributes; the W3C ``traceparent`` of
the current span goes to the upstream and to tool servers, and one a client sends is the
request span's parent. Spans are exported over OTLP/HTTP in batches, off the request path.
Without an endpoint this module imports nothing of OpenTelemetry.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from gateway.config import TracingConfig
from gateway.errors import ConfigError
from gateway.facts import Facts

log = logging.getLogger("gateway.tracing")
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
#: endpoint (handler name) -> GenAI operation name
_OPERATIONS = {"chat_completions": "chat", "other_endpoint": "request"}


def from_config(config: TracingConfig) -> Tracing | None:
    """The tracer the config asks for, or None (and no OpenTelemetry import) when off."""
    url = traces_url(config)
    if url is None:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            "tracing",
            [
                "tracing needs OpenTelemetry: pip install 'gateway[otel]' "
                "(or unset tracing.otlp_endpoint and OTEL_EXPORTER_OTLP_ENDPOINT)"
            ],
        ) from None
    return Tracing(config.service_name, OTLPSpanExporter(endpoint=url))


def traces_url(config: TracingConfig) -> str | None:
    """Where spans go: the config's endpoint, else the standard variables (OTLP/HTTP)."""
    if config.otlp_endpoint is None and os.environ.get(TRACES_ENV):
        return os.environ[TRACES_ENV]
    base = config.otlp_endpoint or os.environ.get(ENDPOINT_ENV)
    if not base:
        return None
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class Tracing:
    """A tracer provider of our own (the process-wide one is left alone) and its spans."""

    def __init__(self, service_name: str, exporter: Any, *, batch: bool = True) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("gateway")
        self.propagator = TraceContextTextMapPropagator()

    def shutdown(self) -> None:
        """Export what is left and stop (at app cleanup)."""
        self.provider.shutdown()

    # --- the request span ----------------------------------------------------------------

    def begin(self, facts: Facts, headers: Mapping[str, str]) -> None:
        from opentelemetry import context, trace

        parent = self.propagator.extract(headers) if "traceparent" in headers else None
        span = self.tracer.start_span(
            f"{facts.method} {facts.endpoint}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": facts.method,
                "url.path": facts.path,
                "gateway.request_id": facts.request_id,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        facts.span = (span, token)

    def end(self, facts: Facts) -> None:
        from opentelemetry import context, trace

        span, token = facts.span
        operation = _OPERATIONS.get(facts.endpoint)
        if operation is not None and facts.model is not None:
            span.update_name(f"{operation} {facts.model}")
            span.set_attribute("gen_ai.operation.name", operation)
            span.set_attribute("gen_ai.request.model", facts.model)
        for name, value in (
            ("gen_ai.usage.input_tokens", facts.prompt_tokens),
            ("gen_ai.usage.output_tokens", facts.completion_tokens),
            ("gateway.served_model", facts.served),
            ("gateway.tool_rounds", facts.tool_rounds),
            ("gateway.tool_calls", facts.tool_calls),
            ("error.type", facts.error),
        ):
            if value is not None:
                span.set_attribute(name, value)
        span.set_attribute("http.response.status_code", facts.status)
        if facts.status >= 500 or facts.error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, facts.error))
        span.end()
        context.detach(token)

    # --- child spans ---------------------------------------------------------------------

    @contextlib.contextmanager
    def round(self, model: str, upstream_model: str, host: str) -> Iterator[Any]:
        """One upstream round (its retries and fallbacks included), up to its reply's head."""
        from opentelemetry import trace

        with self.tracer.start_as_current_span(
            f"chat {upstream_model}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": upstream_model,
                "gateway.model": model,
                "server.address": host,
            },
        ) as span:
            yield span

    @contextlib.contextmanager
    def tool(self, function: str, toolset: str, call_id: str) -> Iterator[Any]:
        from opentelemetry import trace

        with self.tracer.start_as_current_span(
            f"execute_tool {function}",
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": function,
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.id": call_id,
                "gateway.toolset": toolset,
            },
        ) as span:
            yield span

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` plus the current span's ``traceparent`` (a copy; the original is shared)."""
        out = dict(headers)
        self.propagator.inject(out)
        return out
