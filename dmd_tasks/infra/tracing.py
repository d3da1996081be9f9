"""OpenTelemetry tracing: one trace follows a notification from the stream record to its receipt.

- Celery: opentelemetry-instrumentation-celery, set up in each worker process after the
  fork (``worker_process_init``); it carries the context in the task message headers,
  including those the bridges publish in batches (they fire the same publish signals).
- Bridges: a span per routed record; a record whose item carries a ``traceparent``
  continues that trace.
- Across the provider: the sender stores its ``traceparent`` on the notification when it
  marks it sent; the receipt, applied later by another process, continues that trace.
- The API: a span per GraphQL request.

Off by default, and then free: set ``DMD_OTLP_ENDPOINT`` (OTLP over HTTP, e.g.
http://collector:4318) to export, with service name ``DMD_OTEL_SERVICE_NAME`` (default
``dmd``). Without it Celery is not instrumented and every span is a non-recording one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject

from dmd_tasks.infra.settings import Settings

_configured = False


def setup(settings: Settings, process: str) -> None:
    """Export spans over OTLP and instrument Celery, when configured. Safe to call twice."""
    global _configured
    if _configured:
        return
    _configured = True
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.otel_service_name, "service.instance.id": process})
        )
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{settings.otlp_endpoint.rstrip('/')}/v1/traces"))
        )
        trace.set_tracer_provider(provider)
        # Celery's spans only when something receives them: without an exporter every task would
        # still pay for creating, attaching and propagating spans nobody reads
        instrument_celery()


def instrument_celery(tracer_provider: Any = None) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracer_provider)


def enabled() -> bool:
    """True once a real tracer provider is installed (an exporter, or a test's in-memory one)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def tracer() -> trace.Tracer:
    return trace.get_tracer("dmd")


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, to store beside the data it produced."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def continued(name: str, traceparent: str | None, **attributes: Any) -> Iterator[trace.Span]:
    """A span that continues the trace of ``traceparent`` (or the current one when None)."""
    parent = extract({"traceparent": traceparent}) if traceparent else None
    token = otel_context.attach(parent) if parent is not None else None
    try:
        with tracer().start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        if token is not None:
            otel_context.detach(token)
