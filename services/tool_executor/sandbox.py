"""Run untrusted Python code in a short-lived child process under hard limits.

The child is the same interpreter (``sys.executable``) in isolated mode, started in its
own session (so the whole process group can be killed), in a fresh scratch directory,
with a PATH-only environment (the parent's may hold API keys), rlimits on CPU, address
space and file size, and a wall-clock timeout. Network access is refused twice over: a
bootstrap installs an audit hook that raises ``PermissionError`` on socket (and process
spawning) events before the user code runs, and, where ``unshare --net`` works, the child
also gets an empty network namespace.

:func:`run_code` returns the combined output or raises :class:`SandboxError`; callers
turn that into a user-facing error. Cancelling the awaiting task kills the process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

TRUNCATED_MARKER = "[output truncated]"
# Files written by the code live in the scratch dir; this bounds the disk it can fill.
FILE_SIZE_BYTES = 64 * 1024 * 1024
# Enough of stderr to show a traceback's last frames and the exception line.
STDERR_TAIL_BYTES = 2048
STDERR_TAIL_LINES = 12
_SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
_SCRIPT = "main.py"  # also named in _BOOTSTRAP

# Runs in the child before the user code. Audit hooks cannot be removed once added, so
# the user code cannot undo this. Process spawning and ctypes are refused as well, since
# either would bypass the hook (a fresh interpreter, or a raw connect() via libc).
# AF_UNIX socket *creation* stays allowed because asyncio's self-pipe is a socketpair;
# connect/bind/send on any family are still refused.
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


class SandboxLimits(BaseModel):
    """Per-run resource limits of the sandbox."""

    cpu_seconds: int = Field(default=5, ge=1)
    memory_mb: int = Field(default=256, ge=32)
    wall_seconds: float = Field(default=10.0, gt=0)
    output_bytes: int = Field(default=16_384, ge=1)

    @classmethod
    def from_settings(cls, tool_settings: Any) -> SandboxLimits:
        """Build from ``services.common.settings.ToolSettings`` (fields of the same names)."""
        return cls(
            cpu_seconds=tool_settings.cpu_seconds,
            memory_mb=tool_settings.memory_mb,
            wall_seconds=tool_settings.wall_seconds,
            output_bytes=tool_settings.output_bytes,
        )


class SandboxError(Exception):
    """The code did not complete normally; ``str(err)`` is meant for the model/user."""

    def __init__(self, message: str, *, kind: str, output: str = "") -> None:
        super().__init__(message)
        self.kind = kind  # "timeout" | "cpu_limit" | "memory_limit" | "exit"
        self.output = output


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


_netns_prefix: list[str] | None = None


def _probe_netns() -> list[str]:
    """``[unshare, --net, --]`` if an empty network namespace can be made here, else ``[]``."""
    unshare = shutil.which("unshare")
    if not unshare or os.geteuid() != 0:
        return []
    try:
        probe = subprocess.run(
            [unshare, "--net", "true"], env=_SAFE_ENV, capture_output=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [unshare, "--net", "--"] if probe.returncode == 0 else []


async def _netns_prefix_cached() -> list[str]:
    # Probed once per process; failure falls back silently to the audit hook alone.
    global _netns_prefix
    if _netns_prefix is None:
        _netns_prefix = await asyncio.to_thread(_probe_netns)
    return _netns_prefix


def _set_limit(which: int, value: int) -> None:
    # Never try to raise a hard limit above the current one (fails unless privileged).
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _apply_limits(limits: SandboxLimits) -> None:
    """preexec_fn: runs in the forked child just before exec; limits survive exec."""
    # Soft CPU limit sends SIGXCPU; the hard one (1s later) SIGKILLs code that ignores it.
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu = limits.cpu_seconds
    hard = cpu + 1 if cpu_hard == resource.RLIM_INFINITY else min(cpu + 1, cpu_hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, hard), hard))
    _set_limit(resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024)
    _set_limit(resource.RLIMIT_FSIZE, FILE_SIZE_BYTES)
    _set_limit(resource.RLIMIT_CORE, 0)  # SIGXCPU would otherwise dump core


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader | None, sink: _Output, is_stderr: bool) -> None:
    # Keep draining past the limit so the child never blocks on a full pipe.
    if stream is None:
        return
    while chunk := await stream.read(65536):
        sink.add(chunk, is_stderr)


def _prepare(scratch: str, code: str) -> None:
    Path(scratch, _SCRIPT).write_text(code, encoding="utf-8")


def _failure(returncode: int, out: _Output, limits: SandboxLimits) -> SandboxError:
    """Explain a non-zero exit in terms the model can act on."""
    tail = out.stderr_tail()
    text = out.text()
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        # We only SIGKILL on timeout/cancel (handled elsewhere), so this is the rlimit.
        msg = f"exceeded the CPU time limit of {limits.cpu_seconds}s"
        return SandboxError(msg, kind="cpu_limit", output=text)
    if "MemoryError" in tail or "Cannot allocate memory" in tail:
        msg = f"ran out of memory (limit {limits.memory_mb} MiB)"
        return SandboxError(msg + (f"\n{tail}" if tail else ""), kind="memory_limit", output=text)
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    return SandboxError(f"process {how}" + (f":\n{tail}" if tail else ""), kind="exit", output=text)


async def run_code(
    code: str,
    limits: SandboxLimits,
    on_spawn: Callable[[int], None] | None = None,
) -> str:
    """Run ``code`` in the sandbox; return combined stdout+stderr (bounded).

    Raises :class:`SandboxError` on timeout, CPU/memory limit or non-zero exit. On
    cancellation the process group is killed and reaped before ``CancelledError``
    propagates, so no child outlives the call.
    """
    argv = [sys.executable, "-I", "-B", "-u", "-X", "utf8", "-c", _BOOTSTRAP]
    # unshare exec()s the interpreter in place: same pid, same process group.
    argv = [*await _netns_prefix_cached(), *argv]
    out = _Output(limits.output_bytes)
    with tempfile.TemporaryDirectory(prefix="a0-sandbox-", ignore_cleanup_errors=True) as scratch:
        _prepare(scratch, code)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=scratch,
            env=_SAFE_ENV,
            start_new_session=True,
            preexec_fn=partial(_apply_limits, limits),
        )
        try:
            if on_spawn is not None:
                on_spawn(proc.pid)
            async with asyncio.timeout(limits.wall_seconds):
                await asyncio.gather(
                    _pump(proc.stdout, out, False), _pump(proc.stderr, out, True), proc.wait()
                )
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            raise SandboxError(
                f"timed out after {limits.wall_seconds:g}s", kind="timeout", output=out.text()
            ) from None
        finally:
            if proc.returncode is None:  # cancelled (or on_spawn raised): no orphan left
                _kill_group(proc.pid)
                await proc.wait()
            else:
                # The leader is gone; sweep any member of its group that survived it.
                _kill_group(proc.pid)
    if proc.returncode:
        raise _failure(proc.returncode, out, limits)
    return out.text()
