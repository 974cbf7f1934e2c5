"""``a0ctl db status | migrate``: the versioned schema of a0's PostgreSQL database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from a0ctl.console import console, errors_to_exit, print_json, settings

app = typer.Typer(
    help="The database schema: which revision it is at, and migrating it.", no_args_is_help=True
)


@app.command()
def status(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the schema revision of the database, the head of this version, and what is pending.

    Exit 1 when the database cannot be reached or is at a revision this version does not know; 0 otherwise (`at_head` in --json says whether a migration is pending).

    Example: a0ctl db status --json
    """
    from services.common.schema import schema_status  # alembic is imported by db commands only

    with errors_to_exit():
        result = schema_status(settings())
    if json_out:
        print_json(result)
        return
    table = Table(title="schema revisions", title_justify="left")
    for column in ("revision", "state", "description"):
        table.add_column(column)
    for revision in result.applied:
        table.add_row(revision.revision, "[green]applied[/]", revision.description)
    for revision in result.pending:
        table.add_row(revision.revision, "[yellow]pending[/]", revision.description)
    console.print(table)
    if result.at_head:
        console.print(f"[green]at head[/] ({result.head})", highlight=False)
    else:
        console.print(
            f"[yellow]at {result.current or 'no revision'}, head is {result.head}[/]: run `a0ctl db migrate`",
            highlight=False,
        )


@app.command()
def migrate(
    to: Annotated[
        str, typer.Option("--to", help="Target revision (a downgrade when below the current one).")
    ] = "head",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Upgrade (or downgrade) the schema to a revision, in one transaction.

    `a0ctl up` upgrades to head by itself; --to an older revision rolls the schema back before running the previous release (docs/rollback.md).

    Example: a0ctl db migrate --to 0002
    """
    from services.common.schema import migrate_to

    with errors_to_exit():
        result = migrate_to(settings(), to)
    if json_out:
        print_json(result)
        return
    for step in result.steps:
        arrow = "[green]↑[/]" if step.direction == "upgrade" else "[yellow]↓[/]"
        console.print(f"{arrow} {step.revision} {step.description}", highlight=False)
    moved = f"{result.from_revision or 'no revision'} → {result.to_revision}"
    console.print(f"schema at {result.to_revision}" + (f" ({moved})" if result.steps else " (nothing to do)"))
