"""What a load run samples while it runs: the worst consumer lag, and this host's CPU."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from a0ctl.load.report import HostCpu, busy_between, cpu_times
from a0ctl.topics.admin import LagProbe
from services.common.settings import Settings

# How often the run samples consumer lag and this host's CPU.
SAMPLE_S = 2.0
LAG_READ_TIMEOUT_S = 10.0
PROC_STAT = Path("/proc/stat")


def read_cpu_times() -> tuple[int, int] | None:
    try:
        return cpu_times(PROC_STAT.read_text())
    except (OSError, ValueError, IndexError):
        return None


async def sample_lag(settings: Settings, stop: asyncio.Event) -> tuple[float, int]:
    """The worst consumer lag seen while the load runs: (seconds, records). One probe
    serves every reading; after a failed one (a broker restarting) the next opens anew."""
    worst_s, worst_records = 0.0, 0
    probe: LagProbe | None = None
    try:
        while not stop.is_set():
            try:
                if probe is None:
                    probe = await LagProbe(settings).open()
                # A broker gone mid-reading holds a request until the client's own timeout
                # (40 s): give up sooner, and open anew.
                rows = await asyncio.wait_for(probe.read(None), LAG_READ_TIMEOUT_S)
                worst_s = max([worst_s, *(row.lag_seconds for row in rows)])
                worst_records = max([worst_records, *(row.lag for row in rows)])
            except Exception:  # sampling is best effort; the run goes on
                if probe is not None:
                    await close_probe(probe)
                    probe = None
            await pause(stop)
    finally:
        if probe is not None:
            await close_probe(probe)
    return worst_s, worst_records


async def close_probe(probe: LagProbe) -> None:
    try:
        await probe.close()
    except Exception:  # a broker gone: nothing left to close cleanly
        pass


async def sample_cpu(stop: asyncio.Event, readings: list[tuple[float, tuple[int, int]]]) -> HostCpu:
    """This host's CPU while the load runs: over the whole run, and the busiest window.
    Each reading is added to ``readings`` with when it was taken (time.monotonic())."""
    first = read_cpu_times()
    if first is None:
        return HostCpu()
    last, last_at = first, time.monotonic()
    readings.append((last_at, first))
    busiest: float | None = None
    while not stop.is_set():
        await pause(stop)
        now, at = read_cpu_times(), time.monotonic()
        if now is None:
            return HostCpu()
        readings.append((at, now))
        window = busy_between(last, now)
        # The last window, cut short by the end of the run, is too short to judge a peak.
        if window is not None and at - last_at >= SAMPLE_S / 2 and (busiest is None or window > busiest):
            busiest = window
        last, last_at = now, at
    return HostCpu(mean=busy_between(first, last), max=busiest)


async def pause(stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), SAMPLE_S)
    except TimeoutError:
        pass
