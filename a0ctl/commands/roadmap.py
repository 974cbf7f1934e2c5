"""``a0ctl roadmap``: run each milestone's acceptance checks and say which are met."""

from __future__ import annotations

from typing import Annotated

import typer

from a0ctl.commands.release import check_table
from a0ctl.console import ExitCode, console, errors_to_exit, print_json, settings
from a0ctl.release.gate import LoadLimits
from a0ctl.roadmap import M5_SLA_MEAN_S, run_roadmap

SEED = LoadLimits()


def roadmap(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print {milestones: [{id, title, met, checks}]}.")
    ] = False,
    sessions: Annotated[int, typer.Option(min=1, help="Sessions of the load run.")] = SEED.sessions,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of the load run.")] = SEED.duration_s,
    think: Annotated[float, typer.Option(min=0, help="Think time of the load run (s).")] = SEED.think_s,
) -> None:
    """Run the acceptance checks of milestones M0-M5: met / not met, with evidence.

    The milestones are those of docs/roadmap.md. Live checks need the stack up: they run real turns and look for their trace in Jaeger and their figures in every dashboard panel's query, and a load run of the seed's shape (500 sessions, --think 10, 60 s; anything lighter is named a shorter profile). Test results are read from the latest test-artifacts/junit-*.xml. Exit 1 while any milestone is not met.

    Example: a0ctl roadmap --json
    """
    with errors_to_exit():
        limits = LoadLimits(
            sessions=sessions, duration_s=duration, think_s=think, sla_mean_s=M5_SLA_MEAN_S, sla_p99_s=None
        )
        result = run_roadmap(settings(), limits)
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
