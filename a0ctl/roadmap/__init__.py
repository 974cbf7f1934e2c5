"""The executable roadmap: milestones M0-M5 of ``docs/roadmap.md``, each with the checks
that accept it. Live checks call the code of ``a0ctl status``, ``smoke``, ``topics plan``,
``trace``, ``load`` and ``release check`` (:mod:`a0ctl.release.gate`), and run the
dashboard's queries (:mod:`a0ctl.roadmap.live`); what only a long test run
proves is read from the latest JUnit results in ``test-artifacts/`` (``make test`` writes
them), and each such check says which file and when it was written."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import httpx
from pydantic import BaseModel

from a0ctl import subprocesses
from a0ctl.checks import Check, timed
from a0ctl.release.evidence import git
from a0ctl.release.gate import LoadLimits, load_check, smoke_check, topics_check
from a0ctl.roadmap.live import dashboard_check, turn_trace_check
from a0ctl.runtime import get_runtime
from services.common.settings import Settings

ROADMAP_DOC = Path("docs/roadmap.md")
M2_MAX_LAG_S = 5.0
M5_SLA_MEAN_S = 2.0


class Milestone(BaseModel):
    id: str
    title: str
    accepted_when: str
    met: bool
    checks: list[Check]


class Roadmap(BaseModel):
    milestones: list[Milestone]


# --- evidence from the last test run ------------------------------------------------------
MARKER = "milestone"  # ``@pytest.mark.milestone("M3")``: the test proves M3 (tests/conftest.py)


def junit_check(home: Path, tier: str, milestone: str | None = None) -> Check:
    """The tests of a tier marked with ``milestone`` passed in its latest JUnit file (all
    of its tests when no milestone is named), with none skipped. The conftest records
    each test's milestone marker as a JUnit property, so tests are found by marker and
    never by name."""
    name = f"{tier} tests" + (f" marked milestone {milestone}" if milestone else " all green")

    def run() -> tuple[bool, str]:
        path = home / "test-artifacts" / f"junit-{tier}.xml"
        if not path.exists():
            return False, f"no {path.relative_to(home)}: run `make test` (or the {tier} tier) first"
        cases = list(ET.parse(path).getroot().iter("testcase"))
        if milestone:
            cases = [case for case in cases if milestone in _milestones(case)]
        results: dict[str, str] = {}
        for case in cases:
            test = case.get("name", "").split("[")[0]  # parametrized cases count as their test
            outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            if results.get(test, "passed") == "passed":
                results[test] = outcome
        written = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
        source = f"{path.relative_to(home)} of {written}"
        bad = [f"{t} {o}" for t, o in results.items() if o != "passed"]
        if not results:
            return False, f"{source}: " + (
                f"no test marked milestone {milestone}" if milestone else "no tests"
            )
        if bad:
            return False, f"{source}: " + "; ".join(bad[:5])
        return True, f"{source}: {len(cases)} passed, 0 failed, 0 skipped"

    return timed(name, run)


def _milestones(case: ET.Element) -> set[str]:
    return {p.get("value", "") for p in case.iter("property") if p.get("name") == MARKER}


# --- live checks ---------------------------------------------------------------------------
def stack_check(settings: Settings) -> Check:
    def run() -> tuple[bool, str]:
        statuses = get_runtime(settings).status()
        running = [s for s in statuses if s.state != "stopped"]  # as `a0ctl status` counts them
        bad = [f"{s.name} {s.state}" for s in running if not s.healthy]
        if bad or not running:
            return False, f"not healthy: {', '.join(bad) or 'nothing runs'}; run `a0ctl up`"
        return True, f"{len(running)} services healthy: {', '.join(s.name for s in running)}"

    return timed("every service healthy (a0ctl status)", run)


def doc_check(home: Path, path: str, phrases: tuple[str, ...]) -> Check:
    def run() -> tuple[bool, str]:
        file = home / path
        if not file.exists():
            return False, f"{path} is missing"
        text = file.read_text()
        missing = [p for p in phrases if p not in text]
        if missing:
            return False, f"{path} does not cover: {', '.join(missing)}"
        return True, f"{path} covers " + (", ".join(phrases) if phrases else "its subject")

    return timed(f"{path} published", run)


def command_check(args: tuple[str, ...], home: Path, name: str) -> Check:
    def run() -> tuple[bool, str]:
        result = subprocesses.run(
            [sys.executable, "-m", *args], what=name, check=False, cwd=home, timeout=300
        )
        # The last line with words in it (rich draws error boxes around its messages).
        lines = [line.strip(" │╭╰╮╯─") for line in (result.stdout + result.stderr).splitlines()]
        words = [line for line in lines if any(c.isalnum() for c in line)]
        return result.returncode == 0, (words[-1] if words else f"exit {result.returncode}")

    return timed(name, run)


def ui_through_gateway_check(settings: Settings) -> Check:
    def run() -> tuple[bool, str]:
        response = httpx.get(f"{settings.gateway_url}/", timeout=5)
        html = "text/html" in response.headers.get("content-type", "")
        return response.status_code == 200 and html, f"GET {settings.gateway_url}/ → {response.status_code}"

    return timed("chat UI served by the gateway", run)


def rc_tag_check(home: Path) -> Check:
    def run() -> tuple[bool, str]:
        tags = git(home, "tag", "--list", "v*-rc*").split()
        return bool(tags), f"tags: {', '.join(tags)}" if tags else "no release candidate tag (v*-rc*)"

    return timed("release candidate tagged", run)


def milestones(
    settings: Settings, limits: LoadLimits | None = None
) -> list[tuple[str, str, str, list[Callable[[], Check]]]]:
    """Each milestone: id, title, acceptance (ROADMAP.md), and its checks (run lazily).
    The load run is the seed's shape with M5's SLA unless ``limits`` names another."""
    home = settings.stack.home.resolve()
    load_limits = limits or LoadLimits(sla_mean_s=M5_SLA_MEAN_S, sla_p99_s=None)

    @cache
    def load() -> tuple[Check, object]:
        return load_check(settings, load_limits)

    def lag_under_load() -> Check:
        check, report = load()
        lag = getattr(report, "max_consumer_lag_s", None)
        ok = lag is not None and lag < M2_MAX_LAG_S
        return Check(
            name=f"consumer lag < {M2_MAX_LAG_S:g} s during a load run",
            ok=ok,
            detail=f"max consumer lag {lag} s" if lag is not None else check.detail,
            seconds=check.seconds,
        )

    def sla() -> Check:
        check, _ = load()
        return check.model_copy(update={"name": f"load within SLA (mean < {M5_SLA_MEAN_S:g} s, 0 lost)"})

    return [
        (
            "M0",
            "Baseline integrity",
            "every service healthy after `a0ctl up`; the smoke run passes; roadmap docs in the repo",
            [
                lambda: stack_check(settings),
                lambda: smoke_check(settings),
                lambda: junit_check(home, "unit", "M0"),
                lambda: doc_check(home, str(ROADMAP_DOC), ("M0", "M1", "M2", "M3", "M4", "M5")),
            ],
        ),
        (
            "M1",
            "Gateway consolidation",
            "the UI chats only through the gateway; no other ingress exists; lint and every test green",
            [
                lambda: ui_through_gateway_check(settings),
                lambda: junit_check(home, "unit", "M1"),
                lambda: command_check(
                    ("ruff", "check", "a0ctl", "services", "tests", "bench"), home, "lint (ruff)"
                ),
                *(
                    lambda tier=tier: junit_check(home, tier)
                    for tier in ("unit", "integration", "faults", "hostile", "e2e")
                ),
            ],
        ),
        (
            "M2",
            "Messaging backbone",
            "a test publishes a message and receives a streamed answer that includes tool output; "
            "consumer lag < 5 s during the load test",
            [
                lambda: topics_check(settings),
                lambda: junit_check(home, "integration", "M2"),
                lag_under_load,
            ],
        ),
        (
            "M3",
            "Credentials",
            "a browser test enters a key, reloads, sees it masked, and the stack uses it; secrets encrypted at rest",
            [
                lambda: junit_check(home, "e2e", "M3"),
                lambda: junit_check(home, "integration", "M3"),
                lambda: doc_check(home, "docs/credentials.md", ("AES-256-GCM", "rotate-key")),
            ],
        ),
        (
            "M4",
            "End-to-end hardening",
            "the browser suite is green; a turn's trace is visible end to end; a dashboard panel shows "
            "live throughput and error rate",
            [
                lambda: junit_check(home, "e2e"),
                lambda: turn_trace_check(settings),
                lambda: dashboard_check(settings, home),
            ],
        ),
        (
            "M5",
            "Performance and release",
            "load test within SLA (mean response < 2 s, 0 data lost); runbook and rollback published; "
            "a release candidate tagged",
            [
                sla,
                lambda: junit_check(home, "faults", "M5"),
                lambda: doc_check(home, "docs/runbook.md", ("a0ctl release check", "a0ctl release tag")),
                lambda: doc_check(
                    home, "docs/rollback.md", ("a0ctl db migrate --to", "topics apply", "rotate-key")
                ),
                lambda: doc_check(home, "docs/migration.md", ("compose", "local")),
                lambda: rc_tag_check(home),
            ],
        ),
    ]


def run_roadmap(settings: Settings, limits: LoadLimits | None = None) -> Roadmap:
    result = []
    for milestone_id, title, accepted_when, checks in milestones(settings, limits):
        done = [check() for check in checks]
        result.append(
            Milestone(
                id=milestone_id,
                title=title,
                accepted_when=accepted_when,
                met=all(c.ok for c in done),
                checks=done,
            )
        )
    return Roadmap(milestones=result)
