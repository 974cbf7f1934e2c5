"""``a0ctl creds set | list | rm | rotate-key``: LLM provider keys, encrypted at rest."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.table import Table

from a0ctl import creds as logic
from a0ctl.console import ExitCode, JsonOption, console, errors_to_exit, fail, print_json, settings
from services.common.credentials import CredentialView

app = typer.Typer(help="LLM provider credentials: stored encrypted, shown masked.", no_args_is_help=True)


class CredentialList(BaseModel):
    """What ``creds list --json`` prints: keys masked, never the key itself."""

    credentials: list[CredentialView]


UserOpt = Annotated[str, typer.Option("--user", "-u", help="Whose credential (the gateway's user id).")]


@app.command("set")
def set_(
    provider: Annotated[str, typer.Argument(help="Provider name, e.g. openai.")],
    user: UserOpt,
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")],
    model: Annotated[str, typer.Option(help="Model to use.")],
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip checking the key against /models.")
    ] = False,
) -> None:
    """Store a key. It is read from a hidden prompt, or from stdin when piped — never an argument.

    Example: printf '%s' "$KEY" | a0ctl creds set openai --user alice --base-url https://api.openai.com/v1 --model gpt-4o-mini
    """
    api_key = (
        sys.stdin.readline() if not sys.stdin.isatty() else typer.prompt("API key", hide_input=True)
    ).strip()
    if not api_key:
        fail(ExitCode.FAILED, "no API key given", "type it at the prompt, or pipe it on stdin")
    with errors_to_exit():
        view = asyncio.run(
            logic.set_credential(
                settings(),
                user=user,
                provider=provider,
                base_url=base_url,
                model=model,
                api_key=api_key,
                verify=not no_verify,
            )
        )
    console.print(
        f"[green]stored[/] {view.provider} for {user}: {view.key_masked} ({view.base_url}, {view.model})",
        highlight=False,
    )


@app.command("list")
def list_(user: UserOpt, json_out: JsonOption = False) -> None:
    """List a user's credentials, keys masked.

    Example: a0ctl creds list --user alice
    """
    with errors_to_exit():
        views = asyncio.run(logic.list_credentials(settings(), user=user))
    if json_out:
        print_json(CredentialList(credentials=views))
        return
    table = Table(title=f"credentials of {user}", title_justify="left")
    for column in ("provider", "base url", "model", "key", "updated"):
        table.add_column(column)
    for v in views:
        table.add_row(
            v.provider, v.base_url, v.model, v.key_masked, v.updated_at.isoformat(timespec="seconds")
        )
    console.print(table)


@app.command("rm")
def rm(provider: Annotated[str, typer.Argument(help="Provider name.")], user: UserOpt) -> None:
    """Remove a stored credential.

    Example: a0ctl creds rm openai --user alice
    """
    with errors_to_exit():
        removed = asyncio.run(logic.remove_credential(settings(), user=user, provider=provider))
    if not removed:
        fail(ExitCode.FAILED, f"{user} has no {provider} credential", f"a0ctl creds list --user {user}")
    console.print(f"removed {provider} for {user}")


@app.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every credential under a new key-encryption key, atomically.

    Example: a0ctl creds rotate-key
    """
    with errors_to_exit():
        count = asyncio.run(logic.rotate_key(settings()))
    console.print(f"[green]rotated[/]: {count} credential(s) re-encrypted under the new key")
