"""CPU time and memory of a local stack's processes, from ``/proc``: each supervised
process with every process it started, so work done in children that have since exited
(PostgreSQL backends, tool sandboxes) counts too.

A process's ``utime + stime`` is its own CPU; its ``cutime + cstime`` is that of its
children it has waited for, so a tree's total is, over the process and each live
descendant, all four fields. A child reaped between two readings moves from "live
descendant" to its parent's ``cutime``: the total carries on, it does not jump.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (field 3 on): the name may
    hold spaces and parentheses, so the line is cut at its last ``)``."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children_of() -> dict[int, list[int]]:
    """Every live process's children, by parent pid."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def own_ticks(pid: int) -> int | None:
    """utime + stime + cutime + cstime of one process (fields 14-17), in clock ticks."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return sum(int(value) for value in fields[11:15])


def tree_cpu_s(pid: int, children: dict[int, list[int]], skip: frozenset[int] = frozenset()) -> float | None:
    """CPU seconds of ``pid`` and its live descendants (children it has reaped included),
    leaving out the subtrees rooted at ``skip``; None when ``pid`` is gone."""
    ticks = _tree_sum(own_ticks, pid, children, skip)
    return ticks / CLOCK_TICKS if ticks is not None else None


def pss_kib_of(smaps_rollup: str) -> int | None:
    """The ``Pss:`` figure (KiB) of a ``/proc/PID/smaps_rollup`` text, None without one."""
    for line in smaps_rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def own_pss_kib(pid: int) -> int | None:
    """One process's proportional set size, in KiB: its private pages, plus each shared
    page divided by the processes sharing it, so the PSS of processes adds up to the
    memory they hold together (PostgreSQL's backends share its buffers, and are not
    counted once each). None when the process is gone or not readable."""
    try:
        return pss_kib_of((PROC / str(pid) / "smaps_rollup").read_text())
    except (OSError, ValueError):
        return None


def tree_pss_kib(pid: int, children: dict[int, list[int]], skip: frozenset[int] = frozenset()) -> int | None:
    """PSS of ``pid`` and its live descendants (KiB), leaving out the subtrees rooted at
    ``skip``; None when ``pid`` is gone."""
    return _tree_sum(own_pss_kib, pid, children, skip)


def _tree_sum(
    own: Callable[[int], int | None], pid: int, children: dict[int, list[int]], skip: frozenset[int]
) -> int | None:
    """``own`` summed over ``pid`` and its descendants, the subtrees rooted at ``skip`` left
    out (a descendant gone meanwhile counts 0); None when ``pid`` itself is gone."""
    root = own(pid)
    if root is None:
        return None
    total, todo = root, list(children.get(pid, []))
    while todo:
        current = todo.pop()
        if current in skip:
            continue
        total += own(current) or 0
        todo.extend(children.get(current, []))
    return total


class CpuReading(BaseModel):
    """CPU seconds of each process tree at one instant (``time.monotonic()``), with their
    PSS in MiB when asked for (``memory``), and how long the reading itself took the reader
    (its own CPU seconds)."""

    at: float
    cpu_s: dict[str, float]
    pss_mib: dict[str, float] = {}
    cost_s: float = 0.0


def _event_listeners(supervisor_pid: int, children: dict[int, list[int]], known: set[int]) -> dict[str, int]:
    """supervisord's children that are not among its programs: its event listeners (the
    health watchdog), named after the module they run."""
    listeners = {}
    for pid in children.get(supervisor_pid, []):
        if pid in known:
            continue
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        module = next((a.decode() for a in argv if a.startswith(b"a0ctl.runtime.")), "")
        if module:
            listeners[module.rsplit(".", 1)[1]] = pid
    return listeners


def read_trees(
    pids: dict[str, int], supervisor_pid: int | None = None, *, memory: bool = False
) -> CpuReading:
    """CPU seconds of each named process tree; with ``supervisor_pid``, its event listeners
    (the watchdog) under their own names and supervisord itself as "supervisord", without
    the trees it supervises. With ``memory``, each tree's PSS too (the kernel walks every
    mapping of each process for it: a few milliseconds a process, so not on every reading)."""
    started = time.process_time()
    children = children_of()
    named = dict(pids)
    if supervisor_pid is not None:
        named.update(_event_listeners(supervisor_pid, children, set(pids.values())))
    cpu: dict[str, float] = {}
    pss: dict[str, float] = {}
    trees = [(name, pid, frozenset[int]()) for name, pid in named.items()]
    if supervisor_pid is not None:
        trees.append(("supervisord", supervisor_pid, frozenset(named.values())))
    for name, pid, skip in trees:
        seconds = tree_cpu_s(pid, children, skip)
        if seconds is not None:
            cpu[name] = seconds
        if memory and (kib := tree_pss_kib(pid, children, skip)) is not None:
            pss[name] = round(kib / 1024, 1)
    return CpuReading(at=time.monotonic(), cpu_s=cpu, pss_mib=pss, cost_s=time.process_time() - started)


def own_cpu_s() -> float:
    """This process's CPU seconds (every thread), as the kernel counts it."""
    times = os.times()
    return times.user + times.system
