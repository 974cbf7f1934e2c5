"""OpenTelemetry: one trace per turn across gateway → Kafka → worker → tool executor.

Trace context travels in Kafka headers (W3C ``traceparent``/``tracestate``). Spans are
recorded and exported over OTLP/HTTP when ``A0_OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
without it no span is recorded (OpenTelemetry's no-op provider), which costs nothing
per request, and a context that arrives in a request or a record is still passed on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from services.common.settings import Settings

tracer = trace.get_tracer("a0")


def now_ms() -> int:
    return int(time.time() * 1000)


def setup_tracing(settings: Settings, service_name: str) -> None:
    if not settings.telemetry.exporter_otlp_endpoint:
        return  # nothing would receive the spans: keep the no-op provider
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": service_name, "service.namespace": settings.telemetry.service_namespace}
        )
    )
    endpoint = settings.telemetry.exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)


def kafka_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(key, value.encode()) for key, value in carrier.items()]


def context_from_headers(headers: Any) -> Any:
    carrier = {key: value.decode(errors="replace") for key, value in (headers or ()) if value is not None}
    return propagate.extract(carrier)


@contextmanager
def consume_span(name: str, record: Any, envelope: Any) -> Iterator[None]:
    with tracer.start_as_current_span(
        name,
        context=context_from_headers(record.headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "a0.conversation_id": envelope.conversation_id,
            "a0.turn_id": envelope.turn_id,
        },
    ):
        yield
