"""The CLI's console, settings loading and error rendering, shared by every command."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console

from services.common.errors import A0Error, StackError
from services.common.settings import Settings, load_settings

# Client libraries log connection retries as errors while a service starts; a0ctl
# reports health itself, so keep their noise off the terminal.
logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
# kafka-python (ACLs, SCRAM) warns on every SASL login over a loopback plaintext listener.
logging.getLogger("kafka").setLevel(logging.ERROR)

console = Console()
err_console = Console(stderr=True)


def settings() -> Settings:
    return load_settings()


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


@contextmanager
def errors_to_exit(code: int = 1) -> Iterator[None]:
    """Turn an a0 error into one red line (plus its hint) and a non-zero exit code."""
    try:
        yield
    except A0Error as exc:
        who = f"{exc.service}: " if isinstance(exc, StackError) and exc.service else ""
        err_console.print(f"[bold red]error:[/] {who}", end="", markup=True)
        err_console.print(exc.message, markup=False, highlight=False)
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}", markup=True, highlight=False)
        raise typer.Exit(code) from None


def print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    typer.echo(json.dumps(data, indent=2, default=str))


Render = Callable[[Any], None]
