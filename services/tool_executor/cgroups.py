"""A cgroup per sandboxed run: its memory (tmpfs pages included), processes and CPU are
bounded together, whatever the run forks, so one run cannot starve or fail another
(rlimits bound each process, and ``RLIMIT_NPROC`` all of the tool user's at once).
:func:`prepare` makes the parent as root, :meth:`RunCgroups.create` a child per run,
:meth:`RunCgroup.adopt` moves bwrap in before the tool's first process starts,
:meth:`RunCgroup.remove` kills what is left; :func:`probe` tells ``a0ctl doctor`` whether
v2 or v1 works here. The design: docs/architecture.md, "The cgroups of tool runs".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import signal
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from services.common.errors import A0Error

# The controllers a run needs; cpuacct (v1 only) tells the CPU time a run used.
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CFS_PERIOD_US = 100_000
# How long the processes of a killed run may take to leave its cgroup.
REMOVE_SECONDS = 5.0


class CgroupError(A0Error):
    """No cgroup to bound tool runs with here; the message says what is missing."""


class RunBounds(BaseModel):
    """What one run may use, all its processes together."""

    memory_bytes: int
    processes: int
    cpu_cores: float


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """Controller (or "" for v2) → this process's cgroup path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _mounts(mountinfo: str) -> tuple[dict[str, Path], Path | None]:
    """v1 controller → its hierarchy's mount point, and the cgroup2 mount point."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        fstype, _, options = (rest.split() + ["", "", ""])[:3]
        mount_point = Path(fields.split()[4])
        if fstype == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fstype == "cgroup":
            for option in options.split(","):
                v1.setdefault(option, mount_point)
    return v1, v2


def _below(mount_point: Path, path: str) -> Path:
    return mount_point / path.lstrip("/")


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _chown(paths: list[Path], owner: str | None) -> None:
    if owner is None or os.geteuid() != 0:
        return
    entry = pwd.getpwnam(owner)
    for path in paths:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _procs(directory: Path) -> list[int]:
    try:
        return [int(pid) for pid in (directory / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _empty_and_remove(directory: Path, deadline: float) -> None:
    """Kill whatever is in ``directory`` (a cgroup with no children) and remove it."""
    kill = directory / "cgroup.kill"  # v2, Linux 5.14+: every process at once
    if kill.exists():
        with contextlib.suppress(OSError):
            _write(kill, "1")
    while True:
        for pid in _procs(directory):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY until the last one has left
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class RunCgroup(BaseModel):
    """One run's cgroup: a directory per hierarchy (one on v2)."""

    version: Literal[1, 2]
    dirs: list[Path]
    memory: Path
    pids: Path
    cpu: Path
    cpu_usage: Path | None  # where the run's CPU time is read, if anywhere

    def adopt(self, pids: list[int]) -> None:
        """Move these processes in (each alone: its later children are born inside)."""
        for directory in self.dirs:
            with open(directory / "cgroup.procs", "w", encoding="ascii") as procs:
                for pid in pids:
                    procs.write(str(pid))
                    procs.flush()  # one pid per write(2)

    def cpu_seconds(self) -> float | None:
        """CPU time used by every process of the run so far, or None if not measured here."""
        if self.cpu_usage is None:
            return None
        try:
            text = self.cpu_usage.read_text()
        except OSError:
            return None
        if self.version == 1:
            return int(text) / 1e9  # cpuacct.usage, in ns
        for line in text.splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return None

    def memory_kills(self) -> int:
        """Processes of the run the kernel killed for going over its memory limit."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.memory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill(self) -> None:
        """SIGKILL every process of the run (once; :meth:`remove` makes sure)."""
        for pid in _procs(self.pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, wait_s: float = REMOVE_SECONDS) -> None:
        """Kill every process left in the run and remove its cgroup. Raises OSError if
        one is still there after ``wait_s`` (0: do not wait, for a caller that cannot)."""
        deadline = time.monotonic() + wait_s
        for directory in self.dirs:
            _empty_and_remove(directory, deadline)


class RunCgroups(BaseModel):
    """The parent cgroup(s) the executor makes runs in: per v1 hierarchy, or one on v2."""

    version: Literal[1, 2]
    parents: dict[str, Path]  # controller → parent dir (v2: every controller → the one dir)
    # Who starts bwrap and so joins each run's cgroup; runs made by root are given to it.
    owner: str | None = None

    def describe(self) -> str:
        where = sorted({str(p) for p in self.parents.values()})
        return f"cgroup v{self.version}: {', '.join(where)}"

    def create(self, bounds: RunBounds, kind: str = "run") -> RunCgroup:
        """A new cgroup for one run (or one MCP server's life: ``kind`` "mcp"), its limits
        written; raises OSError if it cannot be."""
        name = f"{kind}-{uuid.uuid4().hex[:16]}"
        dirs: list[Path] = []
        by_controller: dict[str, Path] = {}
        try:
            for controller, parent in self.parents.items():
                directory = parent / name
                if directory not in dirs:
                    directory.mkdir()
                    dirs.append(directory)
                by_controller[controller] = directory
            if self.version == 2:
                usage: Path | None = by_controller["cpu"] / "cpu.stat"
            else:
                usage = by_controller["cpuacct"] / "cpuacct.usage" if "cpuacct" in by_controller else None
            run = RunCgroup(
                version=self.version,
                dirs=dirs,
                memory=by_controller["memory"],
                pids=by_controller["pids"],
                cpu=by_controller["cpu"],
                cpu_usage=usage,
            )
            _limit(run, bounds)
            _chown([directory / "cgroup.procs" for directory in dirs], self.owner)
        except BaseException:
            for directory in reversed(dirs):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        return run


def _limit(run: RunCgroup, bounds: RunBounds) -> None:
    quota = max(1000, int(bounds.cpu_cores * CFS_PERIOD_US))
    if run.version == 1:
        _write(run.memory / "memory.limit_in_bytes", str(bounds.memory_bytes))
        memsw = run.memory / "memory.memsw.limit_in_bytes"  # present with swap accounting
        if memsw.exists():
            _write(memsw, str(bounds.memory_bytes))
        _write(run.pids / "pids.max", str(bounds.processes))
        _write(run.cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(run.cpu / "cpu.cfs_quota_us", str(quota))
    else:
        _write(run.memory / "memory.max", str(bounds.memory_bytes))
        swap = run.memory / "memory.swap.max"
        if swap.exists():
            _write(swap, "0")
        _write(run.pids / "pids.max", str(bounds.processes))
        _write(run.cpu / "cpu.max", f"{quota} {CFS_PERIOD_US}")


def _stack_prefix(state_dir: Path) -> str:
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:10]
    return f"a0-tool-runs-{digest}-"


def parent_name(state_dir: Path, metrics_port: int) -> str:
    """One parent per executor replica of one stack, the same across its restarts."""
    return f"{_stack_prefix(state_dir)}{metrics_port}"


def _remove_stale_runs(parent: Path) -> None:
    # Runs and MCP servers of a previous executor of this replica that died without cleaning up.
    deadline = time.monotonic() + REMOVE_SECONDS
    for child in parent.iterdir():
        if child.is_dir() and child.name.startswith(("run-", "mcp-")):
            with contextlib.suppress(OSError):
                _empty_and_remove(child, deadline)


def _prepare_v1(v1: dict[str, Path], own: dict[str, str], name: str, owner: str | None) -> RunCgroups:
    missing = [c for c in V2_CONTROLLERS if c not in v1 or c not in own]
    if missing:
        raise CgroupError(f"cgroup v1 has no {', '.join(missing)} hierarchy mounted")
    parents: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        if controller not in v1 or controller not in own:
            continue  # cpuacct is optional: without it only each process's CPU is bounded
        parent = _below(v1[controller], own[controller]) / name
        if parent not in parents.values():
            parent.mkdir(exist_ok=True)
            _remove_stale_runs(parent)
            # A v1 cgroup's owner may make children and move its own processes into them.
            _chown([parent, parent / "cgroup.procs", parent / "tasks"], owner)
        parents[controller] = parent
    return RunCgroups(version=1, parents=parents, owner=owner)


def _prepare_v2(root: Path, own: str, name: str, owner: str | None, move_self: bool) -> RunCgroups:
    """Delegate a subtree: ``<base>/<name>`` holds the executor (in ``<name>/executor``)
    and its runs, so moving a child into a run needs only files the owner was given."""
    here = _below(root, own)
    base = here if own == "/" else here.parent
    wanted = " ".join("+" + c for c in V2_CONTROLLERS)
    enabled = set((base / "cgroup.subtree_control").read_text().split())
    if not set(V2_CONTROLLERS) <= enabled:
        _write(base / "cgroup.subtree_control", wanted)  # fails if base holds processes
    parent = base / name
    parent.mkdir(exist_ok=True)
    executor = parent / "executor"
    executor.mkdir(exist_ok=True)
    _remove_stale_runs(parent)
    if move_self:
        _write(executor / "cgroup.procs", "0")
    _write(parent / "cgroup.subtree_control", wanted)
    _chown(
        [parent, parent / "cgroup.procs", parent / "cgroup.subtree_control", executor / "cgroup.procs"],
        owner,
    )
    return RunCgroups(version=2, parents={c: parent for c in V2_CONTROLLERS}, owner=owner)


def _v2_has_controllers(root: Path, own: str) -> bool:
    here = _below(root, own)
    base = here if own == "/" else here.parent
    try:
        available = set((base / "cgroup.controllers").read_text().split())
    except OSError:
        return False
    return set(V2_CONTROLLERS) <= available


def prepare(name: str, owner: str | None = None, *, move_self: bool = True) -> RunCgroups:
    """Make the parent cgroup(s) runs are created in, owned by ``owner`` when we are root.

    Call before dropping root (and before the process starts threads, on v2, where the
    whole process moves). Raises :class:`CgroupError` saying why no cgroup can bound runs.
    """
    with open("/proc/self/cgroup", encoding="ascii") as f:
        own = _own_cgroups(f.read())
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        v1, v2 = _mounts(f.read())
    errors: list[str] = []
    if v2 is not None and "" in own and _v2_has_controllers(v2, own[""]):
        try:
            return _prepare_v2(v2, own[""], name, owner, move_self)
        except OSError as exc:
            errors.append(f"cgroup v2 at {v2}: {exc}")
    elif v2 is not None:
        errors.append(f"cgroup v2 at {v2} has not all of {', '.join(V2_CONTROLLERS)} enabled")
    if v1:
        try:
            return _prepare_v1(v1, own, name, owner)
        except (OSError, CgroupError) as exc:
            errors.append(f"cgroup v1: {exc}")
    elif v2 is None:
        errors.append("no cgroup file system is mounted")
    raise CgroupError("no cgroup can bound tool runs: " + "; ".join(errors))


def stack_parents(state_dir: Path, depth: int = 4) -> list[Path]:
    """The parent cgroups of every executor replica of the stack at ``state_dir``, in
    every hierarchy (they sit below the executor's own cgroup, which may differ from the
    caller's: looked for down to ``depth`` levels)."""
    prefix = _stack_prefix(state_dir)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        v1, v2 = _mounts(f.read())
    roots = {*v1.values(), *([v2] if v2 is not None else [])}
    found: list[Path] = []
    for root in sorted(roots):
        for here, dirs, _ in os.walk(root):
            level = len(Path(here).relative_to(root).parts)
            for name in list(dirs):
                if name.startswith(prefix):
                    found.append(Path(here) / name)
                    dirs.remove(name)
            if level >= depth - 1:
                dirs.clear()
    return found


def remove_stack_parents(state_dir: Path) -> list[Path]:
    """Remove the parent cgroups of a stopped stack's executors (``a0ctl down``, as root:
    the executor cannot, having dropped root), with any empty run, server or executor
    cgroup left in them. A cgroup that still holds a process stays (rmdir refuses);
    returns those left."""
    left = []
    for parent in stack_parents(state_dir):
        for child in sorted(p for p in parent.iterdir() if p.is_dir()):
            with contextlib.suppress(OSError):
                child.rmdir()
        try:
            parent.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            left.append(parent)
    return left


def probe(bounds: RunBounds) -> str:
    """What ``a0ctl doctor`` shows: a run cgroup made, limited and removed here, or raises."""
    cgroups = prepare(f"a0-doctor-{os.getpid()}", move_self=False)
    try:
        run = cgroups.create(bounds)
        run.remove()
    except OSError as exc:
        raise CgroupError(f"{cgroups.describe()}: cannot make a run's cgroup: {exc}") from None
    finally:
        for parent in set(cgroups.parents.values()):
            with contextlib.suppress(OSError):
                if cgroups.version == 2:
                    (parent / "executor").rmdir()
                parent.rmdir()
    return f"cgroup v{cgroups.version} ({', '.join(sorted(cgroups.parents))})"
