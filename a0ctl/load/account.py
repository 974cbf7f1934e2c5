"""The account of a load run: what each answered turn cost the whole stack, net of what
the stack spends doing nothing.

Before the load, the stack is read twice, an idle window apart: that gives each
process's idle CPU rate and each counter's idle rate. The load's turns are then read
between two more readings, the last after a settle time (PostgreSQL's backends publish
their statistics up to 10 s after they go idle); each figure per answered turn is the
run's difference minus the idle rate times the run's length, over the answered turns.

The readings themselves: :mod:`a0ctl.load.probe`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel


class Reading(BaseModel):
    """The stack at one instant: CPU seconds per process tree and every counter."""

    at: float  # time.monotonic()
    wall: float  # time.time(), for the span queries
    cpu_s: dict[str, float]
    counters: dict[str, float]
    client_cpu_s: float  # this process's CPU, less what the readings themselves took
    pss_mib: dict[str, float] = {}  # each process tree's PSS, on the readings that take it


class AccountRow(BaseModel):
    """One line of the account: its idle rate, its gross total during the run, and the
    net figure per answered turn (None where it could not be read)."""

    group: str
    name: str
    unit: str
    idle_per_s: float | None
    run_total: float | None
    per_turn: float | None


class MemoryRow(BaseModel):
    """One process tree's PSS as the run started and after it, in MiB (None where the
    tree was not there to read)."""

    name: str
    before_mib: float | None
    after_mib: float | None
    change_mib: float | None


class Account(BaseModel):
    turns: int
    idle_s: float
    run_s: float
    idle_cpu_ms_per_s: float | None  # the whole stack's idle rate
    cpu_ms_per_turn: float | None  # the whole stack and the load client, net of idle
    rows: list[AccountRow]
    memory: list[MemoryRow] = []  # PSS per process tree, largest after the run first
    pss_before_mib: float | None = None  # the whole stack's PSS as the run started
    pss_after_mib: float | None = None  # and after it
    probe_cpu_ms: float  # what reading the stack cost this process, in all
    sources: dict[str, str]  # where each group's figures come from
    unavailable: list[str]


def _per_s(before: float | None, after: float | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0:
        return None
    return (after - before) / seconds


def _net_per_turn(
    run_total: float | None, idle_per_s: float | None, run_s: float, turns: int
) -> float | None:
    if run_total is None or turns <= 0:
        return None
    return (run_total - (idle_per_s or 0.0) * run_s) / turns


def _group_of(key: str) -> tuple[str, str]:
    group, _, name = key.partition(":")
    return group, name


UNITS = {"postgres": "", "kafka records": "records", "kafka requests": "requests"}


def memory_rows(before: dict[str, float], after: dict[str, float]) -> list[MemoryRow]:
    """Each process tree's PSS before and after the run (MiB), largest after it first."""
    rows = []
    for name in set(before) | set(after):
        first, last = before.get(name), after.get(name)
        change = round(last - first, 1) if first is not None and last is not None else None
        rows.append(MemoryRow(name=name, before_mib=first, after_mib=last, change_mib=change))
    return sorted(rows, key=lambda row: (-(row.after_mib or 0.0), row.name))


def _total(pss: dict[str, float]) -> float | None:
    return round(sum(pss.values()), 1) if pss else None


def build_account(
    idle: tuple[Reading, Reading],
    run: tuple[Reading, Reading],
    turns: int,
    *,
    idle_spans: tuple[int, int] | None = None,
    run_spans: tuple[int, int] | None = None,
    probe_cpu_ms: float = 0.0,
    unavailable: dict[str, str] | None = None,
) -> Account:
    """The account from two idle readings and two run readings: its row groups (CPU,
    counters, tracing) in the order they are shown."""
    idle_s = idle[1].at - idle[0].at
    run_s = run[1].at - run[0].at
    cpu = _cpu_rows(idle, run, turns, idle_s, run_s)
    client, client_net = _client_row(idle, run, turns, idle_s)
    rows = [*cpu.rows, client, *_counter_rows(idle, run, turns, idle_s, run_s)]
    if run_spans is not None:
        rows += _span_rows(idle_spans, run_spans, turns, idle_s, run_s)
    return Account(
        turns=turns,
        idle_s=round(idle_s, 1),
        run_s=round(run_s, 1),
        idle_cpu_ms_per_s=_r(cpu.idle_total) if cpu.rows else None,
        cpu_ms_per_turn=_r(cpu.run_net + (client_net or 0.0)) if cpu.complete and turns else None,
        rows=rows,
        memory=memory_rows(run[0].pss_mib, run[1].pss_mib),
        pss_before_mib=_total(run[0].pss_mib),
        pss_after_mib=_total(run[1].pss_mib),
        probe_cpu_ms=round(probe_cpu_ms, 1),
        sources=SOURCES,
        unavailable=[f"{source}: {why}" for source, why in sorted((unavailable or {}).items())],
    )


@dataclass
class _CpuRows:
    rows: list[AccountRow]
    idle_total: float  # ms per second, every process idle
    run_net: float  # ms per turn, net of idle, of the processes that have one
    complete: bool  # every process has a per-turn figure


def _cpu_rows(
    idle: tuple[Reading, Reading], run: tuple[Reading, Reading], turns: int, idle_s: float, run_s: float
) -> _CpuRows:
    """One row per process tree, the busiest in the run first."""
    names = sorted(set(run[0].cpu_s) & set(run[1].cpu_s), key=lambda n: -(run[1].cpu_s[n] - run[0].cpu_s[n]))
    found = _CpuRows(rows=[], idle_total=0.0, run_net=0.0, complete=bool(names))
    for name in names:
        idle_rate = _per_s(idle[0].cpu_s.get(name), idle[1].cpu_s.get(name), idle_s)
        total = (run[1].cpu_s[name] - run[0].cpu_s[name]) * 1000
        rate_ms = idle_rate * 1000 if idle_rate is not None else None
        net = _net_per_turn(total, rate_ms, run_s, turns)
        found.rows.append(
            AccountRow(
                group="cpu",
                name=name,
                unit="ms",
                idle_per_s=_r(rate_ms),
                run_total=_r(total),
                per_turn=_r(net),
            )
        )
        found.idle_total += rate_ms or 0.0
        if net is None:
            found.complete = False
        else:
            found.run_net += net
    return found


def _client_row(
    idle: tuple[Reading, Reading], run: tuple[Reading, Reading], turns: int, idle_s: float
) -> tuple[AccountRow, float | None]:
    """The load client's row and its CPU per turn."""
    client_idle = _per_s(idle[0].client_cpu_s, idle[1].client_cpu_s, idle_s)
    client_total = (run[1].client_cpu_s - run[0].client_cpu_s) * 1000
    # The load client's idle is itself waiting for the run: its whole run is its cost.
    client_net = client_total / turns if turns else None
    row = AccountRow(
        group="cpu",
        name="load client",
        unit="ms",
        idle_per_s=_r(client_idle * 1000 if client_idle is not None else None),
        run_total=_r(client_total),
        per_turn=_r(client_net),
    )
    return row, client_net


def _counter_rows(
    idle: tuple[Reading, Reading], run: tuple[Reading, Reading], turns: int, idle_s: float, run_s: float
) -> list[AccountRow]:
    """One row per counter (PostgreSQL, Kafka, Redis, OPA, LLM), a topic nobody wrote to left out."""
    rows = []
    for key in sorted(set(run[0].counters) & set(run[1].counters)):
        group, name = _group_of(key)
        idle_rate = _per_s(idle[0].counters.get(key), idle[1].counters.get(key), idle_s)
        total = run[1].counters[key] - run[0].counters[key]
        if group == "kafka records" and not total and not idle_rate:
            continue
        rows.append(
            AccountRow(
                group=group,
                name=name,
                unit=UNITS.get(group, ""),
                idle_per_s=_r(idle_rate),
                run_total=_r(total),
                per_turn=_r(_net_per_turn(total, idle_rate, run_s, turns)),
            )
        )
    return rows


def _span_rows(
    idle_spans: tuple[int, int] | None, run_spans: tuple[int, int], turns: int, idle_s: float, run_s: float
) -> list[AccountRow]:
    """Traces and spans: the run's, against the idle rate."""
    rows = []
    for index, name in enumerate(("traces", "spans")):
        rate = idle_spans[index] / idle_s if idle_spans and idle_s > 0 else None
        rows.append(
            AccountRow(
                group="tracing",
                name=name,
                unit="",
                idle_per_s=_r(rate),
                run_total=float(run_spans[index]),
                per_turn=_r(_net_per_turn(float(run_spans[index]), rate, run_s, turns)),
            )
        )
    return rows


SOURCES = {
    "cpu": "/proc: each supervised process with its live descendants and reaped children "
    "(utime+stime+cutime+cstime); the load client is this process, less the account's readings",
    "memory": "/proc/PID/smaps_rollup: Pss of each supervised process and its live descendants, "
    "as the run starts and after the settle time",
    "postgres": "pg_stat_database (every database), pg_stat_wal, pg_stat_user_tables",
    "kafka records": "end offsets of every partition (transaction markers included)",
    "kafka requests": "the broker's RequestMetrics RequestsPerSec counts, read in the broker by an "
    "agent loaded through the JVM's attach socket (no port)",
    "redis": "INFO commandstats",
    "opa": "OPA's /metrics: requests to the data API",
    "llm": "the workers' a0_llm_call_seconds count",
    "tracing": "Jaeger's query API: traces that started in each window",
}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
