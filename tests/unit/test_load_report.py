"""``a0ctl load``'s reading of this host's CPU, and what its report says of it."""

from __future__ import annotations

from typing import Any

import pytest

from a0ctl.commands.load import render
from a0ctl.load import (
    PROC_STAT,
    HostCpu,
    LoadReport,
    Percentiles,
    Window,
    busy_between,
    cpu_times,
    timeline,
)

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


def report(cpu: HostCpu, windows: list[Window] | None = None) -> LoadReport:
    none = Percentiles.of([])
    fields: dict[str, Any] = dict.fromkeys(
        ("sent", "accepted", "rejected", "shed", "completed", "failed", "failed_sessions", "lost"), 0
    )
    return LoadReport(
        **fields,
        sessions=1,
        duration_s=60.0,
        ramp_s=10.0,
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
        timeline=windows or [],
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


def test_the_timeline_splits_the_run_by_when_each_message_was_sent() -> None:
    # The ramp's turns slow, the rest fast; one retry sent past the end counts in the last.
    answered = [(1.0, 2.0), (9.5, 1.0), (12.0, 0.2), (35.0, 0.4), (59.0, 0.3), (61.0, 0.5)]
    accepted = [(1.0, 0.5), (9.5, 0.3), (12.0, 0.02)]
    # /proc/stat readings every 2 s: all busy for the first 10 s, then half.
    cpu, busy, total = [], 0, 0
    for second in range(0, 62, 2):
        cpu.append((float(second), (busy, total)))
        busy += 200 if second < 10 else 100
        total += 200
    windows = timeline(60.0, answered, accepted, cpu)
    assert [w.start_s for w in windows] == [0, 10, 20, 30, 40, 50] and windows[-1].end_s == 60
    assert [w.answered for w in windows] == [2, 1, 0, 1, 0, 2]
    assert windows[0].response_mean_s == 1.5 and windows[0].response_p99_s == 2.0
    assert windows[0].accept_mean_s == 0.4 and windows[1].accept_mean_s == 0.02
    assert windows[2].response_mean_s is None and windows[2].accept_mean_s is None
    assert windows[5].response_mean_s == 0.4
    assert windows[0].host_cpu == 1.0 and windows[3].host_cpu == 0.5


def test_a_short_run_has_fewer_windows_and_no_cpu_reading_gives_none() -> None:
    windows = timeline(8.0, [(3.0, 0.1)], [], [])
    assert len(windows) == 1 and windows[0].answered == 1 and windows[0].host_cpu is None


def test_the_timeline_is_shown_with_the_ramp_marked(capsys: pytest.CaptureFixture[str]) -> None:
    windows = timeline(60.0, [(1.0, 1.234), (30.0, 0.25)], [(1.0, 0.5)], [])
    render(report(HostCpu(cores=2, mean=0.5, max=0.6), windows))
    out = capsys.readouterr().out
    assert "by when the message was sent" in out
    ramp = next(line for line in out.splitlines() if "0–10 (ramp)" in line)
    assert "1.234" in ramp and "0.500" in ramp
    assert any("30–40" in line and "0.250" in line and "ramp" not in line for line in out.splitlines())
