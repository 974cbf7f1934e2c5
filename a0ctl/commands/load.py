"""``a0ctl load``: drive many concurrent chat sessions through the gateway and report."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from a0ctl.console import console, print_json, settings
from a0ctl.load import LoadReport, run_load


def render(report: LoadReport) -> None:
    table = Table(title=f"a0 load: {report.sessions} sessions, {report.duration_s} s", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("messages sent / accepted", f"{report.sent} / {report.accepted}"),
        ("answered / failed turns", f"{report.completed} / {report.failed}"),
        ("refused with 429", str(report.rejected)),
        ("lost (accepted, never answered)", str(report.lost)),
        ("events shown twice / missing", f"{report.duplicate_events} / {report.missing_events}"),
        ("answers per second", str(report.throughput_per_s)),
        (
            "response p50 / p95 / p99 (s)",
            f"{report.response_s.p50} / {report.response_s.p95} / {report.response_s.p99}",
        ),
        ("response mean (s)", str(report.response_s.mean)),
        ("event delivery p50 / p99 (ms)", f"{report.delivery_ms.p50} / {report.delivery_ms.p99}"),
        ("max consumer lag (s)", str(report.max_consumer_lag_s)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for error in report.errors:
        console.print(f"[red]error:[/] {error}", highlight=False)
    console.print("[green]ok[/]: nothing lost, nothing shown twice" if report.ok else "[red]not ok[/]")


def load(
    sessions: Annotated[int, typer.Option(min=1, help="Concurrent chat sessions (one user each).")] = 50,
    duration: Annotated[float, typer.Option(min=1, help="Seconds to keep sending.")] = 30.0,
    think: Annotated[float, typer.Option(min=0, help="Mean pause between a session's messages (s).")] = 5.0,
    prompt: Annotated[str, typer.Option(help="What each session sends.")] = "compute 6*7",
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load the running stack through the gateway; exit 1 if a message was lost or an
    event shown twice.

    Example: a0ctl load --sessions 500 --duration 60 --think 10 --json
    """
    report = asyncio.run(
        run_load(settings(), sessions=sessions, duration_s=duration, think_s=think, prompt=prompt)
    )
    if json_out:
        print_json({**report.model_dump(), "ok": report.ok})
    else:
        render(report)
    if not report.ok:
        raise typer.Exit(1)
