"""What every command shares: the console, the exit codes, the ``--json`` option, error
rendering (:func:`fail`) and settings loading."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Annotated, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.logging import RichHandler

from a0ctl.errors import StackError
from services.common.errors import A0Error
from services.common.logging import RedactionFilter
from services.common.settings import Settings, load_settings

# Into a pipe or a CI log there are no columns to fit: rich would cut every table value
# to 80 ("127.0.0.1:1…"), so a console that is not a terminal is as wide as its content
# needs, up to this.
PIPE_WIDTH = 1000


def _console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPE_WIDTH)


console = _console()
err_console = _console(stderr=True)


class ExitCode(IntEnum):
    """How an a0ctl command ends; scripts and CI can rely on these."""

    OK = 0
    FAILED = 1
    CHANGES_PENDING = 2
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


# One line each, short enough for an 80-column terminal (see docs/cli.md for the details).
_MEANINGS = {
    ExitCode.OK: "done; everything checked is healthy",
    ExitCode.FAILED: "an error, or something found not ok (a service, check, turn or run)",
    ExitCode.CHANGES_PENDING: "changes pending (topics plan --detailed-exitcode), or bad usage",
    ExitCode.INTERRUPTED: "a chat answer cancelled or interrupted with Ctrl-C",
}


def exit_codes_help() -> str:
    """The exit codes for the CLI's help, from :class:`ExitCode` itself: a list, one code a line."""
    return "Exit codes:\n" + "\n".join(f"  {code.value:<4} {code.meaning}" for code in ExitCode)


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object (for scripts and CI).")
]


def settings() -> Settings:
    return load_settings()


def fail(code: ExitCode, message: str, hint: str | None = None) -> NoReturn:
    """End the command: ``message`` as one red line on stderr, then the ``hint`` (what to do)."""
    err_console.print("[bold red]error:[/] ", end="", markup=True)
    err_console.print(message, markup=False, highlight=False)
    if hint:
        err_console.print("[yellow]hint:[/] ", end="", markup=True)
        err_console.print(hint, markup=False, highlight=False)
    raise typer.Exit(code)


@contextmanager
def errors_to_exit(code: ExitCode = ExitCode.FAILED) -> Iterator[None]:
    """Turn an a0 error raised in the block into :func:`fail`."""
    try:
        yield
    except A0Error as exc:
        who = f"{exc.service}: " if isinstance(exc, StackError) and exc.service else ""
        fail(code, who + exc.message, exc.hint)


def print_json(output: BaseModel) -> None:
    """A command's ``--json`` result: its output model, and nothing else on stdout."""
    typer.echo(output.model_dump_json(indent=2))


def setup_logging(verbose: bool) -> None:
    """a0ctl's own log lines on stderr through rich, with the redaction filter every a0
    logger has; ``--verbose`` adds the debug lines (each command a0ctl runs)."""
    handler = RichHandler(console=err_console, show_time=False, show_path=False)
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("a0ctl").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Client libraries log connection retries as errors while a service starts; a0ctl
    # reports health itself, so keep their noise off the terminal.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # kafka-python (ACLs, SCRAM) warns on every SASL login over a loopback plaintext listener.
    logging.getLogger("kafka").setLevel(logging.ERROR)
