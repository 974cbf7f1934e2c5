"""``a0ctl roadmap``: run each milestone's acceptance checks and say which are met."""

from __future__ import annotations

from typing import Annotated

import typer

from a0ctl.commands.release import check_table
from a0ctl.console import ExitCode, console, errors_to_exit, print_json, settings
from a0ctl.roadmap import run_roadmap


def roadmap(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print {milestones: [{id, title, met, checks}]}.")
    ] = False,
) -> None:
    """Run the acceptance checks of milestones M0-M5: met / not met, with evidence.

    The milestones are those of docs/roadmap.md. Live checks need the stack up (they include a 20 s load run); test results are read from the latest test-artifacts/junit-*.xml. Exit 1 while any milestone is not met.

    Example: a0ctl roadmap --json
    """
    with errors_to_exit():
        result = run_roadmap(settings())
    if json_out:
        print_json(result)
    else:
        for milestone in result.milestones:
            state = "[green]met[/]" if milestone.met else "[red]not met[/]"
            console.print(check_table(f"{milestone.id} {milestone.title}: {state}", milestone.checks))
        met = sum(m.met for m in result.milestones)
        console.print(f"{met} of {len(result.milestones)} milestones met", highlight=False)
    if not all(m.met for m in result.milestones):
        raise typer.Exit(ExitCode.FAILED)
