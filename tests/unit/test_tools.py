"""Unit tests of the tool executor's built-in tools, sandbox and plug-in loader.

run_python tests start real child processes (no mocks) and check that none survives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.settings import ToolSettings, load_settings
from services.tool_executor.sandbox import TRUNCATED_MARKER
from services.tool_executor.sandbox_limits import SandboxLimits
from services.tool_executor.tools import (
    Tool,
    ToolContext,
    ToolError,
    ToolSpec,
    calculator,
    current_time,
    load_tools,
    run_python,
)
from tests.support.sandbox import process_tree, runs
from tests.support.waiting import eventually

pytestmark = pytest.mark.unit


def _ctx(limits: SandboxLimits | None = None, on_spawn: Callable[[int], None] | None = None) -> ToolContext:
    return ToolContext(
        call_id="call-1",
        user_id="user-1",
        conversation_id="conv-1",
        limits=limits or SandboxLimits(),
        on_spawn=on_spawn,
    )


def _assert_gone(pid: int) -> None:
    """Neither the child nor any member of its process group exists any more."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


class _Spawned:
    """An on_spawn callback that remembers the pid and wakes a waiter."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.event = asyncio.Event()

    def __call__(self, pid: int) -> None:
        self.pids.append(pid)
        self.event.set()


# --- calculator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("6*7", "42"),
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("10 / 4", "2.5"),
        ("4 / 2", "2"),
        ("7 // 2", "3"),
        ("7 % 3", "1"),
        ("2 ** 10", "1024"),
        ("2 ** -1", "0.5"),
        ("-(3) + +2", "-1"),
        ("sqrt(16)", "4"),
        ("abs(-5)", "5"),
        ("round(3.14159, 2)", "3.14"),
        ("round(2.6)", "3"),
        ("cos(0) + sin(0) + tan(0)", "1"),
        ("log(e)", "1"),
        ("log(8, 2)", "3"),
        ("exp(0)", "1"),
        ("0.1 + 0.2", "0.30000000000000004"),
        ("2 ** 100", str(2**100)),
    ],
)
async def test_calculator_ok(expression: str, expected: str) -> None:
    assert await calculator.run({"expression": expression}, _ctx()) == expected


async def test_calculator_constants() -> None:
    assert (await calculator.run({"expression": "pi"}, _ctx())).startswith("3.14159")
    assert (await calculator.run({"expression": "e"}, _ctx())).startswith("2.71828")


@pytest.mark.parametrize("expression", ["1 / 0", "1 // 0", "5 % 0", "0 ** -1"])
async def test_calculator_division_by_zero(expression: str) -> None:
    with pytest.raises(ToolError, match="division by zero") as err:
        await calculator.run({"expression": expression}, _ctx())
    assert err.value.code == "tool_failed"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "not allowed"),
        ("eval('1')", "not allowed"),
        ("x + 1", "unknown name"),
        ("os.system('true')", "not allowed"),
        ("(1).real", "attribute"),
        ("'abc'", "only numbers"),
        ("True + 1", "only numbers"),
        ("[1, 2]", "unsupported"),
        ("(lambda: 1)()", "not allowed"),
        ("2 ** 10000", "exponent too large"),
        ("9 ** 9 ** 9", "exponent too large"),
        ("(9 ** 999) ** 999", "too large"),
        ("1e308 * 10", "too large"),
        ("round(5, -1000000)", "digits"),
        ("abs(x=1)", "keyword"),
        ("sqrt(-1)", "math"),
        ("(-8) ** (1/3)", "real number"),
        ("1 +", "invalid expression"),
        ("1" + "+1" * 300, "too long"),
    ],
)
async def test_calculator_rejects(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        await calculator.run({"expression": expression}, _ctx())


async def test_calculator_bad_arguments() -> None:
    with pytest.raises(ToolError, match="missing argument"):
        await calculator.run({}, _ctx())
    with pytest.raises(ToolError, match="must be a string"):
        await calculator.run({"expression": 42}, _ctx())


# --- current_time ----------------------------------------------------------------------


async def test_current_time_default_utc() -> None:
    text = await current_time.run({}, _ctx())
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0)
    assert abs(parsed - datetime.now(UTC)) < timedelta(seconds=5)


async def test_current_time_timezone() -> None:
    text = await current_time.run({"timezone": "Asia/Kolkata"}, _ctx())
    assert text.endswith("+05:30")
    assert abs(datetime.fromisoformat(text) - datetime.now(UTC)) < timedelta(seconds=5)


async def test_current_time_unknown_timezone() -> None:
    with pytest.raises(ToolError, match="unknown timezone"):
        await current_time.run({"timezone": "Mars/Olympus_Mons"}, _ctx())
    with pytest.raises(ToolError, match="unknown timezone"):
        await current_time.run({"timezone": "../../etc/passwd"}, _ctx())


# --- run_python ------------------------------------------------------------------------


async def test_run_python_prints_output() -> None:
    out = await run_python.run({"code": "import sys\nprint(6 * 7)\nprint('warn', file=sys.stderr)"}, _ctx())
    assert out == "42\nwarn\n"


async def test_run_python_nonzero_exit_reports_error() -> None:
    with pytest.raises(ToolError) as err:
        await run_python.run({"code": "print('before')\n1 / 0"}, _ctx())
    message = str(err.value)
    assert "exited with code 1" in message
    assert "ZeroDivisionError: division by zero" in message
    assert '"<string>"' not in message  # bootstrap frames are hidden


async def test_run_python_exit_code() -> None:
    with pytest.raises(ToolError, match="exited with code 3"):
        await run_python.run({"code": "raise SystemExit(3)"}, _ctx())


async def test_run_python_wall_timeout_kills_process() -> None:
    spawned = _Spawned()
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"timed out after 1s") as err:
        await run_python.run(
            {"code": "while True: pass"}, _ctx(SandboxLimits(wall_seconds=1, cpu_seconds=5), spawned)
        )
    assert time.monotonic() - started < 4
    assert err.value.code == "timeout"
    assert len(spawned.pids) == 1
    _assert_gone(spawned.pids[0])


async def test_run_python_cpu_limit() -> None:
    spawned = _Spawned()
    with pytest.raises(ToolError, match="CPU") as err:
        await run_python.run(
            {"code": "while True: pass"}, _ctx(SandboxLimits(cpu_seconds=1, wall_seconds=10), spawned)
        )
    assert err.value.code == "cpu_limit"
    _assert_gone(spawned.pids[0])


async def test_run_python_memory_limit() -> None:
    with pytest.raises(ToolError, match="memory") as err:
        await run_python.run({"code": "x = bytearray(1024 ** 3)"}, _ctx(SandboxLimits(memory_mb=128)))
    assert err.value.code == "memory_limit"


async def test_run_python_output_truncated() -> None:
    out = await run_python.run({"code": "print('x' * 100_000)"}, _ctx(SandboxLimits(output_bytes=1000)))
    assert out.endswith(TRUNCATED_MARKER)
    assert out.count("x") == 1000


_NET_PROBE = """\
import socket
for attempt in (lambda: socket.create_connection(("127.0.0.1", 9), timeout=2),
                lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9))):
    try:
        attempt()
        print("CONNECTED")
    except OSError as exc:
        print(type(exc).__name__, exc)
"""


async def test_run_python_network_blocked() -> None:
    out = await run_python.run({"code": _NET_PROBE}, _ctx())
    lines = out.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("PermissionError") for line in lines), out
    assert "ConnectionRefused" not in out


async def test_run_python_cannot_spawn_processes() -> None:
    # A subprocess would be a fresh interpreter without the audit hook.
    code = "import subprocess\ntry:\n    subprocess.run(['true'])\nexcept PermissionError:\n    print('no')"
    assert await run_python.run({"code": code}, _ctx()) == "no\n"


async def test_run_python_asyncio_still_works() -> None:
    code = "import asyncio\nasync def f():\n    return 5\nprint(asyncio.run(f()))"
    assert await run_python.run({"code": code}, _ctx()) == "5\n"


async def test_run_python_env_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A0_TEST_SECRET", "hunter2")
    out = await run_python.run({"code": "import os\nprint(dict(os.environ))"}, _ctx())
    assert "PATH" in out
    assert "A0_TEST_SECRET" not in out
    assert "hunter2" not in out


async def test_run_python_scratch_dir_is_fresh_each_run() -> None:
    code = "import os\nprint(os.getcwd(), os.listdir('.'))\nopen('data.txt', 'w').write('hi')"
    first = await run_python.run({"code": code}, _ctx())
    assert first == "/scratch ['main.py']\n"
    assert await run_python.run({"code": code}, _ctx()) == first  # nothing of the last run


async def test_run_python_cancellation_kills_child() -> None:
    spawned = _Spawned()
    code = "import time\nprint('started', flush=True)\ntime.sleep(60)"
    task = asyncio.create_task(run_python.run({"code": code}, _ctx(SandboxLimits(wall_seconds=30), spawned)))
    await asyncio.wait_for(spawned.event.wait(), timeout=10)
    python = load_settings().tools.sandbox_python

    def python_runs() -> bool:  # the sandbox got as far as the tool's own code
        return any(runs(pid, python) for pid in process_tree(spawned.pids[0]))

    await eventually(python_runs, 10, "the tool's python running in the sandbox", poll_s=0.05)
    os.kill(spawned.pids[0], 0)  # still alive before the cancel
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_gone(spawned.pids[0])


async def test_run_python_missing_code() -> None:
    with pytest.raises(ToolError, match="missing argument 'code'"):
        await run_python.run({}, _ctx())


# --- API, settings and loader ----------------------------------------------------------


def test_sandbox_limits_from_settings() -> None:
    settings = ToolSettings(cpu_seconds=2, memory_mb=512, wall_seconds=3.5, output_bytes=100)
    limits = SandboxLimits.from_settings(settings)
    assert limits == SandboxLimits(cpu_seconds=2, memory_mb=512, wall_seconds=3.5, output_bytes=100)
    assert SandboxLimits() == SandboxLimits(cpu_seconds=5, memory_mb=256, wall_seconds=10, output_bytes=16384)


def test_openai_tool_format() -> None:
    spec = calculator.spec
    assert spec.openai_tool() == {
        "type": "function",
        "function": {"name": "calculator", "description": spec.description, "parameters": spec.parameters},
    }
    assert spec.parameters["required"] == ["expression"]


def test_load_tools_returns_builtins() -> None:
    tools = load_tools()
    assert tools["calculator"] is calculator
    assert tools["current_time"] is current_time
    assert tools["run_python"] is run_python
    for name, tool in tools.items():
        assert isinstance(tool, Tool)
        assert tool.spec.name == name


def _install_dist(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[a0.tools]\n{entry_points}\n")


def test_load_tools_user_tools_and_broken_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a0_test_user_tool.py").write_text(
        "from services.tool_executor.tools import ToolSpec\n"
        "class Echo:\n"
        "    spec = ToolSpec(name='echo', description='Echo.', parameters={'type': 'object'})\n"
        "    async def run(self, arguments, ctx):\n"
        "        return str(arguments)\n"
        "echo = Echo()\n"
        "fake_calculator = Echo()\n"
        "fake_calculator.spec = ToolSpec(name='calculator', description='x', parameters={})\n"
        "not_a_tool = 42\n"
    )
    _install_dist(
        tmp_path,
        "a0_test_user_tool",
        "echo = a0_test_user_tool:echo\n"
        "missing = a0_test_no_such_module:tool\n"
        "invalid = a0_test_user_tool:not_a_tool\n"
        "no_attr = a0_test_user_tool:nothing_here\n"
        "shadow = a0_test_user_tool:fake_calculator",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "a0_test_user_tool", raising=False)
    with caplog.at_level(logging.WARNING, logger="services.tool_executor.tools"):
        tools = load_tools()
    assert {"calculator", "current_time", "run_python", "echo"} <= set(tools)
    assert isinstance(tools["echo"].spec, ToolSpec)
    warned = caplog.text
    assert "'missing'" in warned
    assert "'invalid'" in warned
    assert "'no_attr'" in warned
    assert "'shadow'" in warned and "already taken" in warned
    assert tools["calculator"] is calculator  # built-ins cannot be shadowed
