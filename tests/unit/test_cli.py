"""The CLI's own conventions: help written as paragraphs, documented exit codes, one JSON
object on stdout, and every program it runs logged and its failure explained."""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from a0ctl import subprocesses
from a0ctl.commands.stack import print_statuses
from a0ctl.console import ExitCode
from a0ctl.main import app
from a0ctl.runtime import ServiceStatus
from tests.support.cli import a0ctl

pytestmark = pytest.mark.unit


def commands(command: Any, path: str = "a0ctl") -> Iterator[tuple[str, Any]]:
    """Every command under ``command`` (typer's own click objects), with its command line."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, f"{path} {name}")


ALL_COMMANDS = list(commands(typer.main.get_command(app)))


@pytest.mark.parametrize(("path", "command"), ALL_COMMANDS, ids=[path for path, _ in ALL_COMMANDS])
def test_help_is_written_in_paragraphs_with_an_example(path: str, command: Any) -> None:
    # rich keeps each line break it finds: a paragraph wrapped by hand in the source comes
    # out broken mid-sentence at any other width. A paragraph is one line; only a list
    # (lines indented under a heading ending in a colon) has more.
    help_text = inspect.cleandoc(command.help or "")
    for paragraph in help_text.split("\n\n"):
        heading, *items = paragraph.split("\n")
        assert not items or (heading.endswith(":") and all(i.startswith("  ") for i in items)), (
            f"`{path} --help` has a hard-wrapped paragraph: {paragraph!r}"
        )
    for param in command.params:
        assert "\n" not in (getattr(param, "help", None) or ""), f"{path} {param.name}"
    if not hasattr(command, "commands") or path == "a0ctl":
        example = help_text.rpartition("\n\nExample: ")[2]
        assert "a0ctl" in example and example != help_text, f"`{path} --help` shows no example"


@pytest.mark.parametrize("columns", [80, 120])
def test_command_list_wraps_only_where_the_terminal_ends(columns: int) -> None:
    result = a0ctl("--help", env={"COLUMNS": str(columns)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line and line.startswith("╭"))
    rows = [line[2:-2] for line in lines[start + 1 :] if line.startswith("│")]
    rows = rows[: next((i for i, r in enumerate(rows) if not r.strip()), len(rows))]
    column = len(rows[0]) - len(rows[0].split(None, 1)[1])  # where the summaries start
    width = len(rows[0]) - column
    for row, following in zip(rows, rows[1:], strict=False):
        if following[:column].strip():
            continue  # the next row is the next command
        text, next_word = row[column:].rstrip(), following[column:].split()[0]
        assert len(text) + 1 + len(next_word) > width, f"broken before the edge at {columns} columns: {row!r}"
    for code in ExitCode:
        assert f"  {code.value} " in result.stdout, f"exit code {code.value} not in `a0ctl --help`"


def test_exit_codes_keep_their_values() -> None:
    # Scripts and CI compare against these numbers.
    assert [(c.name, c.value) for c in ExitCode] == [
        ("OK", 0),
        ("FAILED", 1),
        ("CHANGES_PENDING", 2),
        ("INTERRUPTED", 130),
    ]


def test_json_output_is_one_object_with_escape_codes_removed() -> None:
    result = a0ctl("doctor", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == (0 if report["ok"] else 1)
    mvn = next(check for check in report["checks"] if check["name"] == "mvn")
    assert mvn["ok"] and mvn["detail"].startswith("Apache Maven"), mvn
    assert "\x1b" not in result.stdout and "[1m" not in result.stdout


def test_doctor_shows_tool_versions_without_escape_codes() -> None:
    result = a0ctl("doctor", env={"COLUMNS": "200"})
    mvn = next(line for line in result.stdout.splitlines() if "mvn:" in line)
    assert "Apache Maven" in mvn and "[1m" not in mvn and "\x1b" not in mvn, mvn


def test_strip_escapes_removes_colours_cursor_moves_and_titles() -> None:
    raw = "\x1b[1mApache Maven 3.8.7\x1b[m\x1b[2K\x1b]0;title\x07 (\x1b[32;1mok\x1b[0m)"
    assert subprocesses.strip_escapes(raw) == "Apache Maven 3.8.7 (ok)"


def test_a_program_that_fails_raises_with_the_tail_of_its_output_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = "import sys\nfor i in range(40): print('line', i)\nsys.exit(3)"
    caplog.set_level(logging.DEBUG, logger="a0ctl")
    with pytest.raises(subprocesses.CommandError) as failed:
        subprocesses.run([sys.executable, "-c", script], what="the step", service="kafka", hint="do this")
    error = failed.value
    assert error.returncode == 3 and error.service == "kafka" and error.hint == "do this"
    assert error.message.startswith("the step failed (exit status 3):\nline 25")
    assert error.message.endswith("line 39") and "line 24" not in error.message
    assert any("running: " in r.getMessage() and "sys.exit(3)" in r.getMessage() for r in caplog.records)


def test_a_program_that_hangs_or_cannot_start_raises_and_says_why(tmp_path: Path) -> None:
    with pytest.raises(subprocesses.CommandError, match=r"no result within 0.2 s"):
        subprocesses.run([sys.executable, "-c", "import time; time.sleep(30)"], what="waiting", timeout=0.2)
    with pytest.raises(subprocesses.CommandError, match="could not be started"):
        subprocesses.run([str(tmp_path / "missing")], what="a missing program")
    unchecked = subprocesses.run([sys.executable, "-c", "raise SystemExit(4)"], what="x", check=False)
    assert unchecked.returncode == 4


def test_a_daemon_output_file_carries_the_tail_into_the_error(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "daemon.log"
    script = "import sys\nprint('\\x1b[31mport in use\\x1b[0m')\nsys.exit(1)"
    with pytest.raises(subprocesses.CommandError, match=r"(?s)failed.*port in use$"):
        subprocesses.run([sys.executable, "-c", script], what="starting it", output_file=log)
    assert "port in use" in log.read_text()


def test_an_error_is_one_red_line_with_a_hint_and_exit_code_1() -> None:
    result = a0ctl("scale", "conversation-worker")
    assert result.returncode == ExitCode.FAILED and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: expected SERVICE=N, got 'conversation-worker'",
        "hint: example: a0ctl scale conversation-worker=3",
    ]


def test_json_status_with_a_service_not_healthy_still_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    # `up --json`, `status --json`, `restart --json` and `scale --json` all end here.
    statuses = [
        ServiceStatus(name="kafka", runtime="local", state="running", healthy=True, endpoint="h:1"),
        ServiceStatus(name="redis", runtime="local", state="unhealthy", healthy=False, endpoint="h:2"),
    ]
    with pytest.raises(typer.Exit) as ended:
        print_statuses(statuses, json_out=True)
    assert ended.value.exit_code == ExitCode.FAILED
    printed = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["healthy"]) for s in printed["services"]] == [("kafka", True), ("redis", False)]
    print_statuses(statuses[:1], json_out=True)  # all healthy: no exit


def test_a_service_process_loads_the_run_command_alone() -> None:
    # supervisord and the containers start each service as `a0ctl run SERVICE`: the other
    # commands' modules (the load client, the runtimes, the roadmap ...) stay out of it.
    probe = (
        "import sys\n"
        "from a0ctl.__main__ import main\n"
        "sys.argv = ['a0ctl', 'run', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in sys.modules if m.startswith('a0ctl.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = done.stdout.strip().splitlines()[-1]
    assert "a0ctl.commands.run" in loaded
    for other in ("a0ctl.main", "a0ctl.commands.load", "a0ctl.runtime", "a0ctl.load", "a0ctl.roadmap"):
        assert f"'{other}'" not in loaded, f"{other} is loaded by `a0ctl run`"
