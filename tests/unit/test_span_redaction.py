"""Spans leave a process without query strings, credential headers or tokens: the trace
store is readable by anyone who reaches its port."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from services.common.span_redaction import RedactingSpanProcessor, redact_span

pytestmark = pytest.mark.unit

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLWFsaWNl"


class Collected(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[arg-type]
        return SpanExportResult.SUCCESS


def _exported(attributes: dict[str, object], *, exception: Exception | None = None) -> ReadableSpan:
    collected = Collected()
    provider = TracerProvider()
    provider.add_span_processor(RedactingSpanProcessor(SimpleSpanProcessor(collected)))
    with provider.get_tracer("test").start_as_current_span("GET /v1/conversations/{id}/events") as span:
        span.set_attributes(attributes)  # type: ignore[arg-type]
        if exception is not None:
            span.record_exception(exception)
    return collected.spans[0]


def test_query_strings_and_credential_headers_are_dropped() -> None:
    span = _exported(
        {
            "url.path": "/v1/conversations/c1/events",
            "url.query": f"after=3&access_token={TOKEN}",
            "url.full": f"http://user:pw@127.0.0.1:8080/v1/x?access_token={TOKEN}#frag",
            "http.target": f"/v1/x?token={TOKEN}",
            "http.request.header.authorization": (f"Bearer {TOKEN}",),
            "http.request.header.x_api_key": ("sk-abcdefghijklmnop",),
            "http.response.status_code": 200,
        }
    )
    attributes = dict(span.attributes or {})
    assert "url.query" not in attributes
    assert attributes["url.full"] == "http://127.0.0.1:8080/v1/x"
    assert attributes["http.target"] == "/v1/x"
    assert attributes["http.request.header.authorization"] == ("***",)
    assert attributes["http.request.header.x_api_key"] == ("***",)
    assert attributes["url.path"] == "/v1/conversations/c1/events"
    assert attributes["http.response.status_code"] == 200
    assert TOKEN.rsplit(".", 1)[-1] not in repr(attributes)


def test_tokens_in_any_attribute_or_exception_are_masked() -> None:
    span = _exported(
        {"db.statement": f"SELECT 1 -- Bearer {TOKEN}"},
        exception=ValueError(f"bad token {TOKEN}"),
    )
    assert TOKEN not in repr(dict(span.attributes or {}))
    assert "***" in str((span.attributes or {})["db.statement"])
    recorded = [dict(event.attributes or {}) for event in span.events]
    assert recorded and TOKEN not in repr(recorded)
    assert TOKEN.rsplit(".", 1)[-1] not in repr(recorded)


def test_a_span_with_nothing_to_redact_is_passed_on_unchanged() -> None:
    span = ReadableSpan("turn", attributes={"a0.turn_id": "t1", "a0.outcome": "completed"})
    assert redact_span(span) is span
