"""``a0ctl token``: mint a development JWT for the gateway."""

from __future__ import annotations

from typing import Annotated

import typer

from a0ctl.console import errors_to_exit, settings
from services.common.auth import mint_token


def token(
    user: Annotated[str, typer.Option("--user", "-u", help="The user the token speaks for.")],
    role: Annotated[
        list[str] | None, typer.Option("--role", help="A role (repeatable); default: user.")
    ] = None,
    ttl: Annotated[
        int | None, typer.Option(help="Lifetime in seconds (default: A0_GATEWAY_TOKEN_TTL_S).")
    ] = None,
) -> None:
    """Print a bearer token signed with the gateway's key (from conf/env).

    Example: curl -H "Authorization: Bearer $(a0ctl token --user alice)" http://127.0.0.1:18080/v1/conversations
    """
    with errors_to_exit():
        typer.echo(mint_token(settings(), user, role, ttl))
