"""OpenTelemetry traces: a span per API request, carried into the workflow and its activities.

The API opens a server span per request (`RequestSpans`, continuing a caller's W3C
`traceparent` when it sends one); temporalio's TracingInterceptor on the Temporal client
writes that context into the workflow's start headers, and the same interceptor on the
worker (a worker takes its client's interceptors) opens the workflow's and each activity's
spans under it. One trace therefore runs API request -> workflow -> activity.

Off unless configured (schemas/settings.py): SLUICE_TRACING=true writes each finished span
as one JSON log line (no collector needed); SLUICE_OTLP_ENDPOINT sends them over OTLP/HTTP
instead (docs/observability.md).
"""

from __future__ import annotations

import structlog
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode, format_span_id, format_trace_id
from sluice.schemas.settings import Settings
from temporalio.contrib.opentelemetry import TracingInterceptor

TRACER_NAME = "sluice"
log = structlog.get_logger("sluice.trace")


class LogSpanExporter(SpanExporter):
    """The in-process exporter: every finished span as one structlog line ("span")."""

    def export(self, spans) -> SpanExportResult:
        for s in spans:
            log.info(
                "span",
                span=s.name,
                trace_id=format_trace_id(s.context.trace_id),
                span_id=format_span_id(s.context.span_id),
                parent_id=format_span_id(s.parent.span_id) if s.parent else None,
                duration_ms=round((s.end_time - s.start_time) / 1e6, 3),
                status=s.status.status_code.name,
            )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def tracer_provider(settings: Settings, service: str, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """The provider the settings ask for, or None when tracing is off. `exporter` (tests) is used
    synchronously, whatever the settings say."""
    if exporter is not None:
        processor = SimpleSpanProcessor(exporter)
    elif settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
    elif settings.tracing:
        processor = BatchSpanProcessor(LogSpanExporter())
    else:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor)
    return provider


def setup_tracing(settings: Settings, service: str) -> trace.Tracer | None:
    """For a process's entry point: its provider becomes the global one (flushed at exit); its tracer."""
    provider = tracer_provider(settings, service)
    if provider is None:
        return None
    trace.set_tracer_provider(provider)
    return provider.get_tracer(TRACER_NAME)


def temporal_interceptors(tracer: trace.Tracer | None) -> list:
    """The Temporal client's interceptors: with a tracer, temporalio's, which the worker inherits."""
    return [TracingInterceptor(tracer)] if tracer is not None else []


class RequestSpans:
    """Pure ASGI middleware: one SERVER span per HTTP request, named by its route template
    ("POST /campaigns"; never the raw path), current while the request runs."""

    def __init__(self, app, *, tracer: trace.Tracer):
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            f"{method} (unmatched)", context=propagate.extract(carrier), kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:  # fmt: skip
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
