"""One user's tool run that tries to take the machine's memory, processes or CPU, while
another user's run must still succeed: each run is bounded as a whole (its cgroup), not
per process or per host user, and what a run writes is neither executable nor unbounded.

Every attack is a real turn of ``mallory`` with the audit hook disarmed; while it is under
way, ``alice`` runs a program of her own through the same stack. What the attack reached
is watched from the host (its processes' memory and CPU time, the host's shared memory),
not taken from the attack's own word. Where no cgroup can bound runs, the tool executor
must refuse to start and ``a0ctl doctor`` must say so.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.settings import Settings, load_settings
from services.tool_executor.cgroups import parent_name, prepare
from services.tool_executor.sandbox import run_code
from services.tool_executor.sandbox_limits import SandboxError, SandboxLimits
from tests.conftest import ROOT, TEST_STATE
from tests.support.gateway import (
    auth,
    collect_turn,
    create_conversation,
    post_message,
    read_until,
    send_and_collect,
    sse_events,
)
from tests.support.sandbox import DISARM, sandboxed_processes, service_pid, wait_until_no_sandboxed_processes
from tests.support.waiting import eventually

pytestmark = pytest.mark.hostile

MIB = 2**20
TICKS = os.sysconf("SC_CLK_TCK")


def _shmem_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Shmem:"))


class Watch:
    """What the tool user's new sandboxed processes hold, sampled from the host."""

    def __init__(self, tool_user: str, besides: list[int]) -> None:
        self.tool_user = tool_user
        self.besides = besides
        self.shmem_before = _shmem_bytes()
        self.shmem_growth = 0  # the most the host's shared memory (tmpfs) grew
        self.memory = 0  # the most memory of all of them at once (shared pages counted once)
        self.processes = 0  # the most of them at once
        self.cpu_ticks: dict[int, int] = {}  # the last CPU time seen of each

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu_ticks.values()) / TICKS

    def sample(self) -> None:
        pids = sandboxed_processes(self.tool_user, self.besides)
        memory = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                    fields = f.read().rpartition(")")[2].split()
                # Pss: each page shared by n processes counts 1/n in each (forks share a lot).
                with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
                    memory += next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Pss:")), 0)
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            self.cpu_ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        self.memory = max(self.memory, memory)
        self.processes = max(self.processes, len(pids))
        self.shmem_growth = max(self.shmem_growth, _shmem_bytes() - self.shmem_before)

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(0.05)


def run_cgroups(settings: Settings) -> list[Path]:
    """The cgroups of the test stack's tool runs now, found from the executor's own cgroup
    (v1: the parent is below it in each hierarchy; v2: the executor is in its ``executor``)."""
    name = parent_name(settings.stack.state_path, settings.tools.metrics_port)
    with open(f"/proc/{service_pid('tool-executor', TEST_STATE)}/cgroup", encoding="ascii") as f:
        paths = [line.strip().split(":", 2) for line in f]
    runs: list[Path] = []
    for _, controllers, path in paths:
        unified = Path("/sys/fs/cgroup/unified")
        hierarchy = Path("/sys/fs/cgroup", controllers.split(",")[0]) if controllers else unified
        if not controllers and not unified.is_dir():
            hierarchy = Path("/sys/fs/cgroup")  # cgroup v2 alone
        for parent in (hierarchy / path.lstrip("/") / name, (hierarchy / path.lstrip("/")).parent):
            if parent.name == name and parent.is_dir():
                runs += [child for child in parent.iterdir() if child.name.startswith("run-")]
    return runs


async def turn(client: httpx.AsyncClient, settings: Settings, user: str, code: str) -> dict[str, Any]:
    """``run python: CODE`` as ``user``; the tool.result payload of the turn."""
    headers = auth(settings, user)
    conversation_id = await create_conversation(client, headers)
    events = await send_and_collect(client, headers, conversation_id, "run python:\n" + code)
    assert events[-1]["type"] == "message.completed", events[-1]
    results = [e["payload"] for e in events if e["type"] == "tool.result"]
    assert len(results) == 1, events
    return results[0]


async def attack_while_another_user_runs(
    client: httpx.AsyncClient, settings: Settings, code: str, under_way: Callable[[Watch], bool]
) -> tuple[dict[str, Any], Watch]:
    """Start mallory's ``code``; once ``under_way`` holds, alice's own run must succeed.
    Returns mallory's tool.result and what the host saw of her run."""
    tool_user = settings.tools.run_as
    before = sandboxed_processes(tool_user)  # other stacks' on this machine
    watch = Watch(tool_user, before)
    sampler = asyncio.create_task(watch.run())
    try:
        attack = asyncio.create_task(turn(client, settings, "mallory", DISARM + code))
        await eventually(lambda: under_way(watch) or attack.done(), 30, "the attack under way")
        other = await turn(client, settings, "alice", "print(6 * 7)")
        assert other.get("output") == "42\n", f"another user's run failed meanwhile: {other}"
        result = await attack
        await wait_until_no_sandboxed_processes(tool_user, besides=before)
        await eventually(lambda: not run_cgroups(settings), 5, "every run's cgroup removed")
    finally:
        sampler.cancel()
    return result, watch


async def test_files_written_anywhere_stay_within_the_runs_memory_limit(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    code = textwrap.dedent("""\
        import time
        for place in ("/tmp", "/scratch", "/dev/shm", "/", "/dev"):
            written, why = 0, "512 MiB written"
            try:
                for i in range(32):
                    with open(f"{place.rstrip('/')}/fill{i}", "wb") as f:
                        for _ in range(16):
                            f.write(b"x" * 2**20)
                            written += 1
            except OSError as exc:
                why = errno.errorcode[exc.errno]
            print(place, written, why, flush=True)
        time.sleep(3)  # hold it all while the other user runs
        """)
    result, watch = await attack_while_another_user_runs(
        client, settings, code, lambda w: w.shmem_growth > 32 * MIB
    )
    limit = settings.tools.memory_mb * MIB
    assert watch.shmem_growth < limit + 64 * MIB, f"host shmem grew by {watch.shmem_growth // MIB} MiB"
    if "error" in result:  # the kernel ended the run at its limit: bounded too
        assert result["error"]["code"] == "memory_limit", result
        return
    written = {m[0]: (int(m[1]), m[2]) for m in re.findall(r"^(/\S*) (\d+) (\S+)", result["output"], re.M)}
    assert sum(mib for mib, _ in written.values()) * MIB <= limit, written
    assert written["/"] == (0, "EROFS") and written["/dev"] == (0, "EROFS"), written


async def test_forks_together_cannot_exceed_the_runs_memory_limit(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    code = textwrap.dedent("""\
        import time
        for _ in range(4):
            if os.fork() == 0:
                block = bytearray(200 * 2**20)
                for i in range(0, len(block), 4096):
                    block[i] = 1  # touched: resident, not just reserved
                time.sleep(30)
                os._exit(0)
        time.sleep(6)
        print("parent done")
        """)
    result, watch = await attack_while_another_user_runs(
        client, settings, code, lambda w: w.memory > 150 * MIB
    )
    assert watch.memory <= (settings.tools.memory_mb + 32) * MIB, f"{watch.memory // MIB} MiB at once"
    assert result.get("error", {}).get("code") == "memory_limit", result


async def test_busy_forks_together_cannot_use_more_cpu_than_the_runs_cpu_limit(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    code = textwrap.dedent("""\
        import time
        for _ in range(3):
            if os.fork() == 0:
                while True:
                    pass
        time.sleep(60)
        """)
    result, watch = await attack_while_another_user_runs(
        client, settings, code, lambda w: w.cpu_seconds > 0.5
    )
    # On a busy machine the wall-clock timeout may come first: the CPU used is what counts.
    assert result.get("error", {}).get("code") in ("cpu_limit", "timeout"), result
    assert watch.cpu_seconds <= settings.tools.cpu_seconds + 0.5, f"{watch.cpu_seconds:.1f} CPU-s used"


async def test_a_fork_bomb_does_not_fail_another_users_run(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    code = textwrap.dedent("""\
        import time
        while True:
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
            except OSError:
                time.sleep(0.01)
        """)
    result, watch = await attack_while_another_user_runs(client, settings, code, lambda w: w.processes >= 32)
    assert result["error"]["code"] == "timeout", result
    # Counted from the host with the other user's run (its sandbox's init and interpreter).
    assert watch.processes <= settings.tools.max_processes + 2, watch.processes


async def test_a_cancelled_run_leaves_no_process_and_no_cgroup(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    tool_user = settings.tools.run_as
    before = sandboxed_processes(tool_user)
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    code = DISARM + "import time\nfor _ in range(4):\n    os.fork()\ntime.sleep(60)"
    accepted = await post_message(client, headers, conversation_id, "run python:\n" + code)
    try:
        await read_until(events, "tool.call")
        await eventually(lambda: len(sandboxed_processes(tool_user, before)) >= 16, 20, "the run's forks")
        assert run_cgroups(settings), "the run has no cgroup of its own"
        await client.post(
            f"/v1/conversations/{conversation_id}/cancel",
            json={"turn_id": accepted["turn_id"]},
            headers=headers,
        )
        rest = await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 20)
    finally:
        await events.aclose()
    assert rest[-1]["type"] == "cancelled", rest[-1]
    await wait_until_no_sandboxed_processes(tool_user, besides=before)
    await eventually(lambda: not run_cgroups(settings), 5, "the cancelled run's cgroup removed")


async def test_programs_written_by_a_run_cannot_be_executed(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # A copy of the interpreter is a native binary the run can write anywhere it may write;
    # run directly, or mapped by the dynamic loader (which bypasses the exec check alone).
    loader = "/lib64/ld-linux-x86-64.so.2"
    code = textwrap.dedent(f"""\
        import shutil
        for place in ("/tmp", "/scratch", "/dev/shm"):
            copy = place + "/python"
            shutil.copy(sys.executable, copy)
            os.chmod(copy, 0o755)
            for argv in ([copy], [{loader!r}, copy]):
                pid = os.fork()
                if pid == 0:
                    try:
                        os.execv(argv[0], [*argv, "-c", "print('RAN')"])
                    except OSError as exc:
                        print(place, len(argv), errno.errorcode[exc.errno], flush=True)
                    os._exit(0)
                os.waitpid(pid, 0)
        """)
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    events = await send_and_collect(client, headers, conversation_id, "run python:\n" + DISARM + code)
    result = next(e["payload"] for e in events if e["type"] == "tool.result")
    out = result.get("output", "")
    assert "RAN" not in out, result
    for place in ("/tmp", "/scratch", "/dev/shm"):
        assert f"{place} 1 EACCES" in out, out


async def test_a_runs_tmpfs_files_count_against_its_memory_limit() -> None:
    """Three tmpfs mounts of 200 MiB each, filled, would take 600 MiB: the run's cgroup
    stops it at its 256 MiB, files and processes together."""
    cgroups = prepare(f"a0-test-runs-{os.getpid()}", load_settings().tools.run_as)
    limits = SandboxLimits(memory_mb=256, tmpfs_mb=200, cgroups=cgroups)
    code = textwrap.dedent("""\
        for place in ("/tmp", "/scratch", "/dev/shm"):
            for i in range(12):
                with open(f"{place}/fill{i}", "wb") as f:
                    for _ in range(16):
                        f.write(b"x" * 2**20)
            print(place, "full", flush=True)
        """)
    try:
        with pytest.raises(SandboxError) as failed:
            await run_code(code, limits)
    finally:
        for parent in set(cgroups.parents.values()):
            parent.rmdir()
    assert failed.value.kind == "memory_limit", failed.value
    assert "/dev/shm full" not in failed.value.output


BOUNDS_CHECK = "tool run bounds (a cgroup per run)"


def _without_cgroups(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``a0ctl ARGS`` on what looks like a machine without cgroups: in a mount namespace of
    its own whose ``/sys/fs/cgroup`` is an empty tmpfs."""
    hide = 'mount -t tmpfs none /sys/fs/cgroup && exec "$@"'
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            hide,
            "sh",
            sys.executable,
            "-m",
            "a0ctl",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})},
    )


def _bounds_check(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report = json.loads(result.stdout)
    check: dict[str, Any] = next(c for c in report["checks"] if c["name"] == BOUNDS_CHECK)
    return check


def test_doctor_says_when_tool_runs_cannot_be_bounded() -> None:
    here = subprocess.run(
        [sys.executable, "-m", "a0ctl", "doctor", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    check = _bounds_check(here)
    assert check["ok"] and not check["warning"] and "cgroup v" in check["detail"], check

    check = _bounds_check(_without_cgroups("doctor", "--json"))
    assert not check["ok"] and "refuses to start" in check["detail"], check

    check = _bounds_check(_without_cgroups("doctor", "--json", env={"A0_TOOLS_ALLOW_UNBOUNDED": "true"}))
    assert check["ok"] and check["warning"] and check["detail"].startswith("UNBOUNDED"), check


def test_the_tool_executor_refuses_to_start_where_runs_cannot_be_bounded() -> None:
    result = _without_cgroups("run", "tool-executor", timeout=60)  # it says so at once
    assert result.returncode != 0, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "no cgroup can bound tool runs" in said and "A0_TOOLS_ALLOW_UNBOUNDED" in said, said
