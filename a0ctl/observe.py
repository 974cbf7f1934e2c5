"""Reading what the stack records: traces from Jaeger's query API, figures from
Prometheus's HTTP API. Used by ``a0ctl trace`` and ``a0ctl top``; plain data in, plain
data out (the commands render it)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from a0ctl.errors import StackError
from services.common.panels import TARGETS, TOP_FIGURES, grouped, promql
from services.common.settings import Settings
from services.common.traces import TRACES_PATH, parse_traces, trace_query

# --- traces --------------------------------------------------------------------------


def query_traces(
    settings: Settings, conversation_id: str, turn_id: str | None = None
) -> list[dict[str, Any]]:
    """Every trace of a conversation (or of one turn) in Jaeger, spans ordered by start."""
    base = settings.telemetry.query_url(settings.stack.host)
    params = trace_query(conversation_id=conversation_id)
    try:
        response = httpx.get(f"{base}{TRACES_PATH}", params=params, timeout=10)
    except httpx.HTTPError as exc:
        raise StackError(
            f"Jaeger does not answer at {base}: {type(exc).__name__}",
            service="jaeger",
            hint="start the stack with `a0ctl up` (Jaeger runs unless A0_OTEL_JAEGER=false), "
            "or point A0_OTEL_JAEGER_URL at a Jaeger query API",
        ) from None
    if response.status_code != 200:
        raise StackError(
            f"Jaeger answered HTTP {response.status_code} at {base}{TRACES_PATH}", service="jaeger"
        )
    return parse_traces(response.json(), turn_id)


# --- metrics ---------------------------------------------------------------------------

# What `a0ctl top` shows: the dashboard's own queries (services.common.panels), over the
# last RATE_WINDOW.
RATE_WINDOW = "1m"
TOP_QUERIES: dict[str, str] = {key: promql(TARGETS[key].expr, RATE_WINDOW) for key in TOP_FIGURES}


def prometheus_query(
    settings: Settings, expr: str, client: httpx.Client | None = None
) -> list[dict[str, Any]]:
    """An instant query: the result vector (``metric`` labels and ``value``)."""
    base = settings.prometheus.base_url(settings.stack.host)
    try:
        response = (client or httpx).get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    except httpx.HTTPError as exc:
        raise StackError(
            f"Prometheus does not answer at {base}: {type(exc).__name__}",
            service="prometheus",
            hint="start the stack with `a0ctl up` (Prometheus runs unless A0_PROMETHEUS_ENABLED=false), "
            "or point A0_PROMETHEUS_URL at a Prometheus",
        ) from None
    body = response.json()
    if body.get("status") != "success":
        raise StackError(f"Prometheus rejected {expr!r}: {body.get('error', response.status_code)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _number(value: str) -> float | None:
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


class TracesOutput(BaseModel):
    """``a0ctl trace --json``: ``{"traces": [{"trace_id", "spans": [{"span_id", "parent_id",
    "service", "name", "start", "duration_ms", "attributes", "events"}]}]}``."""

    traces: list[dict[str, Any]]


class TopSnapshot(BaseModel):
    """``a0ctl top --json``: ``at`` and each figure of :data:`TOP_QUERIES` by its name."""

    model_config = ConfigDict(extra="allow")

    at: str


def top_snapshot(settings: Settings) -> dict[str, Any]:
    """Every figure of :data:`TOP_QUERIES` now: a number, or by label for grouped ones."""
    snapshot: dict[str, Any] = {"at": datetime.now(UTC).isoformat()}
    with httpx.Client() as client:
        for name, expr in TOP_QUERIES.items():
            result = prometheus_query(settings, expr, client)
            if grouped(expr):
                snapshot[name] = {
                    "/".join(item["metric"].values()) or "all": _number(item["value"][1]) for item in result
                }
            else:
                snapshot[name] = _number(result[0]["value"][1]) if result else None
    return snapshot
