"""``a0ctl load``'s reading of this host's CPU, and what its report says of it."""

from __future__ import annotations

from typing import Any

import pytest

from a0ctl.commands.load import render
from a0ctl.load import PROC_STAT, HostCpu, LoadReport, Percentiles, busy_between, cpu_times

pytestmark = pytest.mark.unit

# /proc/stat as Linux writes it: the all-CPU line first, then one line per CPU.
STAT = """cpu  1000 20 300 5000 80 10 30 60 0 0
cpu0 500 10 150 2500 40 5 15 30 0 0
cpu1 500 10 150 2500 40 5 15 30 0 0
intr 123456 0 0
ctxt 987654
"""
LATER = """cpu  1700 20 400 5100 80 10 30 60 400 0
cpu0 850 10 200 2550 40 5 15 30 200 0
"""


def test_busy_time_is_everything_but_idle_and_io_wait_with_steal_counted_busy() -> None:
    assert cpu_times(STAT) == (1000 + 20 + 300 + 10 + 30 + 60, 6500)
    # 900 jiffies later: 800 busy (700 user, 100 system) and 100 idle. Guest time (400) is
    # already inside user, so it does not count twice.
    assert busy_between(cpu_times(STAT) or (0, 0), cpu_times(LATER) or (0, 0)) == 0.889


def test_no_time_passed_or_no_cpu_line_gives_no_figure() -> None:
    times = cpu_times(STAT)
    assert times is not None and busy_between(times, times) is None
    assert cpu_times("intr 1 2 3\n") is None


def test_this_hosts_cpu_reads_as_a_share_of_its_time() -> None:
    times = cpu_times(PROC_STAT.read_text())
    assert times is not None and 0 < times[0] < times[1]


def report(cpu: HostCpu) -> LoadReport:
    none = Percentiles.of([])
    fields: dict[str, Any] = dict.fromkeys(
        ("sent", "accepted", "rejected", "shed", "completed", "failed", "failed_sessions", "lost"), 0
    )
    return LoadReport(
        **fields,
        sessions=1,
        duration_s=1.0,
        ramp_s=0.0,
        prompt="hi",
        duplicate_events=0,
        missing_events=0,
        throughput_per_s=0.0,
        response_s=none,
        ttft_s=none,
        accept_s=none,
        delivery_ms=none,
        max_consumer_lag_s=0.0,
        max_consumer_lag_records=0,
        host_cpu=cpu,
        causes={},
        errors=[],
    )


def test_a_saturated_host_is_named_as_the_cause_of_waiting(capsys: pytest.CaptureFixture[str]) -> None:
    render(report(HostCpu(cores=2, mean=0.87, max=0.96)))
    out = " ".join(capsys.readouterr().out.split())
    assert "87% / 96%" in out and "of 2 cores" in out
    assert "96% busy at the peak" in out and "waiting for a core" in out


def test_a_host_with_room_or_without_proc_stat_gets_no_note(capsys: pytest.CaptureFixture[str]) -> None:
    render(report(HostCpu(cores=4, mean=0.41, max=0.62)))
    out = " ".join(capsys.readouterr().out.split())
    assert "41% / 62%" in out and "waiting for a core" not in out
    render(report(HostCpu(cores=4)))
    out = " ".join(capsys.readouterr().out.split())
    assert "unknown" in out and "waiting for a core" not in out
