"""What a span may carry: anyone who reaches the trace store (Jaeger's query API has no
authentication) reads every attribute, so spans pass the same redaction as logs.

:class:`RedactingSpanProcessor` wraps the exporting processor and, at the end of each
span, drops query strings (``url.query``; the query and user info of ``url.full``,
``http.url`` and ``http.target``) and every header attribute that carries credentials
(``authorization``, ``cookie``, API-key headers), and masks tokens and registered
secrets in every other string attribute and in event attributes (an exception's message
and stack trace) with :func:`services.common.logging.redact`. A span with nothing to
redact is passed on as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor

from services.common.logging import MASK, redact

DROPPED = frozenset({"url.query"})
URL_ATTRIBUTES = frozenset({"url.full", "http.url", "http.target"})
# Header attributes (http.request.header.<name>) whose value is a credential.
SECRET_HEADERS = ("authorization", "cookie", "set-cookie", "x-api-key", "api-key", "proxy-authorization")


def _bare_url(value: str) -> str:
    """``value`` without its query, fragment and user info."""
    parts = urlsplit(value)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _secret_header(key: str) -> bool:
    return (
        key.startswith(("http.request.header.", "http.response.header."))
        and key.rsplit(".", 1)[-1].replace("_", "-") in SECRET_HEADERS
    )


def _clean(key: str, value: Any) -> Any:
    """The value ``key`` may keep; None drops the attribute."""
    if key in DROPPED:
        return None
    if _secret_header(key):
        return (MASK,)
    if isinstance(value, str):
        return redact(_bare_url(value) if key in URL_ATTRIBUTES else value)
    if isinstance(value, tuple | list) and value and isinstance(value[0], str):
        return tuple(redact(item) for item in value)
    return value


def redact_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``attributes`` cleaned, or None when nothing in them needs it."""
    if not attributes:
        return None
    cleaned: dict[str, Any] = {}
    changed = False
    for key, value in attributes.items():
        kept = _clean(key, value)
        if kept != value:
            changed = True
        if kept is not None:
            cleaned[key] = kept
    return cleaned if changed else None


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """``span``, or a copy of it with its attributes and events redacted."""
    attributes = redact_attributes(span.attributes)
    events: list[Event] = []
    events_changed = False
    for event in span.events:
        cleaned = redact_attributes(event.attributes)
        if cleaned is None:
            events.append(event)
        else:
            events_changed = True
            events.append(Event(event.name, cleaned, event.timestamp))
    if attributes is None and not events_changed:
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes if attributes is None else attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanProcessor(SpanProcessor):
    """Passes each ended span, redacted, to ``inner`` (the exporting processor)."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self._inner.on_end(redact_span(span))

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
