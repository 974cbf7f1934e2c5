"""A turn's trace as Jaeger's query API returns it, made plain: what to ask for and how
to read the answer. ``a0ctl trace`` and the gateway's ops page both read traces through
these (each with its own HTTP client)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

TRACES_PATH = "/api/traces"
LOOKBACK_S = 7 * 24 * 3600  # Jaeger keeps traces in memory; a week back covers them


def trace_query(
    *, conversation_id: str | None = None, turn_id: str | None = None, now_s: float | None = None
) -> dict[str, str]:
    """The query parameters of ``GET /api/traces``: every trace the gateway recorded for
    a conversation, or for a turn (its spans carry ``a0.conversation_id`` and ``a0.turn_id``)."""
    tags = {"a0.conversation_id": conversation_id} if conversation_id else {"a0.turn_id": turn_id}
    if not conversation_id and not turn_id:
        raise ValueError("a conversation id or a turn id is needed")
    now_us = int((time.time() if now_s is None else now_s) * 1e6)
    return {
        "service": "gateway",
        "tags": json.dumps(tags),
        "start": str(now_us - LOOKBACK_S * 10**6),
        "end": str(now_us),
        "limit": "1000",
    }


def _span(raw: dict[str, Any], processes: dict[str, Any]) -> dict[str, Any]:
    parent = next(
        (ref["spanID"] for ref in raw.get("references") or () if ref.get("refType") == "CHILD_OF"), None
    )
    events = [
        {
            "at_ms": round((log["timestamp"] - raw["startTime"]) / 1000, 3),
            **{field["key"]: field.get("value") for field in log.get("fields") or ()},
        }
        for log in raw.get("logs") or ()
    ]
    span = {
        "span_id": raw["spanID"],
        "parent_id": parent,
        "service": processes.get(raw.get("processID", ""), {}).get("serviceName", "?"),
        "name": raw["operationName"],
        "start": datetime.fromtimestamp(raw["startTime"] / 1e6, UTC).isoformat(),
        "duration_ms": round(raw["duration"] / 1000, 3),
        "attributes": {tag["key"]: tag.get("value") for tag in raw.get("tags") or ()},
    }
    if events:
        span["events"] = events
    return span


def parse_traces(body: dict[str, Any], turn_id: str | None = None) -> list[dict[str, Any]]:
    """The traces of a ``GET /api/traces`` answer (of one turn, with ``turn_id``), spans
    ordered by start, traces by their first span: ``[{"trace_id", "spans": [{"span_id",
    "parent_id", "service", "name", "start", "duration_ms", "attributes", "events"}]}]``."""
    traces = []
    for raw in body.get("data") or ():
        spans = sorted(
            (_span(span, raw.get("processes") or {}) for span in raw.get("spans") or ()),
            key=lambda s: s["start"],
        )
        if turn_id is not None and not any(s["attributes"].get("a0.turn_id") == turn_id for s in spans):
            continue
        traces.append({"trace_id": raw["traceID"], "spans": spans})
    traces.sort(key=lambda t: t["spans"][0]["start"] if t["spans"] else "")
    return traces


def span_children(
    spans: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Roots (no parent in the trace) and each span's children, in start order."""
    ids = {span["span_id"] for span in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for span in spans:
        if span["parent_id"] in ids:
            children.setdefault(span["parent_id"], []).append(span)
        else:
            roots.append(span)
    return roots, children
