"""The a0ctl entry point: one sub-app per command group."""

from __future__ import annotations

from typing import Annotated

import typer

from a0ctl.commands import (
    chat,
    creds,
    db,
    deploy,
    dlq,
    load,
    observe,
    release,
    roadmap,
    run,
    smoke,
    stack,
    token,
    tools,
    topics,
)
from a0ctl.console import exit_codes_help, setup_logging

# Help texts are written one paragraph per line: rich keeps a line break where it finds
# one and wraps the rest to the terminal's width.
HELP = "\n\n".join(
    [
        "Bring the a0 stack up on real services and operate it.",
        "Commands that CI reads take --json and print one JSON object on stdout; errors go to stderr as one red line with a hint.",
        exit_codes_help(),
        "Example: a0ctl up && a0ctl smoke",
    ]
)

app = typer.Typer(name="a0ctl", no_args_is_help=True, add_completion=False, rich_markup_mode="rich")


@app.callback(help=HELP)
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also log what a0ctl does, e.g. each program it runs.")
    ] = False,
) -> None:
    setup_logging(verbose)


stack.register(app)
app.add_typer(topics.app, name="topics")
app.add_typer(creds.app, name="creds")
app.add_typer(deploy.app, name="deploy")
app.add_typer(db.app, name="db")
app.add_typer(release.app, name="release")
app.add_typer(dlq.app, name="dlq")
app.add_typer(tools.app, name="tools")
app.command()(smoke.smoke)
app.command()(run.run)
app.command()(token.token)
app.command()(chat.chat)
app.command()(load.load)
app.command()(observe.trace)
app.command()(observe.top)
app.command()(roadmap.roadmap)

if __name__ == "__main__":
    app()
