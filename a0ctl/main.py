"""The a0ctl entry point: one sub-app per command group."""

from __future__ import annotations

import typer

from a0ctl.commands import chat, creds, deploy, load, run, smoke, stack, token, topics

app = typer.Typer(
    name="a0ctl",
    help="Bring the a0 stack up on real services and operate it.\n\nExample: a0ctl up && a0ctl smoke",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
stack.register(app)
app.add_typer(topics.app, name="topics")
app.add_typer(creds.app, name="creds")
app.add_typer(deploy.app, name="deploy")
app.command()(smoke.smoke)
app.command()(run.run)
app.command()(token.token)
app.command()(chat.chat)
app.command()(load.load)

if __name__ == "__main__":
    app()
