"""``a0ctl load``: drive many concurrent chat sessions through the gateway and report."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from a0ctl.console import ExitCode, JsonOption, console, print_json, settings
from a0ctl.load import SAMPLE_S, run_load
from a0ctl.load.account import Account
from a0ctl.load.probe import IDLE_S, AccountProbe
from a0ctl.load.report import HostCpu, LoadReport
from a0ctl.runtime import get_runtime
from services.common.metrics import tune_gc
from services.common.settings import Settings

# Busier than this, a host's processes queue for a core.
SATURATED = 0.9


def _cpu_busy(cpu: HostCpu) -> str:
    if cpu.mean is None:
        return "unknown"
    busy = f"{cpu.mean:.0%} / {cpu.max:.0%}" if cpu.max is not None else f"{cpu.mean:.0%}"
    return f"{busy} of {cpu.cores} cores"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _timeline(report: LoadReport) -> Table:
    table = Table(title="by when the message was sent", title_justify="left")
    for column in ("sent (s)", "answered", "response mean (s)", "p99 (s)", "accepted mean (s)", "CPU busy"):
        table.add_column(column, justify="right")
    for window in report.timeline:
        table.add_row(
            f"{window.start_s:g}–{window.end_s:g}" + (" (ramp)" if window.start_s < report.ramp_s else ""),
            str(window.answered),
            _seconds(window.response_mean_s),
            _seconds(window.response_p99_s),
            _seconds(window.accept_mean_s),
            "-" if window.host_cpu is None else f"{window.host_cpu:.0%}",
        )
    return table


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def account_table(account: Account) -> Table:
    """The account: per process and per operation, idle rate, run total and per turn."""
    table = Table(
        title=f"what a turn cost: {account.turns} answered turns, net of the idle rate "
        f"(measured over {account.idle_s:g} s before the run)",
        title_justify="left",
    )
    for column, justify in (
        ("", "left"),
        ("idle per s", "right"),
        ("in the run", "right"),
        ("per turn", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_row(
        "CPU ms, whole stack + load client",
        _figure(account.idle_cpu_ms_per_s),
        "",
        _figure(account.cpu_ms_per_turn),
        style="bold",
    )
    for row in account.rows:
        label = f"  {row.name}" if row.group == "cpu" else f"{row.group}: {row.name}"
        table.add_row(label, _figure(row.idle_per_s), _figure(row.run_total), _figure(row.per_turn))
    return table


def memory_table(account: Account) -> Table:
    """Each process tree's PSS as the run started and after it (the account's memory)."""
    table = Table(title="memory: PSS of each process tree (MiB)", title_justify="left")
    for column, justify in (
        ("", "left"),
        ("run start", "right"),
        ("after the run", "right"),
        ("change", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    total_change = (
        round(account.pss_after_mib - account.pss_before_mib, 1)
        if account.pss_after_mib is not None and account.pss_before_mib is not None
        else None
    )
    table.add_row(
        "whole stack",
        _figure(account.pss_before_mib),
        _figure(account.pss_after_mib),
        _figure(total_change),
        style="bold",
    )
    for row in account.memory:
        table.add_row(
            f"  {row.name}", _figure(row.before_mib), _figure(row.after_mib), _figure(row.change_mib)
        )
    return table


# Long on purpose: a flat table of the report's rows, in the order the terminal shows them.
def render(report: LoadReport) -> None:
    cpu = report.host_cpu
    table = Table(title=f"a0 load: {report.sessions} sessions, {report.duration_s} s", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("messages sent / accepted", f"{report.sent} / {report.accepted}"),
        ("answered / failed turns", f"{report.completed} / {report.failed}"),
        ("failed sessions", f"{report.failed_sessions} of {report.sessions}"),
        ("messages shed with 429 (retried after Retry-After)", str(report.shed)),
        ("new conversations shed with 429 (retried)", str(report.shed_sign_ins)),
        ("streams refused with 429/503 (reopened)", str(report.stream_retries)),
        ("reconnects after a connection error (with backoff)", str(report.reconnects)),
        ("sessions shed to the end (never signed in)", str(report.shed_sessions)),
        ("lost (accepted, never answered)", str(report.lost)),
        ("events shown twice / missing", f"{report.duplicate_events} / {report.missing_events}"),
        ("answers per second", str(report.throughput_per_s)),
        (
            "response p50 / p95 / p99 (s)",
            f"{report.response_s.p50} / {report.response_s.p95} / {report.response_s.p99}",
        ),
        ("response mean (s)", str(report.response_s.mean)),
        (
            "first text p50 / p99 / mean (s)",
            f"{report.ttft_s.p50} / {report.ttft_s.p99} / {report.ttft_s.mean}",
        ),
        (
            "accepted (POST to 202) p50 / p99 / mean (s)",
            f"{report.accept_s.p50} / {report.accept_s.p99} / {report.accept_s.mean}",
        ),
        ("event delivery p50 / p99 (ms)", f"{report.delivery_ms.p50} / {report.delivery_ms.p99}"),
        (
            "max consumer lag (s / records)",
            f"{report.max_consumer_lag_s} / {report.max_consumer_lag_records}",
        ),
        (f"this host's CPU busy, mean / busiest {SAMPLE_S:g} s", _cpu_busy(cpu)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if report.timeline:
        console.print(_timeline(report))
    if report.account is not None:
        console.print(account_table(report.account))
        if report.account.memory:
            console.print(memory_table(report.account))
        console.print(
            f"the account's own readings cost this process {report.account.probe_cpu_ms:g} ms of CPU "
            "(not in the load client's figure)",
            highlight=False,
        )
        for missing in report.account.unavailable:
            console.print(f"[yellow]not in the account:[/] {missing}", highlight=False)
    for cause, count in report.causes.items():
        console.print(f"[red]failed {count}x:[/] {cause}", highlight=False)
    for miss in report.sla.misses:
        console.print(f"[red]SLA missed:[/] {miss}", highlight=False)
    if cpu.max is not None and cpu.max >= SATURATED:
        console.print(
            f"[yellow]note:[/] this host's CPUs were {cpu.max:.0%} busy at the peak: a stack on this "
            "host had turns waiting for a core, and the load client reads answers late",
            highlight=False,
        )
    console.print(
        "[green]ok[/]: every session to the end, nothing failed, lost or shown twice"
        if report.ok
        else "[red]not ok[/]"
    )


def load(
    sessions: Annotated[int, typer.Option(min=1, help="Concurrent chat sessions (one user each).")] = 50,
    duration: Annotated[float, typer.Option(min=1, help="Seconds to keep sending.")] = 30.0,
    think: Annotated[float, typer.Option(min=0, help="Mean pause between a session's messages (s).")] = 5.0,
    prompt: Annotated[str, typer.Option(help="What each session sends.")] = "compute 6*7",
    ramp: Annotated[
        float | None,
        typer.Option(
            min=0, help="Seconds over which sessions arrive, evenly (default: the think time, at least 2)."
        ),
    ] = None,
    sla_mean: Annotated[
        float | None, typer.Option(help="Fail (exit 1) if the mean response time is above this (s).")
    ] = None,
    sla_p99: Annotated[
        float | None, typer.Option(help="Fail (exit 1) if the p99 response time is above this (s).")
    ] = None,
    account: Annotated[
        bool,
        typer.Option(
            help="Measure what each answered turn cost the stack, net of its idle rate (reads it "
            "over --idle s before the run and again after it)."
        ),
    ] = True,
    idle: Annotated[
        float, typer.Option(min=1, help="Seconds of no traffic over which the idle rate is measured.")
    ] = IDLE_S,
    json_out: JsonOption = False,
) -> None:
    """Load the running stack through the gateway with many chat sessions, and report.

    Exit 1 if a session failed, a turn failed or was lost, an event was shown twice or missing, or an SLA was missed. Load shed with 429 is reported apart and is not a failure: sessions retry after Retry-After.

    The report also says how busy this host's CPUs were (over the run and in its busiest 2 s): with the stack on the same host, past 90 % its turns were waiting for a core. Its timeline splits the run into windows by when each message was sent (answered, response mean and p99, acceptance, CPU): the first are the ramp, while sessions arrive.

    A session whose connection fails or whose answer is cut short (a gateway restarting) reconnects with backoff (a quarter of a second, doubling up to 5 s) until the run ends; those are counted as reconnects, not failures.

    The account (unless --no-account): before the run the stack is read over --idle s of no traffic, then again 11 s after it; per answered turn, net of the idle rate, it gives the CPU ms of every process of the stack and of the load client, PostgreSQL commits, rows and WAL fsyncs, Kafka records per topic and requests per kind, Redis commands, OPA decisions, LLM requests and spans, and each one's idle rate; and each process tree's memory (PSS, MiB) as the run started and after it. docs/runbook.md explains how to read it.

    Example: a0ctl load --sessions 500 --duration 60 --think 10 --sla-mean 0.5 --sla-p99 1.5 --json
    """
    tune_gc()  # 500 sessions' worth of objects: no full-heap pauses in the measurement
    report = asyncio.run(
        _load(settings(), sessions, duration, think, prompt, ramp, account=account, idle_s=idle)
    ).check_sla(sla_mean, sla_p99)
    if json_out:
        print_json(report)
    else:
        render(report)
    if not report.ok:
        raise typer.Exit(ExitCode.FAILED)


async def _load(
    config: Settings,
    sessions: int,
    duration: float,
    think: float,
    prompt: str,
    ramp: float | None,
    *,
    account: bool,
    idle_s: float,
) -> LoadReport:
    probe = None
    if account:
        runtime = get_runtime(config)
        probe = await AccountProbe(config, runtime if runtime.name == "local" else None).open()
    try:
        return await run_load(
            config,
            sessions=sessions,
            duration_s=duration,
            think_s=think,
            prompt=prompt,
            ramp_s=ramp,
            account=probe,
            idle_s=idle_s,
        )
    finally:
        if probe is not None:
            await probe.close()
