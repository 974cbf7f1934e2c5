"""The executable roadmap: docs/roadmap.md names what ``a0ctl roadmap`` checks, test
evidence is read from JUnit files as they are, stale or failed results included, and
each live check fails when its subject is broken: Jaeger down, a trace or a dashboard
panel short of what it needs, a load run over its SLA."""

from __future__ import annotations

import ast
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from a0ctl.load.report import LoadReport, Percentiles
from a0ctl.release.gate import LoadLimits, judge_load
from a0ctl.roadmap import junit_check, milestones
from a0ctl.roadmap.live import (
    DASHBOARDS,
    METRIC_NAME,
    dashboard_check,
    exported_metrics,
    judge_answers,
    judge_trace,
    panel_queries,
    turn_trace_check,
)
from services.common.settings import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_no_test_is_named_in_a0ctl() -> None:
    """Milestones find their tests by marker: renaming a test never breaks a command."""
    tests = {
        node.name
        for path in (ROOT / "tests").rglob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }
    named = [
        f"{path.relative_to(ROOT)}: {test}"
        for path in (ROOT / "a0ctl").rglob("*.py")
        for test in sorted(set(re.findall(r"\btest_\w+", path.read_text())) & tests)
    ]
    assert named == []


def test_every_milestone_has_marked_tests() -> None:
    marked = set(
        re.findall(
            r'@pytest\.mark\.milestone\("(M\d)"\)',
            "".join(path.read_text() for path in (ROOT / "tests").rglob("test_*.py")),
        )
    )
    asked = set(
        re.findall(r'junit_check\(home, "\w+", "(M\d)"\)', (ROOT / "a0ctl/roadmap/__init__.py").read_text())
    )
    assert asked and asked <= marked


def test_the_roadmap_page_lists_every_milestone_as_the_command_checks_it() -> None:
    page = (ROOT / "docs" / "roadmap.md").read_text()
    defined = milestones(load_settings())
    assert [m[0] for m in defined] == ["M0", "M1", "M2", "M3", "M4", "M5"]
    for milestone_id, title, accepted_when, _ in defined:
        assert f"| {milestone_id} | {title} | {accepted_when} |" in page


def write_junit(home: Path, tier: str, cases: str) -> None:
    (home / "test-artifacts").mkdir(exist_ok=True)
    (home / "test-artifacts" / f"junit-{tier}.xml").write_text(
        f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>'
    )


def marked(milestone: str) -> str:
    return f'<properties><property name="milestone" value="{milestone}"/></properties>'


def test_junit_evidence_passes_only_when_the_marked_tests_passed(tmp_path: Path) -> None:
    missing = junit_check(tmp_path, "e2e", "M3")
    assert not missing.ok and "no test-artifacts/junit-e2e.xml" in missing.detail
    write_junit(
        tmp_path,
        "e2e",
        f'<testcase name="test_a">{marked("M3")}</testcase><testcase name="test_b[x]">{marked("M4")}</testcase>'
        f'<testcase name="test_b[y]">{marked("M4")}<failure message="boom"/></testcase>'
        '<testcase name="test_c"><skipped/></testcase>',
    )
    assert junit_check(tmp_path, "e2e", "M3").ok
    failed = junit_check(tmp_path, "e2e", "M4")
    assert not failed.ok and "test_b failure" in failed.detail and "test_a" not in failed.detail
    none = junit_check(tmp_path, "e2e", "M5")
    assert not none.ok and "no test marked milestone M5" in none.detail
    whole = junit_check(tmp_path, "e2e")
    assert not whole.ok and "test_b failure" in whole.detail and "test_c skipped" in whole.detail
    write_junit(tmp_path, "e2e", '<testcase name="test_a"/><testcase name="test_b"/>')
    green = junit_check(tmp_path, "e2e")
    assert (
        green.ok and "junit-e2e.xml of " in green.detail and "2 passed, 0 failed, 0 skipped" in green.detail
    )


# --- checks that fail when their subject is broken -----------------------------------------
def free_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_urls(*, jaeger: str | None = None, prometheus: str | None = None) -> Settings:
    settings = load_settings()
    update: dict[str, Any] = {}
    if jaeger is not None:
        update["telemetry"] = settings.telemetry.model_copy(update={"jaeger_url": jaeger})
    if prometheus is not None:
        update["prometheus"] = settings.prometheus.model_copy(update={"url": prometheus})
    return settings.model_copy(update=update)


def a_turn() -> tuple[str, str]:
    return "c-roadmap", "t-roadmap"


def no_turn() -> tuple[str, str]:
    raise AssertionError("no turn is run for a dashboard that cannot be right")


def test_the_trace_check_fails_when_jaeger_does_not_answer() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    check = turn_trace_check(with_urls(jaeger=url), turn=a_turn, wait_s=0)
    assert check.name == "a0ctl trace shows a turn's trace"
    assert not check.ok and f"Jaeger does not answer at {url}" in check.detail


def span(service: str) -> dict[str, Any]:
    return {"service": service, "name": f"{service} work"}


def test_a_trace_passes_only_with_spans_of_the_gateway_the_worker_and_the_tool_executor() -> None:
    assert judge_trace([]) == (False, "no trace of the turn in Jaeger")
    partial = [{"trace_id": "a1", "spans": [span("gateway"), span("conversation-worker")]}]
    ok, detail = judge_trace(partial)
    assert not ok and detail.endswith("none from tool-executor")
    whole = [
        {"trace_id": "b2", "spans": [span(s) for s in ("gateway", "conversation-worker", "tool-executor")]}
    ]
    assert judge_trace(partial + whole) == (
        True,
        "trace b2: 3 spans from conversation-worker, gateway, tool-executor",
    )


def test_every_panel_of_the_dashboard_names_metrics_the_services_export() -> None:
    queries = panel_queries(ROOT)
    assert len(queries) > 10 and all("$__" not in expr for _, expr in queries)
    named = {name for _, expr in queries for name in METRIC_NAME.findall(expr)}
    assert named and named <= exported_metrics()


def test_the_dashboard_check_fails_on_a_panel_query_naming_a_missing_metric(tmp_path: Path) -> None:
    board = json.loads((ROOT / DASHBOARDS / "a0.json").read_text())
    error_rate = next(p for p in board["panels"] if p["title"] == "Error rate")
    error_rate["targets"][0]["expr"] = "sum(rate(a0_turn_failures_total[$__rate_interval]))"
    (tmp_path / DASHBOARDS).mkdir(parents=True)
    (tmp_path / DASHBOARDS / "a0.json").write_text(json.dumps(board))
    check = dashboard_check(load_settings(), tmp_path, turn=no_turn, wait_s=0)
    assert not check.ok
    assert check.detail == "metrics no a0 service exports: Error rate: a0_turn_failures_total"


def test_the_dashboard_check_fails_when_prometheus_does_not_answer() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    check = dashboard_check(with_urls(prometheus=url), ROOT, turn=a_turn, wait_s=0)
    assert not check.ok and f"Prometheus does not answer at {url}" in check.detail


def answer(*values: float) -> list[dict[str, Any]]:
    return [{"metric": {}, "value": [0, str(v)]} for v in values]


def test_panels_need_a_non_zero_throughput_and_a_present_error_rate() -> None:
    good = [
        ("Throughput: turns / s", "q1", answer(0.5)),
        ("Error rate", "q2", answer(0.0)),
        ("Turn latency p50 / p95 / p99", "q3", answer(1.2)),
    ]
    assert judge_answers(good) == (True, "3 panels, 3 queries answered; throughput up to 0.50/s")
    idle = [("Throughput: turns / s", "q1", answer(0.0)), *good[1:]]
    assert judge_answers(idle) == (False, "Throughput: turns / s: no non-zero answer to q1")
    no_errors = [good[0], ("Error rate", "q2", []), good[2]]
    assert judge_answers(no_errors) == (False, "Error rate: no series for q2")


def load_report(response_s: list[float]) -> LoadReport:
    none = Percentiles.of([])
    counts: dict[str, Any] = dict.fromkeys(
        ("rejected", "shed", "failed", "failed_sessions", "lost", "duplicate_events", "missing_events"), 0
    )
    return LoadReport(
        **counts,
        sessions=500,
        duration_s=60.0,
        ramp_s=10.0,
        prompt="compute 6*7",
        sent=len(response_s),
        accepted=len(response_s),
        completed=len(response_s),
        throughput_per_s=40.0,
        response_s=Percentiles.of(response_s),
        ttft_s=none,
        accept_s=none,
        delivery_ms=none,
        max_consumer_lag_s=0.5,
        max_consumer_lag_records=3,
        causes={},
        errors=[],
    )


def test_the_release_gate_runs_the_seeds_shape_and_a_load_over_its_sla_fails() -> None:
    seed = LoadLimits()
    assert (seed.sessions, seed.think_s, seed.duration_s) == (500, 10.0, 60.0)
    assert (seed.sla_mean_s, seed.sla_p99_s) == (0.5, 1.5) and seed.profile == "seed"
    ok, detail = judge_load(load_report([0.3] * 99 + [1.0]), seed)
    assert ok and detail.startswith("seed profile: 500 sessions, --think 10, 60 s; ")
    ok, detail = judge_load(load_report([0.9] * 100), seed)
    assert not ok and "mean response 0.9 s > 0.5 s" in detail


def test_a_shorter_load_profile_is_named_as_such() -> None:
    short = LoadLimits(sessions=4, duration_s=3, think_s=1)
    assert short.profile == "shorter than the seed's (500 sessions, --think 10, 60 s)"
    ok, detail = judge_load(load_report([0.1] * 10), short)
    assert ok and detail.startswith(
        "4 sessions, --think 1, 3 s: shorter than the seed's (500 sessions, --think 10, 60 s); "
    )
    assert LoadLimits(think_s=20).profile != "seed"
