"""``a0ctl trace`` (a turn's spans from Jaeger, as a tree) and ``a0ctl top`` (live
figures from Prometheus)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from a0ctl.console import ExitCode, console, errors_to_exit, fail, print_json, settings
from a0ctl.observe import TopSnapshot, TracesOutput, query_traces, top_snapshot
from services.common.traces import span_children

# Attributes worth a glance in the tree (all of them are in --json).
SHOWN = (
    "messaging.destination.name",
    "messaging.destination.partition.id",
    "messaging.kafka.offset",
    "a0.tool",
    "a0.outcome",
    "http.response.status_code",
    "http.status_code",
    "gen_ai.request.model",
)
SHORT = {
    "messaging.destination.name": "topic",
    "messaging.destination.partition.id": "partition",
    "messaging.kafka.offset": "offset",
    "a0.tool": "tool",
    "a0.outcome": "outcome",
    "http.response.status_code": "status",
    "http.status_code": "status",
    "gen_ai.request.model": "model",
}
SERVICE_COLOURS = {
    "gateway": "cyan",
    "conversation-worker": "magenta",
    "tool-executor": "yellow",
}


def _label(span: dict[str, Any], origin_ms: float) -> Text:
    offset = _start_ms(span) - origin_ms
    label = Text()
    label.append(f"{span['service']} ", style=f"bold {SERVICE_COLOURS.get(span['service'], 'white')}")
    label.append(span["name"], style="bold")
    label.append(f"  {span['duration_ms']:.1f} ms", style="green")
    label.append(f"  @+{offset:.1f} ms", style="dim")
    shown = [f"{SHORT[key]}={span['attributes'][key]}" for key in SHOWN if key in span["attributes"]]
    if shown:
        label.append("  " + " ".join(shown), style="dim")
    if span["attributes"].get("error") or span["attributes"].get("otel.status_code") == "ERROR":
        label.append("  error", style="bold red")
    return label


def _start_ms(span: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(span["start"]).timestamp() * 1000


def trace_tree(trace: dict[str, Any]) -> Tree:
    spans = trace["spans"]
    roots, children = span_children(spans)
    origin = min((_start_ms(s) for s in spans), default=0.0)
    services = sorted({s["service"] for s in spans})
    tree = Tree(
        Text(f"trace {trace['trace_id']}  {len(spans)} spans  {', '.join(services)}", style="bold"),
        guide_style="dim",
    )

    def add(node: Tree, span: dict[str, Any]) -> None:
        branch = node.add(_label(span, origin))
        for event in span.get("events", ()):
            name = event.get("event", "event")
            extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "at_ms"))
            branch.add(Text(f"◆ {name} at +{event['at_ms']:.1f} ms {extra}".rstrip(), style="blue"))
        for child in children.get(span["span_id"], ()):
            add(branch, child)

    for root in roots:
        add(tree, root)
    return tree


def trace(
    conversation_id: Annotated[str, typer.Argument(help="The conversation whose turns to show.")],
    turn: Annotated[str | None, typer.Option("--turn", "-t", help="Only the trace of this turn.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the spans as JSON.")] = False,
) -> None:
    """Show a conversation's turns as span trees (one trace per turn) from Jaeger.

    Each hop is a span: the gateway's request, the record sent to Kafka, the worker handling it, the LLM call (with its time to first token), the tool request, the tool executor's run, the result back to the worker, the answer's records and their delivery by the gateway, with durations and the topic, partition and offset.

    Example: a0ctl trace 01J...  --turn 01J...
    """
    with errors_to_exit():
        traces = query_traces(settings(), conversation_id, turn)
    if json_out:
        print_json(TracesOutput(traces=traces))
    if not traces:
        what = f"turn {turn} of conversation {conversation_id}" if turn else f"conversation {conversation_id}"
        fail(
            ExitCode.FAILED,
            f"no trace of {what} in Jaeger",
            "spans reach it a second or two after a turn, and Jaeger keeps traces in memory until it restarts",
        )
    if not json_out:
        for found in traces:
            console.print(trace_tree(found))


def _figure(value: Any, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value * scale:.{digits}f}{unit}"


def _by_label(values: dict[str, float | None], unit: str = "", digits: int = 1) -> str:
    if not values:
        return "-"
    return "  ".join(f"{label} {_figure(v, unit, digits=digits)}" for label, v in sorted(values.items()))


def top_view(snapshot: dict[str, Any]) -> Group:
    summary = Table(title="a0 top", title_justify="left", show_header=True)
    for column in ("turns/s", "req/s", "in flight", "p50", "p95", "p99", "TTFT p50", "TTFT p95", "errors"):
        summary.add_column(column, justify="right")
    summary.add_row(
        _figure(snapshot["turns_per_s"], digits=2),
        _figure(snapshot["requests_per_s"], digits=2),
        _figure(snapshot["turns_in_flight"], digits=0),
        _figure(snapshot["turn_p50_s"], " ms", 1000, 0),
        _figure(snapshot["turn_p95_s"], " ms", 1000, 0),
        _figure(snapshot["turn_p99_s"], " ms", 1000, 0),
        _figure(snapshot["ttft_p50_s"], " ms", 1000, 0),
        _figure(snapshot["ttft_p95_s"], " ms", 1000, 0),
        _figure(snapshot["error_rate"], " %", 100, 1),
    )
    details = Table(show_header=False, box=None)
    details.add_column(style="bold")
    details.add_column()
    details.add_row("messages in /s", _by_label(snapshot["messages_in_per_s"]))
    details.add_row("messages out /s", _by_label(snapshot["messages_out_per_s"]))
    details.add_row("consumer lag (records)", _by_label(snapshot["lag_records"], digits=0))
    details.add_row(
        "shed /s · HTTP 5xx",
        f"{_by_label(snapshot['shed_per_s'], digits=2)} · {_figure(snapshot['http_5xx_share'], ' %', 100, 1)}",
    )
    details.add_row("tool errors /s", _by_label(snapshot["tool_errors_per_s"], digits=2))
    details.add_row("dead letters /s", _by_label(snapshot["dead_letters_per_s"], digits=2))
    stamp = Text(f"rates over the last minute · {snapshot['at']} · ctrl-c to stop", style="dim")
    return Group(summary, details, stamp)


def top(
    once: Annotated[bool, typer.Option("--once", help="Print one view and exit.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one snapshot as JSON and exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.2)] = 1.0,
) -> None:
    """Live view of the stack from Prometheus: throughput, turn latency percentiles and time to first token, error rate, in-flight turns, consumer lag, shed requests and dead letters. Refreshed every second until ctrl-c.

    Example: a0ctl top     (a0ctl top --json for scripts)
    """
    config = settings()
    with errors_to_exit():
        if json_out:
            print_json(TopSnapshot.model_validate(top_snapshot(config)))
            return
        if once:
            console.print(top_view(top_snapshot(config)))
            return
        with Live(top_view(top_snapshot(config)), console=console, refresh_per_second=4) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(top_view(top_snapshot(config)))
            except KeyboardInterrupt:
                pass
