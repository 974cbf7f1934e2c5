"""What tool code left behind, seen from the host: processes of the tool user that live
in a pid namespace other than ours (a sandbox's); and the code hostile tests start with."""

from __future__ import annotations

import os
import pwd
from collections.abc import Collection
from pathlib import Path

from tests.support.waiting import eventually

# Tool code that first disarms the sandbox's audit hook (it finds the hook with ``gc`` and
# swaps its code, as a real attacker would), so that what a test meets is the boundary
# itself; then it can call the kernel directly with ``syscall(nr, *args)``.
DISARM = """\
import gc
for _o in gc.get_objects():
    if getattr(_o, "__name__", "") == "_a0_guard":
        _o.__code__ = (lambda event, args: None).__code__
import ctypes, errno, os, socket, subprocess, sys
_libc = ctypes.CDLL(None, use_errno=True)
def syscall(nr, *args):
    ret = _libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()]
print("hook off")
"""


def _field(status: str, name: str) -> str:
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def sandboxed_processes(tool_user: str, besides: Collection[int] = ()) -> list[int]:
    """Host pids of processes run as the tool user inside another pid namespace, except
    ``besides``: sandboxes that ran before a test began, e.g. those of another stack on
    the same machine (every stack's tools run as the same user). MCP servers, long-lived
    sandboxes of the same user in cgroups of their own (``mcp-…``), are not runs."""
    uid = str(pwd.getpwnam(tool_user).pw_uid)
    ours = os.readlink("/proc/self/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="utf-8") as f:
                status = f.read()
            namespace = os.readlink(f"/proc/{entry}/ns/pid")
            with open(f"/proc/{entry}/cgroup", encoding="utf-8") as f:
                if "/mcp-" in f.read():
                    continue
        except OSError:
            continue  # gone meanwhile
        if _field(status, "Uid").split()[:1] == [uid] and namespace != ours and int(entry) not in besides:
            found.append(int(entry))
    return found


async def wait_until_no_sandboxed_processes(
    tool_user: str, timeout: float = 10.0, besides: Collection[int] = ()
) -> None:
    """Poll until nothing of any sandbox (but ``besides``) is left; fail with what is left."""
    try:
        await eventually(
            lambda: not sandboxed_processes(tool_user, besides), timeout, "no sandboxed process left"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; left running: {sandboxed_processes(tool_user, besides)}") from None


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it, from each process's parent in /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
                parents[int(entry)] = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def runs(pid: int, executable: str) -> bool:
    """Whether process ``pid`` runs ``executable`` (the same file, whatever its name)."""
    try:
        return os.path.samefile(f"/proc/{pid}/exe", executable)
    except OSError:
        return False


def service_pid(service: str, state_dir: Path) -> int:
    """The pid of ``a0ctl run SERVICE`` of the stack whose state dir is ``state_dir``."""
    wanted = f"A0_STATE_DIR={state_dir}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if argv[-3:-1] == [b"run", service.encode()] and wanted in environ:
            return int(entry)
    raise AssertionError(f"no {service} process of the stack under {state_dir}")
