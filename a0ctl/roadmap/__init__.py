"""The executable roadmap: milestones M0-M5 of ``docs/roadmap.md``, each with the checks
that accept it. Live checks call the code of ``a0ctl status``, ``smoke``, ``topics plan``,
``trace``, ``load`` and ``release check`` (:mod:`a0ctl.release.gate`), and run the
dashboard's queries (:mod:`a0ctl.roadmap.live`); what only a long test run
proves is read from the latest JUnit results in ``test-artifacts/`` (``make test`` writes
them), and each such check says which file and when it was written."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import httpx
from pydantic import BaseModel

from a0ctl.release.gate import GateCheck, LoadLimits, load_check, smoke_check, timed, topics_check
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
    checks: list[GateCheck]


class Roadmap(BaseModel):
    milestones: list[Milestone]


# --- evidence from the last test run ------------------------------------------------------
def junit_check(home: Path, tier: str, tests: tuple[str, ...] = ()) -> GateCheck:
    """The named tests of a tier passed in its latest JUnit file (all of its tests when
    none are named, with none skipped)."""
    name = f"{tier} tests" + (f": {', '.join(tests)}" if tests else " all green")

    def run() -> tuple[bool, str]:
        path = home / "test-artifacts" / f"junit-{tier}.xml"
        if not path.exists():
            return False, f"no {path.relative_to(home)}: run `make test` (or the {tier} tier) first"
        results: dict[str, str] = {}
        cases = list(ET.parse(path).getroot().iter("testcase"))
        for case in cases:
            test = case.get("name", "").split("[")[0]  # parametrized cases count as their test
            outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            if results.get(test, "passed") == "passed":
                results[test] = outcome
        written = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
        source = f"{path.relative_to(home)} of {written}"
        if tests:
            missing = [t for t in tests if t not in results]
            bad = [f"{t} {results[t]}" for t in tests if t in results and results[t] != "passed"]
            if missing or bad:
                return False, f"{source}: " + "; ".join([*(f"{t} not run" for t in missing), *bad])
            return True, f"{source}: {len(tests)} passed"
        bad = [f"{t} {o}" for t, o in results.items() if o != "passed"]
        if not results or bad:
            return False, f"{source}: " + ("; ".join(bad[:5]) or "no tests")
        return True, f"{source}: {len(cases)} passed, 0 failed, 0 skipped"

    return timed(name, run)


# --- live checks ---------------------------------------------------------------------------
def stack_check(settings: Settings) -> GateCheck:
    def run() -> tuple[bool, str]:
        statuses = get_runtime(settings).status()
        running = [s for s in statuses if s.state != "stopped"]  # as `a0ctl status` counts them
        bad = [f"{s.name} {s.state}" for s in running if not s.healthy]
        if bad or not running:
            return False, f"not healthy: {', '.join(bad) or 'nothing runs'}; run `a0ctl up`"
        return True, f"{len(running)} services healthy: {', '.join(s.name for s in running)}"

    return timed("every service healthy (a0ctl status)", run)


def doc_check(home: Path, path: str, phrases: tuple[str, ...]) -> GateCheck:
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


def command_check(args: tuple[str, ...], home: Path, name: str) -> GateCheck:
    def run() -> tuple[bool, str]:
        result = subprocess.run(
            [sys.executable, "-m", *args], cwd=home, capture_output=True, text=True, timeout=300
        )
        # The last line with words in it (rich draws error boxes around its messages).
        lines = [line.strip(" │╭╰╮╯─") for line in (result.stdout + result.stderr).splitlines()]
        words = [line for line in lines if any(c.isalnum() for c in line)]
        return result.returncode == 0, (words[-1] if words else f"exit {result.returncode}")

    return timed(name, run)


def ui_through_gateway_check(settings: Settings) -> GateCheck:
    def run() -> tuple[bool, str]:
        response = httpx.get(f"{settings.gateway_url}/", timeout=5)
        html = "text/html" in response.headers.get("content-type", "")
        return response.status_code == 200 and html, f"GET {settings.gateway_url}/ → {response.status_code}"

    return timed("chat UI served by the gateway", run)


def rc_tag_check(home: Path) -> GateCheck:
    def run() -> tuple[bool, str]:
        result = subprocess.run(
            ["git", "-C", str(home), "tag", "--list", "v*-rc*"], capture_output=True, text=True, timeout=30
        )
        tags = result.stdout.split()
        return bool(tags), f"tags: {', '.join(tags)}" if tags else "no release candidate tag (v*-rc*)"

    return timed("release candidate tagged", run)


def milestones(
    settings: Settings, limits: LoadLimits | None = None
) -> list[tuple[str, str, str, list[Callable[[], GateCheck]]]]:
    """Each milestone: id, title, acceptance (ROADMAP.md), and its checks (run lazily).
    The load run is the seed's shape with M5's SLA unless ``limits`` names another."""
    home = settings.stack.home.resolve()
    load_limits = limits or LoadLimits(sla_mean_s=M5_SLA_MEAN_S, sla_p99_s=None)

    @cache
    def load() -> tuple[GateCheck, object]:
        return load_check(settings, load_limits)

    def lag_under_load() -> GateCheck:
        check, report = load()
        lag = getattr(report, "max_consumer_lag_s", None)
        ok = lag is not None and lag < M2_MAX_LAG_S
        return GateCheck(
            name=f"consumer lag < {M2_MAX_LAG_S:g} s during a load run",
            ok=ok,
            detail=f"max consumer lag {lag} s" if lag is not None else check.detail,
            seconds=check.seconds,
        )

    def sla() -> GateCheck:
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
                lambda: junit_check(
                    home,
                    "unit",
                    ("test_compose_file_parses", "test_required_services_exist_with_healthchecks"),
                ),
                lambda: doc_check(home, str(ROADMAP_DOC), ("M0", "M1", "M2", "M3", "M4", "M5")),
            ],
        ),
        (
            "M1",
            "Gateway consolidation",
            "the UI chats only through the gateway; no other ingress exists; lint and every test green",
            [
                lambda: ui_through_gateway_check(settings),
                lambda: junit_check(
                    home,
                    "unit",
                    ("test_ports_are_published_on_loopback_only", "test_gateway_port_is_published"),
                ),
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
                lambda: junit_check(
                    home, "integration", ("test_rest_message_streams_answer_with_tool_call_over_sse",)
                ),
                lag_under_load,
            ],
        ),
        (
            "M3",
            "Credentials",
            "a browser test enters a key, reloads, sees it masked, and the stack uses it; secrets encrypted at rest",
            [
                lambda: junit_check(home, "e2e", ("test_settings_key_is_masked_and_used_without_restart",)),
                lambda: junit_check(
                    home,
                    "integration",
                    (
                        "test_key_set_through_the_api_is_used_at_once_and_never_shown_or_logged",
                        "test_rotate_key_keeps_every_credential_readable",
                    ),
                ),
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
                lambda: junit_check(home, "faults", ("test_workers_scaled_up_and_down_under_load",)),
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
