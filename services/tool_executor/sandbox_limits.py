"""The bounds of one sandboxed run (:mod:`services.tool_executor.sandbox`): what the
settings allow it, the rlimits each of its processes gets, the CPU budget its cgroup
counts, and the errors of a run that crossed one.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from services.common.errors import A0Error
from services.tool_executor.cgroups import RunBounds, RunCgroup, RunCgroups
from services.tool_executor.confinement import TMPFS_BYTES

# Files written by the code live in the scratch tmpfs; this bounds one file.
FILE_SIZE_BYTES = 64 * 1024 * 1024
# Processes of the tool user, every run together, where runs have no cgroup (development).
UNBOUNDED_MAX_PROCESSES = 256


class SandboxLimits(BaseModel):
    """Per-run resource limits of the sandbox, and who/what runs it."""

    cpu_seconds: int = Field(default=5, ge=1)
    memory_mb: int = Field(default=256, ge=32)
    wall_seconds: float = Field(default=10.0, gt=0)
    output_bytes: int = Field(default=16_384, ge=1)
    # Processes of one run at once (its cgroup's pids.max).
    max_processes: int = Field(default=64, ge=8)
    cpu_cores: float = Field(default=1.0, gt=0)
    tmpfs_mb: int = Field(default=TMPFS_BYTES // 2**20, ge=1)
    python: str = "/usr/bin/python3"
    run_as: str = "a0-tools"
    # Where each run's cgroup is made; None runs with rlimits only (development, tests).
    cgroups: RunCgroups | None = None

    @classmethod
    def from_settings(cls, tool_settings: Any, cgroups: RunCgroups | None = None) -> SandboxLimits:
        """Build from ``services.common.settings.ToolSettings`` (fields of the same names)."""
        return cls(
            cpu_seconds=tool_settings.cpu_seconds,
            memory_mb=tool_settings.memory_mb,
            wall_seconds=tool_settings.wall_seconds,
            output_bytes=tool_settings.output_bytes,
            max_processes=tool_settings.max_processes,
            cpu_cores=tool_settings.cpu_cores,
            tmpfs_mb=tool_settings.tmpfs_mb,
            python=tool_settings.sandbox_python,
            run_as=tool_settings.run_as,
            cgroups=cgroups,
        )

    def bounds(self) -> RunBounds:
        return RunBounds(
            memory_bytes=self.memory_mb * 2**20, processes=self.max_processes, cpu_cores=self.cpu_cores
        )


class SandboxError(A0Error):
    """The code did not complete normally; ``str(err)`` is meant for the model/user."""

    def __init__(self, message: str, *, kind: str, output: str = "") -> None:
        super().__init__(message)
        self.kind = kind  # "timeout" | "cpu_limit" | "memory_limit" | "exit" | "unavailable"
        self.output = output


def set_limit(which: int, value: int) -> None:
    # Never try to raise a hard limit above the current one (fails unless privileged).
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def apply_limits(limits: SandboxLimits, bounded: bool) -> None:
    """preexec_fn: runs in the forked child just before exec; limits survive exec."""
    # Soft CPU limit sends SIGXCPU; the hard one (1s later) SIGKILLs code that ignores it.
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu = limits.cpu_seconds
    hard = cpu + 1 if cpu_hard == resource.RLIM_INFINITY else min(cpu + 1, cpu_hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, hard), hard))
    set_limit(resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024)
    set_limit(resource.RLIMIT_FSIZE, FILE_SIZE_BYTES)
    if not bounded:  # no cgroup: only the tool user's processes all together can be bounded
        set_limit(resource.RLIMIT_NPROC, UNBOUNDED_MAX_PROCESSES)
    set_limit(resource.RLIMIT_CORE, 0)  # SIGXCPU would otherwise dump core


def cpu_spent(limits: SandboxLimits, output: str) -> SandboxError:
    msg = f"exceeded the CPU time limit of {limits.cpu_seconds}s"
    return SandboxError(msg, kind="cpu_limit", output=output)


def out_of_memory(limits: SandboxLimits, output: str, tail: str = "") -> SandboxError:
    msg = f"ran out of memory (limit {limits.memory_mb} MiB, its processes and files together)"
    return SandboxError(msg + (f"\n{tail}" if tail else ""), kind="memory_limit", output=output)


class CpuBudget:
    """Ends the run once its processes together used ``cpu_seconds`` of CPU. The run can
    use at most ``cpu_cores`` at once, so the budget is read only when it could be spent."""

    def __init__(self, cgroup: RunCgroup, limits: SandboxLimits, kill: Callable[[], None]) -> None:
        self.cgroup = cgroup
        self.limits = limits
        self.kill = kill
        self.spent = False

    async def watch(self) -> None:
        rate = min(self.limits.cpu_cores, float(os.cpu_count() or 1))
        while (used := self.cgroup.cpu_seconds()) is not None:
            left = self.limits.cpu_seconds - used
            if left <= 0:
                self.spent = True
                self.kill()
                return
            await asyncio.sleep(max(left / rate, 0.02))
