"""``a0ctl tools check | list | call``: the tools the model may call, MCP servers' included."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

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

app = typer.Typer(
    help="Tools: check mcp.yaml, list every tool with its source, state and policy, call one through the executor.",
    no_args_is_help=True,
)


@app.command()
def check(json_out: JsonOption = False) -> None:
    """Check mcp.yaml: its fields and tool names, each stdio server's command and bound paths, each HTTP server's URL (the egress policy, then whether it answers).

    Exits 1 with every problem, each with its place in the file.

    Example: a0ctl tools check
    """
    with errors_to_exit():
        report = asyncio.run(tools.check(settings()))
    if json_out:
        print_json(report)
    else:
        for warning in report.warnings:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        for problem in report.problems:
            err_console.print("[bold red]error:[/] ", end="")
            err_console.print(problem, markup=False, highlight=False)
        if report.ok:
            console.print(
                f"[green]ok[/] {report.file}: {len(report.servers)} servers, {len(report.tools)} tools",
                highlight=False,
            )
    if not report.ok:
        raise typer.Exit(ExitCode.FAILED)


@app.command("list")
def list_command(
    user: Annotated[str, typer.Option("--user", "-u", help="Whose policy decision to show.")] = "user",
    json_out: JsonOption = False,
) -> None:
    """Every tool: its name as the model sees it, its source (built-in, entry point, MCP server), its state and what the policy answers for --user.

    Example: a0ctl tools list --user alice --json
    """
    with errors_to_exit():
        listing = asyncio.run(tools.list_tools(settings(), user))
    if json_out:
        print_json(listing)
        return
    table = Table(title=f"tools (policy for user {user})", title_justify="left")
    for column in ("name", "source", "state", "policy"):
        table.add_column(column, overflow="fold")
    for row in listing.tools:
        colour = "green" if row.state == "ready" else "yellow"
        # Text, never markup: a reason may hold brackets, a server's names anything.
        table.add_row(Text(row.name), Text(row.source), Text(row.state, style=colour), Text(row.policy))
    console.print(table)


@app.command()
def call(
    name: Annotated[
        str, typer.Argument(help="The tool's name as the model sees it, e.g. time__get_current_time.")
    ],
    user: Annotated[
        str, typer.Option("--user", "-u", help="Who calls: the policy decides for this user.")
    ] = "user",
    args: Annotated[str, typer.Option("--args", help="The arguments, a JSON object.")] = "{}",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the result.")] = 130.0,
    json_out: JsonOption = False,
) -> None:
    """Call one tool through the tool executor over Kafka, as a model's call goes (policy included), and print its result.

    Exits 1 when the tool fails or is refused.

    Example: a0ctl tools call time__get_current_time --user alice --args '{"timezone": "Europe/Paris"}'
    """
    try:
        arguments = tools.parse_arguments(args)
    except ValueError as exc:
        fail(ExitCode.CHANGES_PENDING, str(exc))
    with errors_to_exit():
        result = asyncio.run(tools.call(settings(), name, user, arguments, timeout))
    if json_out:
        print_json(result)
    elif result.error is None:
        console.print(result.output or "", markup=False, highlight=False)
    if result.error is not None:
        if not json_out:
            fail(ExitCode.FAILED, f"{name}: {result.error.code}: {result.error.message}")
        raise typer.Exit(ExitCode.FAILED)
