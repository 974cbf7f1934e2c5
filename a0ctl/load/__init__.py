"""``a0ctl load``: many concurrent chat sessions against a running stack, through the
gateway, as browsers would drive them, and what a user would have noticed.

:func:`run_load` starts the sessions (:mod:`.session`) evenly over the ramp, samples lag
and CPU while they run (:mod:`.sampling`), and returns the :mod:`.report`, with the
run's cost to the stack when given an :class:`~a0ctl.load.probe.AccountProbe`. What the
report counts and why: docs/runbook.md, "Load runs".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from a0ctl.load.account import Account, Reading, build_account
from a0ctl.load.probe import IDLE_S, SETTLE_S, AccountProbe
from a0ctl.load.report import HostCpu, LoadReport, Percentiles, timeline
from a0ctl.load.sampling import SAMPLE_S, sample_cpu, sample_lag
from a0ctl.load.session import AnswerHook, Session, Tally
from services.common.settings import Settings

__all__ = ["SAMPLE_S", "LoadReport", "run_load"]


async def run_load(
    settings: Settings,
    *,
    sessions: int,
    duration_s: float,
    think_s: float,
    prompt: str,
    turn_timeout_s: float = 60.0,
    ramp_s: float | None = None,
    on_answer: AnswerHook | None = None,
    account: AccountProbe | None = None,
    idle_s: float = IDLE_S,
    settle_s: float = SETTLE_S,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> LoadReport:
    """Run the sessions and report. With ``account``, the stack is first read over
    ``idle_s`` of no traffic, and read again ``settle_s`` after the run (see
    :mod:`a0ctl.load.account`). ``on_start`` and ``on_end`` are called as the sessions
    start and once they all ended (before the settle time)."""
    idle = None
    if account is not None:
        first = await account.read()
        await asyncio.sleep(idle_s)
        idle = (first, await account.read(memory=True))
    if on_start is not None:
        on_start()
    tally = Tally()
    started = tally.started
    until = started + duration_s
    stop = asyncio.Event()
    lag = asyncio.create_task(sample_lag(settings, stop))
    readings: list[tuple[float, tuple[int, int]]] = []
    cpu = asyncio.create_task(sample_cpu(stop, readings))

    ramp = max(2.0, think_s) if ramp_s is None else ramp_s

    # One client for every session (one TLS context, one pool: a connection per session's
    # stream plus its requests), on aiohttp: the load generator shares the machine with the
    # stack it measures, and httpx cost it about ten times the CPU per request.
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=30),
        read_bufsize=1 << 18,
    )

    async def start_session(index: int) -> None:
        await asyncio.sleep(ramp * index / max(1, sessions))
        await Session(http, settings, index, tally, on_answer).run(prompt, until, think_s, turn_timeout_s)

    async with http:
        await asyncio.gather(*(start_session(i) for i in range(sessions)))
    elapsed = time.monotonic() - started
    if on_end is not None:
        on_end()
    stop.set()
    cost = None
    if account is not None and idle is not None:
        cost = await account_after(account, idle, settle_s, tally.completed)
    return load_report(
        tally,
        sessions=sessions,
        duration_s=duration_s,
        elapsed=elapsed,
        ramp_s=ramp,
        prompt=prompt,
        lag=await lag,
        host_cpu=await cpu,
        cpu_readings=[(at - started, times) for at, times in readings],
        cost=cost,
    )


async def account_after(
    account: AccountProbe, idle: tuple[Reading, Reading], settle_s: float, completed: int
) -> Account:
    """The stack's cost: read again ``settle_s`` after the run, against the idle reading."""
    await asyncio.sleep(settle_s)
    last = await account.read(memory=True)
    idle_spans = await account.spans(idle[0].wall, idle[1].wall)
    run_spans = await account.spans(idle[1].wall, last.wall)
    return build_account(
        idle,
        (idle[1], last),
        completed,
        idle_spans=idle_spans,
        run_spans=run_spans,
        probe_cpu_ms=account.probe_cpu_s * 1000,
        unavailable=account.unavailable,
    )


def load_report(
    tally: Tally,
    *,
    sessions: int,
    duration_s: float,
    elapsed: float,
    ramp_s: float,
    prompt: str,
    lag: tuple[float, int],
    host_cpu: HostCpu,
    cpu_readings: list[tuple[float, tuple[int, int]]],
    cost: Account | None,
) -> LoadReport:
    """The report of a run from its tally."""
    max_lag_s, max_lag_records = lag
    causes = dict(sorted(tally.causes.items(), key=lambda item: -item[1]))
    return LoadReport(
        sessions=sessions,
        duration_s=round(elapsed, 2),
        ramp_s=ramp_s,
        prompt=prompt,
        sent=tally.sent,
        accepted=tally.accepted,
        rejected=tally.shed,
        shed=tally.shed,
        shed_sign_ins=tally.shed_sign_ins,
        stream_retries=tally.stream_retries,
        reconnects=tally.reconnects,
        shed_sessions=tally.shed_sessions,
        completed=tally.completed,
        failed=tally.failed,
        failed_sessions=tally.failed_sessions,
        lost=tally.lost,
        duplicate_events=tally.duplicates,
        missing_events=tally.missing,
        throughput_per_s=round(tally.completed / elapsed, 2) if elapsed else 0.0,
        response_s=Percentiles.of([seconds for _, seconds in tally.response]),
        ttft_s=Percentiles.of(tally.ttft),
        accept_s=Percentiles.of([seconds for _, seconds in tally.accept]),
        delivery_ms=Percentiles.of(tally.delivery, 1000, 1),
        max_consumer_lag_s=round(max_lag_s, 3),
        max_consumer_lag_records=max_lag_records,
        host_cpu=host_cpu,
        timeline=timeline(duration_s, tally.response, tally.accept, cpu_readings),
        causes=causes,
        errors=[f"{count}x {cause}" for cause, count in list(causes.items())[:10]],
        account=cost,
    )
