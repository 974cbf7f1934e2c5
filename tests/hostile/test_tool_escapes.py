"""Tool code that tries to get out of its sandbox, sent as real turns.

Each program first disarms the sandbox's audit hook (it finds the hook with ``gc`` and
swaps its code, as a real attacker would) and then calls the kernel directly through
ctypes, so what is tested is the boundary itself: namespaces, uid, capabilities, seccomp,
mounts and rlimits. Every attempt must end in a clear tool error or harmless output, the
stack must keep answering, and nothing the code started may be left running.
"""

from __future__ import annotations

import textwrap
from typing import Any

import httpx
import pytest

from services.common.settings import Settings
from tests.conftest import ROOT, TEST_STATE
from tests.support.gateway import auth, create_conversation, send_and_collect
from tests.support.sandbox import DISARM, sandboxed_processes, service_pid, wait_until_no_sandboxed_processes

pytestmark = pytest.mark.hostile


async def run_tool(client: httpx.AsyncClient, settings: Settings, code: str) -> dict[str, Any]:
    """Send ``run python: CODE`` as a user; the tool.result payload of the turn."""
    before = sandboxed_processes(settings.tools.run_as)  # other stacks' on this machine
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    events = await send_and_collect(client, headers, conversation_id, "run python:\n" + DISARM + code)
    assert events[-1]["type"] == "message.completed", events[-1]
    results = [e["payload"] for e in events if e["type"] == "tool.result"]
    assert len(results) == 1, events
    await wait_until_no_sandboxed_processes(settings.tools.run_as, besides=before)
    return results[0]


def output(result: dict[str, Any]) -> str:
    assert "error" not in result, result
    return str(result["output"])


async def test_the_audit_hook_can_be_disarmed_so_the_kernel_boundary_is_what_holds(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    out = output(await run_tool(client, settings, "print(os.getuid(), os.getgid())"))
    assert out.startswith("hook off\n")
    assert "65534 65534" in out


async def test_every_process_of_the_sandbox_runs_filtered_and_without_capabilities(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # Its pid 1 is bwrap's init; the code's interpreter set itself up with a capability.
    code = textwrap.dedent("""\
        for pid in (1, os.getpid()):
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines())
            caps = [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")]
            print("pid", "init" if pid == 1 else "code", status["Seccomp"].strip(), status["NoNewPrivs"].strip(), *caps)
        """)
    out = output(await run_tool(client, settings, code))
    no_caps = " ".join(["0000000000000000"] * 4)
    assert f"pid init 2 1 {no_caps}" in out and f"pid code 2 1 {no_caps}" in out, out


async def test_host_files_are_not_there(client: httpx.AsyncClient, settings: Settings) -> None:
    paths = [
        "/etc/shadow",
        "/etc/passwd",
        str(ROOT / "conf" / "env" / "secrets.env"),
        str(settings.stack.conf_path / "env" / "secrets.env"),
        str(ROOT / "pyproject.toml"),
        str(TEST_STATE / "data" / "postgres" / "PG_VERSION"),
        str(TEST_STATE),
        "/root",
        "/work",
    ]
    code = textwrap.dedent(f"""\
        for path in {paths!r}:
            try:
                print(path, "READ", os.listdir(path) if os.path.isdir(path) else open(path).read(40))
            except OSError as exc:
                print(path, type(exc).__name__)
        print(sorted(os.listdir("/")))
        """)
    out = output(await run_tool(client, settings, code))
    assert "READ" not in out, out
    assert "['dev', 'lib', 'lib64', 'proc', 'scratch', 'tmp', 'usr']" in out


async def test_host_processes_and_their_memory_are_out_of_reach(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    executor = service_pid("tool-executor", TEST_STATE)
    code = textwrap.dedent(f"""\
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print("pids", pids)
        for target in ({executor}, os.getppid(), 1):
            try:
                with open(f"/proc/{{target}}/mem", "rb") as mem:
                    mem.seek(0x400000)
                    print(target, "MEM", mem.read(16))
            except OSError as exc:
                print(target, type(exc).__name__)
        print("environ", open("/proc/1/environ", "rb").read())
        """)
    out = output(await run_tool(client, settings, code))
    assert "MEM" not in out, out
    assert f"{executor} FileNotFoundError" in out
    assert "A0_" not in out  # no setting of the stack is visible


async def test_other_programs_cannot_be_started(client: httpx.AsyncClient, settings: Settings) -> None:
    code = textwrap.dedent("""\
        import _posixsubprocess
        for argv in (["/usr/bin/id"], ["psql", "-h", "127.0.0.1", "-c", "select 1"], ["/bin/sh", "-c", "id"]):
            try:
                done = subprocess.run(argv, capture_output=True, timeout=5)
                print(argv[0], "RAN", done.stdout)
            except OSError as exc:
                print(argv[0], type(exc).__name__)
        """)
    out = output(await run_tool(client, settings, code))
    assert "RAN" not in out and "uid=" not in out, out


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("unshare", "syscall(272, 0x10000000)"),  # CLONE_NEWUSER
        ("setns", "syscall(308, os.open('/proc/1/ns/net', os.O_RDONLY), 0)"),
        ("clone", "syscall(56, 0x40000000 | 17, 0, 0, 0, 0)"),  # CLONE_NEWNET | SIGCHLD
        ("mount", "syscall(165, b'none', b'/tmp', b'tmpfs', 0, 0)"),
        ("umount", "syscall(166, b'/usr', 2)"),
        ("ptrace", "syscall(101, 16, 1, 0, 0)"),  # PTRACE_ATTACH to pid 1
        ("bpf", "syscall(321, 0, 0, 0)"),
        ("keyctl", "syscall(250, 0, 0, 0, 0, 0)"),
        ("raw socket", "syscall(41, 2, 3, 1)"),  # AF_INET, SOCK_RAW, ICMP
        ("packet socket", "syscall(41, 17, 3, 0x0300)"),  # AF_PACKET
        ("netlink socket", "syscall(41, 16, 3, 0)"),
    ],
)
async def test_kernel_calls_that_leave_the_sandbox_are_refused(
    client: httpx.AsyncClient, settings: Settings, name: str, call: str
) -> None:
    out = output(await run_tool(client, settings, f"print('result', {call})"))
    result = out.splitlines()[-1]
    assert result in ("result EPERM", "result EAFNOSUPPORT"), out


async def test_no_stack_port_can_be_reached(client: httpx.AsyncClient, settings: Settings) -> None:
    ports = [
        settings.kafka.port,
        settings.kafka.controller_port,
        settings.redis.port,
        settings.postgres.port,
        settings.opa.port,
        settings.gateway.port,
        settings.llm_sim.port,
        settings.worker.metrics_port,
        settings.tools.metrics_port,
    ]
    code = textwrap.dedent(f"""\
        for port in {ports!r}:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                try:
                    socket.create_connection((host, port), timeout=2).close()
                    print(port, "CONNECTED")
                except OSError as exc:
                    print(port, errno.errorcode.get(exc.errno, exc))
        """)
    out = output(await run_tool(client, settings, code))
    assert "CONNECTED" not in out, out
    assert out.count("EAFNOSUPPORT") == 2 * len(ports)


async def test_the_executor_cannot_be_signalled(client: httpx.AsyncClient, settings: Settings) -> None:
    executor = service_pid("tool-executor", TEST_STATE)
    code = textwrap.dedent(f"""\
        import signal
        for target in ({executor}, -{executor}):
            try:
                os.kill(target, signal.SIGKILL)
                print(target, "SENT")
            except OSError as exc:
                print(target, type(exc).__name__)
        os.kill(-1, signal.SIGKILL)  # everything it can see: only itself
        """)
    result = await run_tool(client, settings, code)
    assert "SENT" not in str(result), result
    assert service_pid("tool-executor", TEST_STATE) == executor
    assert output(await run_tool(client, settings, "print('still', 'here')")).endswith("still here\n")


async def test_a_child_in_a_new_session_does_not_outlive_the_turn(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    code = textwrap.dedent("""\
        import time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(120)
            os._exit(0)
        print("parent done")
        """)
    # run_tool waits until no process of any sandbox is left.
    assert output(await run_tool(client, settings, code)).endswith("parent done\n")


async def test_a_fork_bomb_is_contained(client: httpx.AsyncClient, settings: Settings) -> None:
    code = textwrap.dedent("""\
        import time
        children = 0
        while True:
            try:
                if os.fork() == 0:
                    while True:
                        time.sleep(1)
                children += 1
            except OSError as exc:
                print("stopped at", children, errno.errorcode[exc.errno], flush=True)
                time.sleep(60)
        """)
    result = await run_tool(client, settings, code)
    assert result["error"]["code"] == "timeout", result
    assert output(await run_tool(client, settings, "print(1 + 1)")).endswith("2\n")


@pytest.mark.parametrize(
    ("code", "error_code"),
    [
        ("x = bytearray(8 * 1024 ** 3)", "memory_limit"),
        ("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))", "memory_limit"),
        ("while True:\n    pass", "cpu_limit"),
    ],
    ids=["one-big-allocation", "growing-allocations", "busy-loop"],
)
async def test_memory_and_cpu_exhaustion_end_with_a_tool_error(
    client: httpx.AsyncClient, settings: Settings, code: str, error_code: str
) -> None:
    result = await run_tool(client, settings, code)
    assert result["error"]["code"] == error_code, result


async def test_huge_output_is_truncated(client: httpx.AsyncClient, settings: Settings) -> None:
    out = output(await run_tool(client, settings, "for _ in range(200):\n    print('x' * 1_000_000)"))
    assert out.endswith("[output truncated]")
    assert len(out) < settings.tools.output_bytes + 100


async def test_filling_the_scratch_disk_is_bounded(client: httpx.AsyncClient, settings: Settings) -> None:
    code = textwrap.dedent("""\
        written = 0
        try:
            with open("big", "wb") as f:
                while True:
                    f.write(b"x" * 1024 * 1024)
                    written += 1
        except OSError as exc:
            print("stopped after", written, "MiB:", errno.errorcode[exc.errno])
        """)
    out = output(await run_tool(client, settings, code))
    assert "stopped after" in out and ("EFBIG" in out or "ENOSPC" in out), out


def test_tool_code_runs_as_an_unprivileged_user_everywhere(settings: Settings) -> None:
    executor = service_pid("tool-executor", TEST_STATE)
    with open(f"/proc/{executor}/status", encoding="utf-8") as f:
        uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    assert "0" not in uids, f"the tool executor runs as root: {uids}"
