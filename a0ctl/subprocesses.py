"""The one way a0ctl runs another program (mvn, go, initdb, supervisord, docker ...).

:func:`run` logs the command line (``a0ctl -v`` shows it), captures the output with the
terminal escape codes other tools print taken out, and turns a failure — a non-zero exit,
a timeout, a program that does not start — into a :class:`CommandError` that carries the
tail of the output, so the user reads why and not only that it failed.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from a0ctl.errors import StackError

log = logging.getLogger(__name__)

TAIL_LINES = 15
# ECMA-48 escape sequences: CSI (colours, cursor moves: ESC [ ... final byte), OSC
# (titles, links: ESC ] ... BEL or ESC \) and the two-byte ones (ESC followed by one byte).
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_escapes(text: str) -> str:
    """``text`` without terminal escape codes (``mvn -v`` prints its name in bold)."""
    return _ESCAPES.sub("", text)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class CommandError(StackError):
    """A program a0ctl ran failed; ``output`` is its (last) output."""

    def __init__(
        self,
        what: str,
        argv: Sequence[str],
        returncode: int | None,
        output: str,
        *,
        reason: str | None = None,
        service: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        why = reason or f"exit status {returncode}"
        message = f"{what} failed ({why})" + (f":\n{tail(output)}" if output.strip() else "")
        super().__init__(message, service=service, hint=hint)


def run(
    argv: Sequence[str | PathLike[str]],
    *,
    what: str,
    service: str | None = None,
    hint: str | None = None,
    check: bool = True,
    timeout: float | None = None,
    output_file: Path | None = None,
    **popen: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return its result, output decoded and free of escape codes.

    ``what`` names the step for the error (``"initdb"``, ``"resolving Apache Kafka with
    Maven"``). With ``check`` (the default) a non-zero exit raises :class:`CommandError`;
    a timeout or a program that cannot be started always does. ``output_file`` appends
    stdout and stderr to that file instead of capturing them (for a daemon that keeps
    writing after it detaches); the error then carries the file's tail. Further keyword
    arguments go to :func:`subprocess.run` (``env``, ``cwd``, ``input``, ``user`` ...).
    """
    args = [str(arg) for arg in argv]
    command = shlex.join(args)
    log.debug("running: %s", command)
    try:
        if output_file is None:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **popen)
        else:
            output_file.parent.mkdir(parents=True, exist_ok=True)
            with open(output_file, "ab") as out:
                done = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    **popen,
                )
            result = subprocess.CompletedProcess(args, done.returncode, _read(output_file), "")
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise CommandError(
            what, args, None, output, reason=f"no result within {timeout:g} s", service=service, hint=hint
        ) from None
    except OSError as exc:
        raise CommandError(
            what,
            args,
            None,
            "",
            reason=f"{args[0]} could not be started: {exc.strerror or exc}",
            service=service,
            hint=hint,
        ) from None
    result.stdout = strip_escapes(result.stdout or "")
    result.stderr = strip_escapes(result.stderr or "")
    log.debug("exit status %s: %s", result.returncode, command)
    if check and result.returncode != 0:
        raise CommandError(
            what, args, result.returncode, result.stdout + result.stderr, service=service, hint=hint
        )
    return result


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def _read(path: Path, limit: int = 64 * 1024) -> str:
    """The last ``limit`` bytes of a log file: enough for its tail."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
