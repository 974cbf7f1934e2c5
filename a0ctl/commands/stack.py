"""``a0ctl up | down | status | logs | restart | scale | doctor``: the stack's lifecycle."""

from __future__ import annotations

import asyncio
import os
from enum import StrEnum
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.live import Live
from rich.table import Table

from a0ctl import tools
from a0ctl.console import (
    ExitCode,
    JsonOption,
    console,
    err_console,
    errors_to_exit,
    fail,
    print_json,
    settings,
)
from a0ctl.doctor import run_doctor
from a0ctl.runtime import ServiceStatus, get_runtime
from a0ctl.runtime.stack import bring_up

RuntimeOpt = Annotated[
    str | None,
    typer.Option("--runtime", help="local | compose (default: compose when a Docker engine answers)"),
]


def status_table(statuses: list[ServiceStatus]) -> Table:
    table = Table(title="a0 stack", title_justify="left")
    for column in ("service", "state", "endpoint", "pid", "restarts", "since", "health"):
        table.add_column(column)
    for status in statuses:
        mark = "[green]healthy[/]" if status.healthy else f"[red]unhealthy[/] {status.detail}"
        colour = {"running": "green", "starting": "yellow"}.get(status.state, "red")
        table.add_row(
            status.name,
            f"[{colour}]{status.state}[/]",
            status.endpoint,
            str(status.pid or "-"),
            str(status.restarts),
            status.since.astimezone().strftime("%H:%M:%S") if status.since else "-",
            mark if status.state != "stopped" else "-",
        )
    return table


class StackStatus(BaseModel):
    """What ``up``, ``status``, ``restart`` and ``scale`` print with --json."""

    services: list[ServiceStatus]


def not_healthy(statuses: list[ServiceStatus]) -> list[str]:
    """Services that should run but are not healthy (unhealthy, starting, or given up)."""
    return [s.name for s in statuses if s.state != "stopped" and not s.healthy]


class Profile(StrEnum):
    single = "single"
    cluster = "cluster"


def print_statuses(statuses: list[ServiceStatus], json_out: bool) -> None:
    """The statuses as a table or JSON; exit 1 if a service that should run is not healthy."""
    if json_out:
        print_json(StackStatus(services=statuses))
    else:
        console.print(status_table(statuses))
    if not_healthy(statuses):
        raise typer.Exit(ExitCode.FAILED)


def up(
    runtime: RuntimeOpt = None,
    infra_only: Annotated[bool, typer.Option(help="Start only Kafka, Redis, PostgreSQL and OPA.")] = False,
    json_out: JsonOption = False,
    profile: Annotated[
        Profile | None,
        typer.Option(
            help="single: one Kafka node; cluster: three KRaft nodes, topics replicated 3 with "
            "min.insync.replicas 2 (topics.yaml's staging section). Same as A0_PROFILE; keep it "
            "in .env so every command sees the same stack.",
        ),
    ] = None,
) -> None:
    """Start the stack under supervisord (idempotent) and wait until every service is healthy.

    Running it again starts only what is not running. A crashed service is restarted by supervisord, one that stays unhealthy by the watchdog. Exit 1 if a service is not healthy in the end, with --json too.

    Example: a0ctl up --profile cluster
    """
    if profile is not None:
        # A setting like any other: this process, supervisord and every service see it.
        os.environ["A0_PROFILE"] = profile.value
    progress: dict[str, str] = {}

    def render() -> Table:
        table = Table(show_header=False, box=None)
        for name, state in progress.items():
            icon = "[green]✔[/]" if state == "healthy" else "[yellow]…[/]"
            table.add_row(icon, name, state)
        return table

    with errors_to_exit():
        with Live(
            render(), console=err_console if json_out else console, transient=True, refresh_per_second=8
        ) as live:

            def report(name: str, state: str) -> None:
                progress[name] = state
                live.update(render())

            stack_runtime, statuses = bring_up(
                settings(), runtime_name=runtime, progress=report, with_apps=not infra_only
            )
    print_statuses(statuses, json_out)
    gateway = next((s for s in statuses if s.name == "gateway" and s.healthy), None)
    if gateway and not json_out:
        console.print(
            f"chat UI: [bold]http://{gateway.endpoint}/[/]  ·  terminal: a0ctl chat", highlight=False
        )


def down(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the stack's data and logs.")] = False,
    runtime: RuntimeOpt = None,
) -> None:
    """Stop every service, each with its own signal and grace period, then supervisord.

    Data (Kafka, PostgreSQL, Redis) is kept for the next `a0ctl up` unless --purge.

    Example: a0ctl down --purge
    """
    with errors_to_exit():
        stopped = get_runtime(settings(), runtime).down(purge=purge)
    console.print(
        f"stopped: {', '.join(stopped) or 'nothing was running'}" + (" (data purged)" if purge else "")
    )


def status(
    json_out: JsonOption = False,
    runtime: RuntimeOpt = None,
) -> None:
    """Show each service: state, endpoint, pid, restarts, since when, and health.

    States: running, starting, unhealthy, failed (supervisord gave up after repeated quick exits: fix the cause, then `a0ctl restart SERVICE`), stopped. Exit 1 if a service that should run is not healthy.

    Example: a0ctl status --json
    """
    with errors_to_exit():
        statuses = get_runtime(settings(), runtime).status()
    if not json_out:
        line = asyncio.run(tools.mcp_status_line(settings()))
        if line:
            console.print(line, markup=False, highlight=False)
    print_statuses(statuses, json_out)


def logs(
    service: Annotated[
        str, typer.Argument(help="kafka, redis, postgres, opa, gateway, ..., watchdog, supervisord")
    ],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines from the end.")] = 50,
    runtime: RuntimeOpt = None,
) -> None:
    """Print a service's log (rotated by supervisord; -f follows across a rotation).

    Example: a0ctl logs kafka -n 100 -f
    """
    with errors_to_exit():
        try:
            for line in get_runtime(settings(), runtime).logs(service, lines=lines, follow=follow):
                typer.echo(line, nl=False)
        except KeyboardInterrupt:
            pass


def restart(
    service: Annotated[
        str, typer.Argument(help="kafka, redis, postgres, opa, gateway, conversation-worker ...")
    ],
    json_out: JsonOption = False,
    runtime: RuntimeOpt = None,
) -> None:
    """Restart a service of the running stack and wait until it is healthy.

    A name with replicas restarts each in turn. Also brings back a service supervisord gave up on (state `failed`). Exit 1 if it is not healthy in the end.

    Example: a0ctl restart conversation-worker
    """
    with errors_to_exit():
        statuses = get_runtime(settings(), runtime).restart(service)
    print_statuses(statuses, json_out)


def scale(
    service_replicas: Annotated[
        str, typer.Argument(metavar="SERVICE=N", help="conversation-worker=N or tool-executor=N")
    ],
    json_out: JsonOption = False,
    runtime: RuntimeOpt = None,
) -> None:
    """Run N replicas of a worker or tool executor on the running stack.

    The replicas share one consumer group, which rebalances its partitions; removed replicas stop gracefully. The count holds until `a0ctl down`, then A0_WORKER_REPLICAS / A0_TOOLS_REPLICAS apply again. Exit 1 if a replica is not healthy in the end.

    Example: a0ctl scale conversation-worker=3
    """
    service, _, count = service_replicas.partition("=")
    if not count.isdigit():
        fail(
            ExitCode.FAILED,
            f"expected SERVICE=N, got {service_replicas!r}",
            "example: a0ctl scale conversation-worker=3",
        )
    with errors_to_exit():
        statuses = get_runtime(settings(), runtime).scale(service, int(count))
    print_statuses(statuses, json_out)


def doctor(json_out: JsonOption = False) -> None:
    """Check every prerequisite and say how to fix each missing one; exit 1 if one is missing.

    Example: a0ctl doctor
    """
    report = run_doctor(settings())
    if json_out:
        print_json(report)
    else:
        for check in report.checks:
            mark = "[red]✘[/]" if not check.ok else "[yellow]![/]" if check.warning else "[green]✔[/]"
            console.print(f"{mark} {check.name}: ", end="")
            console.print(check.detail, markup=False, highlight=False)
            if (not check.ok or check.warning) and check.fix:
                console.print("    [yellow]fix:[/] ", end="")
                console.print(check.fix, markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(ExitCode.FAILED)


def register(app: typer.Typer) -> None:
    for command in (up, down, status, logs, restart, scale, doctor):
        app.command()(command)
