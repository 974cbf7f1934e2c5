"""``a0ctl release check | tag``: the release gate, and a tag only when it passed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from a0ctl.checks import Check
from a0ctl.console import ExitCode, console, errors_to_exit, print_json, settings
from a0ctl.release.evidence import ReleaseEvidence, run_check, tag_release
from a0ctl.release.gate import LoadLimits

app = typer.Typer(help="The release gate and release tags.", no_args_is_help=True)
DEFAULTS = LoadLimits()


def check_table(title: str, checks: list[Check]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("check", "result", "seconds", "detail"):
        table.add_column(column)
    for check in checks:
        mark = "[green]pass[/]" if check.ok else "[red]FAIL[/]"
        table.add_row(check.name, mark, f"{check.seconds:g}", check.detail)
    return table


def render(evidence: ReleaseEvidence) -> None:
    console.print(check_table(f"release check of {evidence.git.commit[:12]}", evidence.checks))
    console.print(f"load: {evidence.load.describe()}", highlight=False)
    if evidence.ok:
        console.print("[green]release check passed[/]: `a0ctl release tag VERSION` may tag this commit")
    else:
        console.print("[red]release check failed[/]: nothing may be tagged until it passes")


@app.command()
def check(
    sessions: Annotated[int, typer.Option(min=1, help="Sessions of the load run.")] = DEFAULTS.sessions,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of the load run.")] = DEFAULTS.duration_s,
    think: Annotated[float, typer.Option(min=0, help="Think time of the load run (s).")] = DEFAULTS.think_s,
    sla_mean: Annotated[
        float | None, typer.Option(help="Most mean response time the load run may have (s).")
    ] = DEFAULTS.sla_mean_s,
    sla_p99: Annotated[
        float | None, typer.Option(help="Most p99 response time the load run may have (s).")
    ] = DEFAULTS.sla_p99_s,
    json_out: Annotated[bool, typer.Option("--json", help="Print the evidence as JSON.")] = False,
) -> None:
    """Run the release gate on the running stack: doctor, migrations at head, topics plan without drift, smoke, and a load run within the SLA. Exit 1 if any check fails.

    The load run is the seed's shape by default (500 sessions, --think 10, 60 s; SLA mean < 0.5 s, p99 < 1.5 s, as docs/runbook.md says). Fewer sessions, a shorter run or a longer think time is a shorter profile, and the output names it so.

    The evidence is kept under the state dir (release/last-check.json) for `release tag`.

    Example: a0ctl release check
    """
    limits = LoadLimits(
        sessions=sessions, duration_s=duration, think_s=think, sla_mean_s=sla_mean, sla_p99_s=sla_p99
    )
    with errors_to_exit():
        evidence = run_check(settings(), limits)
    if json_out:
        print_json(evidence)
    else:
        render(evidence)
    if not evidence.ok:
        raise typer.Exit(ExitCode.FAILED)


@app.command()
def tag(
    version: Annotated[str, typer.Argument(help="vMAJOR.MINOR.PATCH[-PRE], e.g. v0.1.0-rc.1")],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Create an annotated git tag of HEAD, with release notes from the last release check.

    Refused (exit 1) without a passed check of exactly this commit and a clean tree.

    Example: a0ctl release check && a0ctl release tag v0.1.0-rc.1
    """
    with errors_to_exit():
        result = tag_release(settings(), version)
    if json_out:
        print_json(result)
        return
    console.print(
        f"[green]tagged[/] {result.version} at {result.commit[:12]}; notes: {result.notes_file}",
        highlight=False,
    )
