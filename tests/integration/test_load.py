"""``a0ctl load`` against the real stack: the report a release check would read."""

from __future__ import annotations

import json

import pytest

from a0ctl.runtime.local import LocalRuntime
from tests.support.cli import a0ctl

pytestmark = pytest.mark.integration


def test_load_report_counts_answers_and_finds_nothing_lost_or_repeated(stack: LocalRuntime) -> None:
    result = a0ctl("load", "--sessions", "8", "--duration", "6", "--think", "0.2", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"] is True, report
    assert report["completed"] >= 8 and report["completed"] == report["accepted"]
    assert report["lost"] == 0 and report["duplicate_events"] == 0 and report["missing_events"] == 0
    assert report["response_s"]["p50"] > 0 and report["delivery_ms"]["p99"] is not None
    # The stack runs on this host: its CPU was busy, over the run and in its busiest 2 s.
    cpu = report["host_cpu"]
    assert cpu["cores"] >= 1 and 0 < cpu["mean"] <= 1 and 0 < cpu["max"] <= 1, cpu
    # Its timeline: every answered turn in the window it was sent in, with the CPU then.
    windows = report["timeline"]
    assert windows[0]["start_s"] == 0 and windows[-1]["end_s"] == 6, windows
    assert sum(window["answered"] for window in windows) == report["completed"], windows
    assert all(0 < window["host_cpu"] <= 1 for window in windows), windows
    # The account's memory: each process tree's PSS as the run started and after it.
    account = report["account"]
    memory = {row["name"]: row for row in account["memory"]}
    assert {"kafka", "postgres", "redis", "gateway", "conversation-worker", "supervisord"} <= set(memory), (
        memory
    )
    assert all(row["before_mib"] > 0 and row["after_mib"] > 0 for row in memory.values()), memory
    assert account["pss_after_mib"] == pytest.approx(
        sum(row["after_mib"] for row in memory.values()), abs=0.5
    )
    # Its counts, PostgreSQL's backends started among them (a pool renewing its
    # connections in the middle of a run shows there).
    counted = {(row["group"], row["name"]) for row in account["rows"]}
    assert {("postgres", "commits"), ("postgres", "backends started")} <= counted, counted


def test_a_session_that_cannot_reach_the_gateway_fails_the_run_with_its_cause(stack: LocalRuntime) -> None:
    from tests.support.processes import free_port

    result = a0ctl(
        "load",
        "--sessions",
        "3",
        "--duration",
        "2",
        "--think",
        "0",
        "--json",
        env={"A0_GATEWAY_PORT": str(free_port())},
    )
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["ok"] is False
    assert report["failed_sessions"] == 3 and report["completed"] == 0
    assert any("cannot connect to the gateway at" in cause for cause in report["causes"]), report["causes"]


def test_a_missed_sla_fails_the_run_and_says_which(stack: LocalRuntime) -> None:
    result = a0ctl(
        "load", "--sessions", "2", "--duration", "3", "--think", "0", "--sla-mean", "0.0001", "--json"
    )
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["ok"] is False
    assert report["failed"] == 0 and report["lost"] == 0 and report["completed"] > 0
    assert report["sla"]["met"] is False and "mean response" in report["sla"]["misses"][0]
    assert report["ttft_s"]["mean"] is not None and report["ttft_s"]["mean"] <= report["response_s"]["mean"]
