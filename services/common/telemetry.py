"""OpenTelemetry: one trace per turn across gateway → Kafka → worker → tool executor.

Trace context travels in Kafka headers (W3C ``traceparent``). With
``A0_OTEL_EXPORTER_OTLP_ENDPOINT`` set the clients are instrumented and spans exported;
without it nothing is recorded. New traces are rate limited per process (a token
bucket); unsampled work runs under :func:`follow_sampling`, streamed text under
:func:`untraced`. What is traced, what it costs and why: docs/observability.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, suppress_instrumentation
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from services.common.settings import Settings

log = logging.getLogger(__name__)

tracer = trace.get_tracer("a0")

_UNTRACED = otel_context.create_key("a0-untraced")
_enabled = False


def enabled() -> bool:
    """Whether this process records spans (an exporter is configured)."""
    return _enabled


def now_ms() -> int:
    return int(time.time() * 1000)


# New traces a process may start at once: a user's few requests in a row (open a
# conversation, send, follow) are all traced on a quiet stack, whatever the rate.
TRACE_BURST = 8


class TraceBudget:
    """A token bucket of new traces: ``per_s`` a second, bursts up to ``burst`` (at least
    ``per_s``; 0: no limit). Spans with a parent follow their parent's decision and take
    nothing."""

    def __init__(self, per_s: float, clock: Any = time.monotonic, burst: float = 1.0) -> None:
        self.per_s = per_s
        self._clock = clock
        self._capacity = max(1.0, burst, per_s)
        self._tokens = self._capacity
        self._at = clock()

    def take(self) -> bool:
        if self.per_s <= 0:
            return True
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _sampler(budget: TraceBudget) -> Any:
    """Parent-based; a new trace only within the budget; nothing under :func:`untraced`."""
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_ON,
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
    )

    class A0Sampler(Sampler):
        def __init__(self) -> None:
            self._parent_based = ParentBased(ALWAYS_ON)

        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Any] | None = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            current = parent_context if parent_context is not None else otel_context.get_current()
            if otel_context.get_value(_UNTRACED, current):
                return SamplingResult(Decision.DROP)
            parent = trace.get_current_span(current).get_span_context()
            if not parent.is_valid and (kind == SpanKind.CLIENT or not budget.take()):
                return SamplingResult(Decision.DROP)
            return self._parent_based.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return (
                f"A0Sampler(ParentBased(AlwaysOn), {budget.per_s:g} new traces/s, "
                "untraced and parentless client spans dropped)"
            )

    return A0Sampler()


def setup_tracing(settings: Settings, service_name: str) -> None:
    """Record and export spans when an OTLP endpoint is configured; else do nothing."""
    global _enabled
    endpoint = settings.telemetry.exporter_otlp_endpoint
    if not endpoint or _enabled:
        return  # nothing would receive the spans: keep the no-op provider, instrument nothing
    import aiokafka
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.utils import unwrap
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from services.common.span_redaction import RedactingSpanProcessor

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": service_name, "service.namespace": settings.telemetry.service_namespace}
        ),
        sampler=_sampler(TraceBudget(settings.telemetry.traces_per_s, burst=TRACE_BURST)),
    )
    url = endpoint.rstrip("/") + "/v1/traces"
    # Exported within a second, so `a0ctl trace` shows a turn right after it ends.
    exporter = OTLPSpanExporter(endpoint=url, timeout=5)
    # Redacted before export: whoever reaches the trace store reads every attribute.
    provider.add_span_processor(
        RedactingSpanProcessor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    )
    trace.set_tracer_provider(provider)
    AIOKafkaInstrumentor().instrument(tracer_provider=provider)
    _gate_kafka_send()
    # Consuming is traced by ConsumerLoop and the gateway's fan-out, around the handler;
    # the instrumentation's receive spans end before it runs, and its poll spans would
    # start a trace of their own per fetch.
    unwrap(aiokafka.AIOKafkaConsumer, "getone")
    unwrap(aiokafka.AIOKafkaConsumer, "getmany")
    PsycopgInstrumentor().instrument(tracer_provider=provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    _enabled = True
    log.info("tracing to %s as %s", url, service_name)


def _gate_kafka_send() -> None:
    """The aiokafka instrumentation's send wrapper (a span, the record's partition and
    key worked out for its attributes) only where instrumentation is on."""
    import aiokafka

    instrumented = aiokafka.AIOKafkaProducer.send
    original = instrumented.__wrapped__

    def send(self: aiokafka.AIOKafkaProducer, *args: Any, **kwargs: Any) -> Any:
        if is_instrumentation_enabled():
            return instrumented.__get__(self, type(self))(*args, **kwargs)
        return original(self, *args, **kwargs)

    aiokafka.AIOKafkaProducer.send = send  # type: ignore[method-assign]


def kafka_headers() -> list[tuple[str, bytes]]:
    """Headers for a record to send: the current trace context. When the aiokafka
    instrumentation runs it adds the context of its send span itself, to this list;
    otherwise the context goes as it is, unsampled under :func:`untraced`."""
    if _enabled and is_instrumentation_enabled():
        return []
    context = None
    if _enabled and otel_context.get_value(_UNTRACED):
        current = trace.get_current_span().get_span_context()
        if not current.is_valid:
            return []
        unsampled = SpanContext(
            current.trace_id, current.span_id, False, TraceFlags(TraceFlags.DEFAULT), current.trace_state
        )
        context = trace.set_span_in_context(NonRecordingSpan(unsampled))
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(key, value.encode()) for key, value in carrier.items()]


def context_from_headers(headers: Any) -> Any:
    carrier = {key: value.decode(errors="replace") for key, value in (headers or ()) if value is not None}
    return propagate.extract(carrier)


@contextmanager
def untraced() -> Iterator[None]:
    """Work done here (streamed text sent piece by piece) gets no spans, and the client
    instrumentations do not run for it."""
    if not _enabled:
        yield
        return
    token = otel_context.attach(otel_context.set_value(_UNTRACED, True))
    try:
        with suppress_instrumentation():
            yield
    finally:
        otel_context.detach(token)


@contextmanager
def follow_sampling(current: Span | None = None) -> Iterator[None]:
    """Work for a span that is not sampled (the current one by default) runs with the
    client instrumentations off: no wrapper work per query, command or request."""
    if not _enabled or (current if current is not None else trace.get_current_span()).is_recording():
        yield
        return
    with suppress_instrumentation():
        yield


def record_attributes(record: Any, envelope: Any) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "a0.conversation_id": envelope.conversation_id,
        "a0.turn_id": envelope.turn_id,
        "a0.event_type": str(envelope.type),
    }


@contextmanager
def consume_span(name: str, record: Any, envelope: Any) -> Iterator[Span | None]:
    """A span around a record's handler, the child of the span that sent the record."""
    with trace.use_span(
        tracer.start_span(
            name,
            context=context_from_headers(record.headers),
            kind=SpanKind.CONSUMER,
            attributes=record_attributes(record, envelope) if _enabled else None,
        ),
        end_on_exit=True,
    ) as span:
        with follow_sampling(span):
            yield span


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A hand span (internal) with a0's attributes; a no-op without tracing."""
    with tracer.start_as_current_span(name, attributes=attributes if _enabled else None) as current:
        yield current


def set_outcome(current: Span | None, outcome: str, error: bool = False) -> None:
    if current is None or not current.is_recording():
        return
    current.set_attribute("a0.outcome", outcome)
    if error:
        current.set_status(Status(StatusCode.ERROR, outcome))
