"""``a0ctl smoke``: is the running stack healthy, end to end?"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from a0ctl.console import ExitCode, JsonOption, console, print_json, settings
from a0ctl.smoke.checks import run_smoke


def smoke(
    json_out: JsonOption = False,
    infra_only: Annotated[
        bool, typer.Option(help="Check only Kafka, topics, Redis, PostgreSQL and OPA.")
    ] = False,
    lag_threshold: Annotated[
        float, typer.Option(help="Most seconds a consumer group's oldest unconsumed record may wait.")
    ] = 5.0,
) -> None:
    """Run one check per concern against the running stack; exit 1 if any fails.

    With --json: {"ok": bool, "checks": [{"name", "ok", "detail"}]}.

    Example: a0ctl smoke --json
    """
    report = asyncio.run(run_smoke(settings(), lag_threshold_s=lag_threshold, with_services=not infra_only))
    if json_out:
        print_json(report)
    else:
        for check in report.checks:
            mark = "[green]✔[/]" if check.ok else "[red]✘[/]"
            console.print(f"{mark} {check.name}: ", end="")
            console.print(check.detail, markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(ExitCode.FAILED)
