"""The stack's charts, defined once: each panel's title, unit and PromQL queries.

Three readers, one definition: the Grafana dashboard ``stack/grafana/dashboards/a0.json``
is generated from :data:`PANELS` (``python -m services.common.panels PATH`` writes it; a
unit test fails when the file differs), ``a0ctl top`` shows the targets named in
:data:`TOP_FIGURES`, and the gateway's ops page charts the panels marked ``ops``.

Queries are written as Grafana takes them, with ``$__rate_interval``;
:func:`promql` makes a concrete query of one for a given rate window.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

RATE_INTERVAL = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "a0-prometheus"}


@dataclass(frozen=True)
class Target:
    """One query of a panel: ``key`` names its figure (in ``a0ctl top --json`` and the
    ops page's API), ``legend`` is Grafana's legend format (``{{label}}`` placeholders)."""

    key: str
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    description: str
    unit: str  # Grafana's unit: ops (per second), percentunit (0..1), s, short
    ops: bool  # charted on the gateway's ops page
    targets: tuple[Target, ...]


def promql(expr: str, window: str) -> str:
    """``expr`` with its rate interval made concrete (``30s``, ``1m``)."""
    return expr.replace(RATE_INTERVAL, window)


def legend(target: Target, labels: dict[str, str]) -> str:
    """A series' name as Grafana writes it: the legend format with each ``{{label}}``
    replaced by the series' value of it (empty when it has none)."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), target.legend).strip()


PANELS: tuple[Panel, ...] = (
    Panel(
        key="throughput",
        title="Throughput: turns / s",
        description="Turns finished by the worker, all and by outcome; HTTP requests to the gateway.",
        unit="ops",
        ops=True,
        targets=(
            Target("turns_per_s", "sum(rate(a0_turns_total[$__rate_interval]))", "all turns"),
            Target(
                "turns_by_outcome_per_s",
                "sum by (outcome) (rate(a0_turns_total[$__rate_interval]))",
                "{{outcome}}",
            ),
            Target(
                "requests_per_s", "sum(rate(a0_gateway_requests_total[$__rate_interval]))", "gateway requests"
            ),
        ),
    ),
    Panel(
        key="records",
        title="Throughput: messages / s by topic",
        description="Records sent to and handled from each Kafka topic.",
        unit="ops",
        ops=True,
        targets=(
            Target(
                "messages_out_per_s",
                "sum by (topic) (rate(a0_messages_produced_total[$__rate_interval]))",
                "out {{topic}}",
            ),
            Target(
                "messages_in_per_s",
                "sum by (group, topic) (rate(a0_messages_consumed_total[$__rate_interval]))",
                "in {{topic}} ({{group}})",
            ),
        ),
    ),
    Panel(
        key="errors",
        title="Error rate",
        description="Share of turns that failed, of gateway answers that were 5xx, of tool calls answered with an error.",
        unit="percentunit",
        ops=True,
        targets=(
            Target(
                "error_rate",
                '(sum(rate(a0_turns_total{outcome="failed"}[$__rate_interval])) or vector(0)) / sum(rate(a0_turns_total[$__rate_interval]))',
                "failed turns",
            ),
            Target(
                "http_5xx_share",
                '(sum(rate(a0_gateway_requests_total{status=~"5.."}[$__rate_interval])) or vector(0)) / sum(rate(a0_gateway_requests_total[$__rate_interval]))',
                "HTTP 5xx",
            ),
            Target(
                "tool_error_share",
                "(sum(rate(a0_tool_errors_total[$__rate_interval])) or vector(0)) / sum(rate(a0_tool_calls_total[$__rate_interval]))",
                "tool errors",
            ),
        ),
    ),
    Panel(
        key="turn_latency",
        title="Turn latency p50 / p95 / p99",
        description="Time the worker spends on a turn, from its start to its last event.",
        unit="s",
        ops=True,
        targets=(
            Target(
                "turn_p50_s",
                "histogram_quantile(0.5, sum by (le) (rate(a0_turn_seconds_bucket[$__rate_interval])))",
                "p50",
            ),
            Target(
                "turn_p95_s",
                "histogram_quantile(0.95, sum by (le) (rate(a0_turn_seconds_bucket[$__rate_interval])))",
                "p95",
            ),
            Target(
                "turn_p99_s",
                "histogram_quantile(0.99, sum by (le) (rate(a0_turn_seconds_bucket[$__rate_interval])))",
                "p99",
            ),
        ),
    ),
    Panel(
        key="ttft",
        title="Time to first token p50 / p95 / p99",
        description="From an LLM call's start to its first streamed chunk.",
        unit="s",
        ops=True,
        targets=(
            Target(
                "ttft_p50_s",
                "histogram_quantile(0.5, sum by (le) (rate(a0_llm_ttft_seconds_bucket[$__rate_interval])))",
                "p50",
            ),
            Target(
                "ttft_p95_s",
                "histogram_quantile(0.95, sum by (le) (rate(a0_llm_ttft_seconds_bucket[$__rate_interval])))",
                "p95",
            ),
            Target(
                "ttft_p99_s",
                "histogram_quantile(0.99, sum by (le) (rate(a0_llm_ttft_seconds_bucket[$__rate_interval])))",
                "p99",
            ),
        ),
    ),
    Panel(
        key="event_latency",
        title="Event latency p50 / p95 / p99",
        description="From an event's creation by the worker to its fan-out by the gateway.",
        unit="s",
        ops=False,
        targets=(
            Target(
                "event_p50_s",
                "histogram_quantile(0.5, sum by (le) (rate(a0_event_latency_seconds_bucket[$__rate_interval])))",
                "p50",
            ),
            Target(
                "event_p95_s",
                "histogram_quantile(0.95, sum by (le) (rate(a0_event_latency_seconds_bucket[$__rate_interval])))",
                "p95",
            ),
            Target(
                "event_p99_s",
                "histogram_quantile(0.99, sum by (le) (rate(a0_event_latency_seconds_bucket[$__rate_interval])))",
                "p99",
            ),
        ),
    ),
    Panel(
        key="lag",
        title="Consumer lag (records)",
        description="Records of each partition a consumer group has not handled yet.",
        unit="short",
        ops=True,
        targets=(
            Target(
                "lag_records",
                "sum by (group, topic, partition) (a0_consumer_lag_records)",
                "{{group}} {{topic}}[{{partition}}]",
            ),
        ),
    ),
    Panel(
        key="lag_age",
        title="Consumer lag (age of records at handling) p95",
        description="",
        unit="s",
        ops=False,
        targets=(
            Target(
                "lag_age_p95_s",
                "histogram_quantile(0.95, sum by (le, group) (rate(a0_consumer_lag_seconds_bucket[$__rate_interval])))",
                "{{group}}",
            ),
        ),
    ),
    Panel(
        key="dead_letters",
        title="Dead-letter rate",
        description="Records sent to a dead-letter topic, by the consumer that gave up on them.",
        unit="ops",
        ops=True,
        targets=(
            Target(
                "dead_letters_per_s",
                "sum by (group) (rate(a0_dead_letters_total[$__rate_interval])) or vector(0)",
                "{{group}}",
            ),
        ),
    ),
    Panel(
        key="inflight",
        title="In-flight turns and shed requests",
        description="",
        unit="short",
        ops=True,
        targets=(
            Target("turns_in_flight", "sum(a0_turns_inflight)", "turns in flight"),
            Target(
                "shed_per_s",
                "sum by (reason) (rate(a0_gateway_shed_total[$__rate_interval])) or vector(0)",
                "shed /s {{reason}}",
            ),
        ),
    ),
    Panel(
        key="tool_latency",
        title="Tool latency p95 by tool",
        description="",
        unit="s",
        ops=False,
        targets=(
            Target(
                "tool_p95_s",
                "histogram_quantile(0.95, sum by (le, tool) (rate(a0_tool_seconds_bucket[$__rate_interval])))",
                "{{tool}}",
            ),
        ),
    ),
    Panel(
        key="tool_errors",
        title="Tool errors / s by tool",
        description="",
        unit="ops",
        ops=False,
        targets=(
            Target(
                "tool_errors_per_s",
                "sum by (tool, code) (rate(a0_tool_errors_total[$__rate_interval])) or vector(0)",
                "{{tool}} {{code}}",
            ),
        ),
    ),
    Panel(
        key="loop_lag",
        title="Event-loop lag p95 by service",
        description="How late each process's event loop runs a timer: its backlog of ready work. Rising lag is CPU saturation.",
        unit="s",
        ops=False,
        targets=(
            Target(
                "loop_lag_p95_s",
                "histogram_quantile(0.95, sum by (le, job) (rate(a0_event_loop_lag_seconds_bucket[$__rate_interval])))",
                "{{job}}",
            ),
        ),
    ),
    Panel(
        key="db_pool",
        title="PostgreSQL pool: mean wait for a connection",
        description="Time a request waits for a connection from its service's pool. Above a few milliseconds the pool is too small for the load, or still opening.",
        unit="s",
        ops=False,
        targets=(
            Target(
                "db_pool_wait_s",
                "sum by (pool) (rate(a0_db_pool_wait_seconds_total[$__rate_interval])) / sum by (pool) (rate(a0_db_pool_requests_total[$__rate_interval]))",
                "{{pool}}",
            ),
        ),
    ),
)

TARGETS: dict[str, Target] = {target.key: target for panel in PANELS for target in panel.targets}

# What `a0ctl top` shows, by target key.
TOP_FIGURES: tuple[str, ...] = (
    "turns_per_s",
    "requests_per_s",
    "turns_in_flight",
    "turn_p50_s",
    "turn_p95_s",
    "turn_p99_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "error_rate",
    "http_5xx_share",
    "messages_in_per_s",
    "messages_out_per_s",
    "lag_records",
    "shed_per_s",
    "tool_errors_per_s",
    "dead_letters_per_s",
)


def grouped(expr: str) -> bool:
    """The query answers one series per label value (not one number)."""
    return " by (" in expr.replace("by (le)", "")


def grafana_panels() -> list[dict[str, Any]]:
    """The dashboard's ``panels``: two a row, in :data:`PANELS`' order."""
    panels = []
    for number, panel in enumerate(PANELS):
        panels.append(
            {
                "id": number + 1,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (number % 2), "y": 8 * (number // 2)},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"},
                },
                "targets": [
                    {
                        "datasource": DATASOURCE,
                        "expr": target.expr,
                        "legendFormat": target.legend,
                        "refId": chr(ord("A") + index),
                    }
                    for index, target in enumerate(panel.targets)
                ],
            }
        )
    return panels


def write_dashboard(path: str) -> None:
    """Replace the ``panels`` of the dashboard at ``path`` with :func:`grafana_panels`."""
    with open(path, encoding="utf-8") as file:
        board = json.load(file)
    board["panels"] = grafana_panels()
    with open(path, "w", encoding="utf-8") as file:
        file.write(json.dumps(board, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write_dashboard(sys.argv[1] if len(sys.argv) > 1 else "stack/grafana/dashboards/a0.json")
