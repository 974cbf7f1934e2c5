"""Run untrusted Python code in a short-lived, confined child process under hard limits.

Each run is a fresh bubblewrap sandbox (see :mod:`services.tool_executor.confinement`):
new user, pid, network, ipc, uts, mount and cgroup namespaces, uid 65534 inside, no
capabilities, a seccomp filter, a read-only root with read-only binds of only the Python
runtime, sized ``noexec`` tmpfs mounts (``/tmp``, ``/dev/shm`` and the scratch dir
holding ``main.py``), its own ``/proc``, and a PATH-only environment (the parent's may
hold API keys). bwrap is never started as root: an executor running as root starts it as
the unprivileged tool user (``A0_TOOLS_RUN_AS``).

Each run has its own cgroup (see :mod:`services.tool_executor.cgroups`): memory, tmpfs
files included, processes and CPU bounded for all its processes together, and its CPU
time counted: past ``cpu_seconds`` the run is killed. rlimits still bound each process
(CPU, address space, file size: :mod:`.sandbox_limits`), and a wall-clock timeout bounds
the run.

Inside, a bootstrap installs an audit hook refusing sockets and process spawning before
the user code runs: a first layer that gives clear errors, not the boundary.

The run's whole process tree is its pid namespace and its cgroup: when the run ends,
times out or is cancelled, the namespace's init is killed, which kills every process in
it, :func:`run_code` waits until it is gone and removes the cgroup. It returns the
combined output or raises :class:`SandboxError`; callers turn that into a user-facing
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
from collections.abc import Callable
from functools import partial
from typing import Any

from services.tool_executor.cgroups import RunCgroup
from services.tool_executor.confinement import Confinement, ConfinementError, confinement
from services.tool_executor.sandbox_limits import (
    CpuBudget,
    SandboxError,
    SandboxLimits,
    apply_limits,
    cpu_spent,
    out_of_memory,
)

TRUNCATED_MARKER = "[output truncated]"
# Enough of stderr to show a traceback's last frames and the exception line.
STDERR_TAIL_BYTES = 2048
STDERR_TAIL_LINES = 12
# How long the namespace's processes may take to die once killed.
REAP_SECONDS = 5.0
_SAFE_ENV = {"PATH": "/usr/bin:/bin"}

# Runs in the child before the user code. Audit hooks cannot be removed from Python code
# that plays by the rules; code that does not (gc, ctypes tricks) still meets the
# namespaces and the seccomp filter. AF_UNIX socket *creation* stays allowed because
# asyncio's self-pipe is a socketpair; connect/bind/send on any family are refused.
_BOOTSTRAP = """\
import sys
def _a0_guard(event, args):
    if event.startswith(("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn")) or event in (
        "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "ctypes.dlopen"
    ):
        if event == "socket.__new__" and len(args) > 1 and args[1] == 1:
            return
        raise PermissionError("sandbox: " + event + " is not allowed (no network or processes)")
sys.addaudithook(_a0_guard)
del _a0_guard
with open("main.py", encoding="utf-8") as _f:
    _src = _f.read()
_g = {"__name__": "__main__", "__builtins__": __builtins__}
del _f
exec(compile(_src, "main.py", "exec"), _g)
"""


class _Output:
    """Collects both pipes in arrival order, bounded; keeps the tail of stderr apart."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.truncated = False
        self.err_tail = bytearray()

    def add(self, chunk: bytes, is_stderr: bool) -> None:
        room = self.limit - len(self.buf)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.buf += chunk[:room]
        if is_stderr:
            self.err_tail = (self.err_tail + chunk)[-STDERR_TAIL_BYTES:]

    def text(self) -> str:
        out = self.buf.decode("utf-8", errors="replace")
        if self.truncated:
            out += ("" if out.endswith("\n") else "\n") + TRUNCATED_MARKER
        return out

    def stderr_tail(self) -> str:
        lines = self.err_tail.decode("utf-8", errors="replace").strip().splitlines()
        # Frames of the bootstrap (compiled from -c, shown as "<string>") are noise.
        lines = [ln for ln in lines if not ln.lstrip().startswith('File "<string>"')]
        return "\n".join(lines[-STDERR_TAIL_LINES:])


def _identity(run_as: str) -> dict[str, Any]:
    """Popen arguments so that bwrap never starts as root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise SandboxError(
            f"tool sandbox unavailable: no user {run_as!r} to run it as (scripts/bootstrap.sh creates it)",
            kind="unavailable",
        ) from None
    if entry.pw_uid == 0:
        raise SandboxError(f"tool sandbox unavailable: {run_as!r} is root", kind="unavailable")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # not inheritable; pass_fds makes it so in the child
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


async def _gone(pid: int | None) -> None:
    """Wait until ``pid`` (the namespace's init, not our child) has exited."""
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        async with asyncio.timeout(REAP_SECONDS):
            await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def _sandbox_pid(info: asyncio.StreamReader) -> int | None:
    """The host pid of the namespace's init, from bwrap's ``--info-fd``."""
    # bwrap writes one flat JSON object as soon as the namespaces exist.
    with contextlib.suppress(ValueError, KeyError, TypeError, asyncio.IncompleteReadError):
        return int(json.loads(await info.readuntil(b"}"))["child-pid"])
    return None


async def _pump(stream: asyncio.StreamReader | None, sink: _Output, is_stderr: bool) -> None:
    # Keep draining past the limit so the child never blocks on a full pipe.
    if stream is None:
        return
    while chunk := await stream.read(65536):
        sink.add(chunk, is_stderr)


def _failure(returncode: int, out: _Output, limits: SandboxLimits) -> SandboxError:
    """Explain a non-zero exit in terms the model can act on."""
    tail = out.stderr_tail()
    text = out.text()
    if returncode > 128:  # bwrap reports a child killed by signal N as 128 + N
        returncode = -(returncode - 128)
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        # We only SIGKILL on timeout/cancel (handled elsewhere), so this is the rlimit.
        return cpu_spent(limits, text)
    if "MemoryError" in tail or "Cannot allocate memory" in tail:
        return out_of_memory(limits, text, tail)
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    return SandboxError(f"process {how}" + (f":\n{tail}" if tail else ""), kind="exit", output=text)


async def _start(bwrap_pid: int, sandbox_pid: int | None, cgroup: RunCgroup | None, block_fd: int) -> None:
    """Put bwrap's processes in the run's cgroup, then let it start the run."""
    if sandbox_pid is None:
        return  # bwrap failed before its namespaces existed: its exit and stderr say why
    if cgroup is not None:
        try:
            await asyncio.to_thread(cgroup.adopt, [bwrap_pid, sandbox_pid])
        except OSError as exc:
            raise SandboxError(
                f"tool sandbox unavailable: cannot move the run into its cgroup: {exc}", kind="unavailable"
            ) from None
    with contextlib.suppress(BrokenPipeError):  # bwrap died meanwhile: its exit says why
        os.write(block_fd, b"1")


async def _remove(cgroup: RunCgroup) -> None:
    try:
        cgroup.remove(wait_s=0)  # its processes are gone by now: no waiting in the loop
    except OSError:
        await asyncio.to_thread(cgroup.remove)


async def run_code(
    code: str,
    limits: SandboxLimits,
    on_spawn: Callable[[int], None] | None = None,
) -> str:
    """Run ``code`` in the sandbox; return combined stdout+stderr (bounded).

    Raises :class:`SandboxError` on timeout, CPU/memory limit, non-zero exit, or when the
    sandbox cannot be set up here. However the call ends (cancellation included), every
    process the code started is killed and gone, and its cgroup removed, before it returns.
    """
    identity = _identity(limits.run_as)
    try:
        conf = await asyncio.to_thread(confinement, limits.python)
    except ConfinementError as exc:
        raise SandboxError(f"tool sandbox unavailable: {exc}", kind="unavailable") from None
    cgroup: RunCgroup | None = None
    if limits.cgroups is not None:
        try:
            cgroup = limits.cgroups.create(limits.bounds())
        except OSError as exc:
            raise SandboxError(
                f"tool sandbox unavailable: no cgroup for the run: {exc}", kind="unavailable"
            ) from None
    try:
        return await _run_in(cgroup, conf, code, limits, identity, on_spawn)
    finally:
        if cgroup is not None:
            await _remove(cgroup)


async def _spawn(
    cgroup: RunCgroup | None,
    conf: Confinement,
    code: str,
    limits: SandboxLimits,
    identity: dict[str, Any],
) -> tuple[asyncio.subprocess.Process, int, int]:
    """bwrap started on ``code``, holding the run until told to go: the process, the read
    end of its info pipe and the write end of the pipe that lets it go on."""
    code_fd = _memfd("a0-code", code.encode("utf-8", errors="surrogateescape"))
    seccomp_fd = _memfd("a0-seccomp", conf.seccomp_bpf)
    setup_seccomp_fd = _memfd("a0-seccomp-setup", conf.setup_seccomp_bpf)
    info_read, info_write = os.pipe()
    # bwrap waits on this before it starts the run's first process: time to move it into
    # the run's cgroup, off the event loop (a v1 cgroup move can wait for an RCU grace period).
    block_read, block_write = os.pipe()
    fds = (code_fd, seccomp_fd, setup_seccomp_fd, info_write, block_read)
    argv = conf.argv(
        code_fd=code_fd,
        seccomp_fd=seccomp_fd,
        setup_seccomp_fd=setup_seccomp_fd,
        info_fd=info_write,
        block_fd=block_read,
        options=["-I", "-B", "-u", "-X", "utf8"],
        bootstrap=_BOOTSTRAP,
        tmpfs_bytes=limits.tmpfs_mb * 2**20,
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd="/",
            env=_SAFE_ENV,
            start_new_session=True,
            pass_fds=fds,
            preexec_fn=partial(apply_limits, limits, cgroup is not None),
            **identity,
        )
    except BaseException:
        os.close(block_write)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return proc, info_read, block_write


async def _run_in(
    cgroup: RunCgroup | None,
    conf: Confinement,
    code: str,
    limits: SandboxLimits,
    identity: dict[str, Any],
    on_spawn: Callable[[int], None] | None,
) -> str:
    proc, info_read, block_write = await _spawn(cgroup, conf, code, limits, identity)
    loop = asyncio.get_running_loop()
    info = asyncio.StreamReader()
    out = _Output(limits.output_bytes)
    sandbox_pid: int | None = None
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(info), os.fdopen(info_read, "rb", 0)
    )
    budget = watcher = None
    if cgroup is not None:
        budget = CpuBudget(cgroup, limits, cgroup.kill)
        watcher = asyncio.create_task(budget.watch())
    try:
        if on_spawn is not None:
            on_spawn(proc.pid)
        async with asyncio.timeout(limits.wall_seconds):
            sandbox_pid = await _sandbox_pid(info)
            await _start(proc.pid, sandbox_pid, cgroup, block_write)
            await asyncio.gather(_pump(proc.stdout, out, False), _pump(proc.stderr, out, True), proc.wait())
    except TimeoutError:
        raise SandboxError(
            f"timed out after {limits.wall_seconds:g}s", kind="timeout", output=out.text()
        ) from None
    finally:
        transport.close()
        if watcher is not None:
            watcher.cancel()
        # Killing the namespace's init kills every process in it (a child in a new
        # session included); bwrap itself goes with it. Then make sure they are gone.
        _kill(sandbox_pid)
        if proc.returncode is None:
            _kill(proc.pid)
        await proc.wait()
        # Only now: a bwrap still waiting would take the end of this pipe as its go.
        os.close(block_write)
        await _gone(sandbox_pid)
    return _outcome(proc.returncode, out, limits, cgroup, budget)


def _outcome(
    returncode: int | None,
    out: _Output,
    limits: SandboxLimits,
    cgroup: RunCgroup | None,
    budget: CpuBudget | None,
) -> str:
    """A finished run's output, or the error that explains how it ended."""
    if budget is not None and budget.spent:
        raise cpu_spent(limits, out.text())
    if cgroup is not None and cgroup.memory_kills():
        # The kernel killed a process of the run at its memory limit: whatever the exit
        # code says, the run did not get to finish what it was doing.
        raise out_of_memory(limits, out.text(), out.stderr_tail())
    if returncode:
        raise _failure(returncode, out, limits)
    return out.text()
