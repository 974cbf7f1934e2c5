"""``a0ctl dlq list | show | replay | discard``: the records the services could not handle."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.table import Table

from a0ctl.console import ExitCode, JsonOption, console, errors_to_exit, fail, print_json, settings
from a0ctl.dlq import discard as discard_entries
from a0ctl.dlq import replay as replay_entries
from services.common.dlq import ActionResult, DeadLetter, DeadLetters, list_dead_letters, show_dead_letter

app = typer.Typer(
    help="Dead letters: list, explain, replay once or discard what the services could not handle.",
    no_args_is_help=True,
)

TopicOpt = Annotated[
    str | None,
    typer.Option(
        "--topic",
        "-t",
        help="One dead-letter topic: dlq.conversation-worker, dlq.tool-executor, dlq.gateway.",
    ),
]
EntryArg = Annotated[
    str | None, typer.Argument(help="The entry's id, as `dlq list` shows it (TOPIC:PARTITION:OFFSET).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every pending entry (of --topic, or of every topic).")]


def _source(entry: DeadLetter) -> str:
    if entry.source_topic is None:
        return "-"
    return f"{entry.source_topic}[{entry.source_partition}]@{entry.source_offset}"


@app.command("list")
def list_command(
    topic: TopicOpt = None,
    handled: Annotated[
        bool, typer.Option("--all", help="Also entries already replayed or discarded.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """The dead letters still pending, oldest first: where each came from, why, when, and which replica.

    Example: a0ctl dlq list --topic dlq.conversation-worker --json
    """
    with errors_to_exit():
        entries = asyncio.run(list_dead_letters(settings(), topic, handled=handled))
    if json_out:
        print_json(DeadLetters(entries=entries))
        return
    if not entries:
        console.print("[green]No dead letters.[/]" if not handled else "No dead letters on the topic.")
        return
    table = Table(title="dead letters", title_justify="left")
    for column in ("id", "source", "time", "replica", "replays", "state", "reason"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            entry.id,
            _source(entry),
            entry.time.isoformat(timespec="seconds"),
            entry.replica or "-",
            str(entry.replay_count),
            entry.state,
            entry.reason,
        )
    console.print(table)


@app.command()
def show(
    entry: Annotated[str, typer.Argument(help="The entry's id (TOPIC:PARTITION:OFFSET).")],
    json_out: JsonOption = False,
) -> None:
    """One dead letter in full: source, reason, replica, replays, what was done with it, and the record (secrets masked).

    Example: a0ctl dlq show dlq.conversation-worker:0:7
    """
    with errors_to_exit():
        found = asyncio.run(show_dead_letter(settings(), entry))
    if json_out:
        print_json(found)
        return
    table = Table(title=found.id, title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for field, value in (
        ("source", _source(found)),
        ("reason", found.reason),
        ("time", found.time.isoformat(timespec="seconds")),
        ("group", found.group or "-"),
        ("replica", found.replica or "-"),
        ("key", found.key or "-"),
        ("replays before", str(found.replay_count)),
        ("state", found.state),
    ):
        table.add_row(field, value)
    for audit in found.history:
        where = f" → {audit.replayed_to}" if audit.replayed_to else ""
        forced = " (forced)" if audit.forced else ""
        table.add_row(audit.action, f"{audit.by} at {audit.at.isoformat(timespec='seconds')}{forced}{where}")
    console.print(table)
    body = json.dumps(found.envelope, indent=2) if found.envelope is not None else found.raw or ""
    console.print(body, markup=False, highlight=False)


def _render(result: ActionResult, verb: str) -> None:
    for audit in result.done:
        where = f" → {audit.replayed_to}" if audit.replayed_to else ""
        console.print(f"{verb} {audit.entry}{where}", highlight=False)
    for entry, why in result.skipped.items():
        console.print(f"[yellow]skipped[/] {entry}: {why}", highlight=False)
    if not result.done and not result.skipped:
        console.print("Nothing pending.")


def _one_or_all(entry: str | None, every: bool) -> None:
    if (entry is None) == (not every):
        fail(ExitCode.CHANGES_PENDING, "name one entry, or --all", "see `a0ctl dlq list` for the ids")


@app.command()
def replay(
    entry: EntryArg = None,
    every: AllOpt = False,
    topic: TopicOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replay an entry already replayed or discarded, or one that failed again after a replay.",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Put dead letters back on their source topics, with their keys and headers, once; each replay is recorded (who, when).

    A record that fails again comes back with its replay count and is not replayed again without --force. The consumers drop a record they already handled (by envelope id), so a replay is answered once.

    Example: a0ctl dlq replay dlq.conversation-worker:0:7
    """
    _one_or_all(entry, every)
    with errors_to_exit():
        result = asyncio.run(replay_entries(settings(), entry, topic, force=force))
    if entry is not None and result.skipped:
        fail(ExitCode.FAILED, f"{entry} not replayed: {result.skipped[entry]}")
    if json_out:
        print_json(result)
    else:
        _render(result, "replayed")


@app.command()
def discard(
    entry: EntryArg = None,
    every: AllOpt = False,
    topic: TopicOpt = None,
    json_out: JsonOption = False,
) -> None:
    """Mark dead letters as handled without replaying them; each discard is recorded (who, when).

    Example: a0ctl dlq discard --all --topic dlq.gateway
    """
    _one_or_all(entry, every)
    with errors_to_exit():
        result = asyncio.run(discard_entries(settings(), entry, topic))
    if entry is not None and result.skipped:
        fail(ExitCode.FAILED, f"{entry} not discarded: {result.skipped[entry]}")
    if json_out:
        print_json(result)
    else:
        _render(result, "discarded")
