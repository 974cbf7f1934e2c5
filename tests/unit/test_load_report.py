"""``a0ctl load``'s reading of this host's CPU, its account of what a turn costs, its
reconnections, and what its report says of them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from a0ctl.commands.load import render
from a0ctl.load.account import Reading, build_account
from a0ctl.load.kafka_requests import read_request_counts
from a0ctl.load.processes import (
    CLOCK_TICKS,
    children_of,
    own_pss_kib,
    own_ticks,
    pss_kib_of,
    read_trees,
    tree_cpu_s,
    tree_pss_kib,
)
from a0ctl.load.report import HostCpu, LoadReport, Percentiles, Window, busy_between, cpu_times, timeline
from a0ctl.load.sampling import PROC_STAT
from a0ctl.load.session import RECONNECT_CAP_S, RECONNECT_FIRST_S, Session, Tally
from services.common.retry import Backoff
from services.common.settings import load_settings

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


# --- the account ---------------------------------------------------------------------


def reading(at: float, cpu: dict[str, float], counters: dict[str, float], client: float = 0.0) -> Reading:
    return Reading(at=at, wall=1_800_000_000 + at, cpu_s=cpu, counters=counters, client_cpu_s=client)


def test_the_account_gives_each_cost_per_answered_turn_net_of_the_idle_rate() -> None:
    # Idle over 10 s: Kafka 20 ms/s, the worker 5 ms/s, one PostgreSQL commit a second.
    idle = (
        reading(0.0, {"kafka": 10.0, "conversation-worker": 4.0}, {"postgres:commits": 100.0}, client=1.0),
        reading(10.0, {"kafka": 10.2, "conversation-worker": 4.05}, {"postgres:commits": 110.0}, client=1.0),
    )
    # The run: 100 turns in 50 s. Kafka 1.4 s (1.0 s of it idle), the worker 2.25 s (0.25 s idle).
    run = (
        idle[1],
        reading(
            60.0,
            {"kafka": 11.6, "conversation-worker": 6.3},
            {"postgres:commits": 960.0, "kafka records:conversation.outbound": 600.0},
            client=1.3,
        ),
    )
    run[0].counters["kafka records:conversation.outbound"] = 0.0
    account = build_account(
        idle,
        run,
        100,
        idle_spans=(0, 0),
        run_spans=(75, 2400),
        unavailable={"kafka requests": "no JDK"},
    )
    rows = {(row.group, row.name): row for row in account.rows}
    assert rows["cpu", "kafka"].idle_per_s == 20.0 and rows["cpu", "kafka"].per_turn == 4.0
    assert rows["cpu", "conversation-worker"].per_turn == 20.0
    assert rows["cpu", "load client"].per_turn == 3.0  # the load client's whole run is its cost
    assert account.idle_cpu_ms_per_s == 25.0
    assert account.cpu_ms_per_turn == 27.0  # 4 + 20 + 3
    # 850 commits in the run, 50 of them the idle rate's.
    assert rows["postgres", "commits"].per_turn == 8.0 and rows["postgres", "commits"].idle_per_s == 1.0
    assert rows["kafka records", "conversation.outbound"].per_turn == 6.0
    assert rows["tracing", "traces"].per_turn == 0.75 and rows["tracing", "spans"].per_turn == 24.0
    assert account.unavailable == ["kafka requests: no JDK"]


def test_the_account_is_one_table_in_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    idle = (
        reading(0.0, {"kafka": 1.0}, {"redis:commands": 0.0}),
        reading(10.0, {"kafka": 1.1}, {"redis:commands": 5.0}),
    )
    run = (idle[1], reading(20.0, {"kafka": 2.1}, {"redis:commands": 75.0}, client=0.2))
    full = report(HostCpu(cores=2)).model_copy(update={"account": build_account(idle, run, 10)})
    render(full)
    out = capsys.readouterr().out
    assert "what a turn cost: 10 answered turns" in out
    whole = next(line for line in out.splitlines() if "whole stack + load client" in line)
    assert "10" in whole and "110" in whole  # idle 10 ms/s; (1000 - 100) / 10 + 20 per turn
    assert any("redis: commands" in line and "0.5" in line and "6.5" in line for line in out.splitlines())
    assert '"account"' in full.model_dump_json()


def test_a_process_tree_counts_children_that_exited_and_descendants_still_running() -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"subprocess.run([sys.executable, '-c', {burn!r}])\n"  # exits, reaped: cutime
            f"subprocess.Popen([sys.executable, '-c', {burn!r} + 'time.sleep(60)'])\n"  # lives on
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while (total := tree_cpu_s(parent.pid, children_of())) is not None and total < 0.6:
            assert time.monotonic() < deadline, f"the tree counted {total} s of CPU"
            time.sleep(0.1)
        own = own_ticks(parent.pid)
        assert own is not None and own / CLOCK_TICKS < 0.6 <= (total or 0)
        named = read_trees({"parent": parent.pid})
        assert named.cpu_s["parent"] >= 0.6 and named.pss_mib == {}  # memory only when asked
        # Memory: the parent and the child still running, each holding a Python heap.
        own_pss = own_pss_kib(parent.pid)
        tree_pss = tree_pss_kib(parent.pid, children_of())
        assert own_pss is not None and tree_pss is not None and tree_pss > own_pss > 0
        with_memory = read_trees({"parent": parent.pid}, memory=True)
        assert with_memory.pss_mib["parent"] > 1
    finally:
        for child in children_of().get(parent.pid, []):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.communicate()


def test_a_gone_process_has_no_figure() -> None:
    assert tree_cpu_s(2**22 + 7, {}) is None
    assert tree_pss_kib(2**22 + 7, {}) is None


SMAPS_ROLLUP = """55d0c0a00000-7ffd2b9f1000 ---p 00000000 00:00 0                          [rollup]
Rss:              104868 kB
Pss:               61234 kB
Pss_Dirty:         40000 kB
Pss_Anon:          39000 kB
Shared_Clean:      52000 kB
"""


def test_pss_is_read_from_smaps_rollup_and_not_from_its_subtotals() -> None:
    assert pss_kib_of(SMAPS_ROLLUP) == 61234
    assert pss_kib_of("Rss: 10 kB\n") is None


def test_the_account_gives_each_process_trees_pss_before_and_after_the_run() -> None:
    idle = (reading(0.0, {"kafka": 1.0}, {}), reading(10.0, {"kafka": 1.1}, {}))
    idle[1].pss_mib.update({"kafka": 300.0, "postgres": 120.0, "gateway": 90.5})
    after = reading(20.0, {"kafka": 2.1}, {})
    after.pss_mib.update({"kafka": 310.0, "postgres": 150.0, "gateway": 88.0, "jaeger": 40.0})
    account = build_account(idle, (idle[1], after), 10)
    assert [row.name for row in account.memory] == ["kafka", "postgres", "gateway", "jaeger"]
    rows = {row.name: row for row in account.memory}
    assert (rows["kafka"].before_mib, rows["kafka"].after_mib, rows["kafka"].change_mib) == (300, 310, 10)
    assert rows["gateway"].change_mib == -2.5
    assert rows["jaeger"].before_mib is None and rows["jaeger"].change_mib is None  # started in the run
    assert account.pss_before_mib == 510.5 and account.pss_after_mib == 588.0
    # Without readings of memory (no /proc to read), no rows and no totals.
    bare = build_account(idle, (idle[0], idle[0]), 10)
    assert bare.memory == [] and bare.pss_before_mib is None


def test_the_memory_table_follows_the_account(capsys: pytest.CaptureFixture[str]) -> None:
    idle = (reading(0.0, {"kafka": 1.0}, {}), reading(10.0, {"kafka": 1.1}, {}))
    idle[1].pss_mib.update({"kafka": 300.0, "postgres": 120.0})
    after = reading(20.0, {"kafka": 2.1}, {})
    after.pss_mib.update({"kafka": 310.0, "postgres": 150.0})
    render(report(HostCpu(cores=2)).model_copy(update={"account": build_account(idle, (idle[1], after), 10)}))
    lines = capsys.readouterr().out.splitlines()
    assert any("memory: PSS of each process tree (MiB)" in line for line in lines)
    whole = next(line for line in lines if "whole stack" in line and "420" in line)
    assert "460" in whole and "40" in whole
    assert any("postgres" in line and "120" in line and "150" in line and "30" in line for line in lines)


def test_sessions_reconnect_after_a_quarter_second_doubling_to_five_with_jitter() -> None:
    backoff = Backoff(base=RECONNECT_FIRST_S, cap=RECONNECT_CAP_S)
    pauses = [backoff.next() for _ in range(8)]
    bounds = [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert all(0 <= pause <= bound for pause, bound in zip(pauses, bounds, strict=True))
    backoff.reset()
    assert backoff.next() <= 0.25


async def test_a_post_whose_answer_is_cut_after_its_head_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway killed between an answer's head and its body (uvicorn writes them apart):
    the session sends the message again once a gateway answers, as a user would, and
    counts a reconnect, not a failed session."""
    heads: list[bytes] = []

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length")
        )
        await reader.readexactly(length)
        heads.append(head)
        body = b'{"turn_id": "t-1"}'
        answer = (
            b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        )
        writer.write(answer if len(heads) == 1 else answer + body)  # the first one cut after its head
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(gateway, "127.0.0.1", 0)
    monkeypatch.setenv("A0_GATEWAY_PORT", str(server.sockets[0].getsockname()[1]))
    monkeypatch.setenv("A0_GATEWAY_JWT_SECRET", "s" * 40)  # the session signs its own token
    tally = Tally()
    async with server, aiohttp.ClientSession() as http:
        answer = await Session(http, load_settings(), 0, tally).post(
            "/v1/x", {"content": "hi"}, time.monotonic() + 10
        )
    assert (answer.status, answer.json()) == (202, {"turn_id": "t-1"})
    assert len(heads) == 2
    assert (tally.reconnects, tally.failed_sessions, tally.causes) == (1, 0, {})


def test_reconnects_are_reported_apart_from_failures(capsys: pytest.CaptureFixture[str]) -> None:
    render(report(HostCpu(cores=2)).model_copy(update={"reconnects": 37}))
    out = capsys.readouterr().out
    assert any("reconnects after a connection error" in line and "37" in line for line in out.splitlines())
    assert "[red]" not in out and "not ok" in out  # nothing sent in this report: not a pass


def test_the_broker_request_counts_are_read_in_a_running_jvm_without_a_port(tmp_path: Path) -> None:
    source = tmp_path / "Idle.java"
    source.write_text(
        "public class Idle { public static void main(String[] a) throws Exception {"
        ' System.out.println("ready"); Thread.sleep(120_000); } }'
    )
    jvm = subprocess.Popen(["java", str(source)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert jvm.stdout is not None and jvm.stdout.readline().strip() == "ready"
        # No broker inside: no request kinds, but the agent ran and answered.
        assert read_request_counts(jvm.pid, tmp_path / "run") == {}
        assert (tmp_path / "run" / "agents" / "a0-kafka-request-counts.jar").exists()
        assert not any(tmp_path.glob(".attach_pid*"))
    finally:
        jvm.kill()
        jvm.communicate()
