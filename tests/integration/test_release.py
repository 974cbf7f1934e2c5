"""The release gate on the real stack: ``a0ctl release check`` runs doctor, migrations,
topics plan, smoke and a load run with SLA limits, records its evidence, and ``release
tag`` tags a clone of the repository only after it passed; ``a0ctl roadmap`` runs the
milestones' checks with the same code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from a0ctl.runtime.local import LocalRuntime
from tests.conftest import ROOT, TEST_STATE
from tests.support.cli import a0ctl

pytestmark = pytest.mark.integration

GATE = ["doctor", "migrations at head", "topics plan", "smoke", "load with SLA"]
# The seed's shape (500 sessions, --think 10, 60 s) is the default; the tests name a
# shorter profile, and the output must say it is one.
SMALL_LOAD = ["--sessions", "4", "--duration", "3", "--think", "1"]
SHORTER = "4 sessions, --think 1, 3 s: shorter than the seed's (500 sessions, --think 10, 60 s)"


@pytest.fixture
def clone(tmp_path: Path, stack: LocalRuntime) -> Path:
    """The project as a release would tag it: a clean clone, never this checkout."""
    path = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True)
    for key, value in (("user.email", "release@a0.test"), ("user.name", "a0 release")):
        subprocess.run(["git", "-C", str(path), "config", key, value], check=True)
    # What bootstrap installs into a checkout (from its cache): the MCP servers of mcp.yaml.
    subprocess.run([str(path / "scripts" / "vendor-mcp.sh")], check=True, capture_output=True)
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_a_passed_release_check_is_recorded_and_lets_its_commit_be_tagged(clone: Path) -> None:
    env = {"A0_HOME": str(clone)}
    result = a0ctl("release", "check", *SMALL_LOAD, "--json", env=env)
    evidence = json.loads(result.stdout)
    assert result.returncode == 0 and evidence["ok"] is True, result.stdout + result.stderr
    assert [c["name"] for c in evidence["checks"]] == GATE
    assert evidence["git"]["commit"] == git(clone, "rev-parse", "HEAD").strip()
    assert "answered, 0 failed, 0 lost, 0 duplicated" in evidence["checks"][-1]["detail"]
    assert evidence["checks"][-1]["detail"].startswith(SHORTER + "; ")
    assert evidence["load"]["profile"].startswith("shorter than the seed's")
    assert json.loads((TEST_STATE / "release" / "last-check.json").read_text()) == evidence

    tagged = a0ctl("release", "tag", "v0.0.1-rc.1", env=env)
    assert tagged.returncode == 0, tagged.stderr
    notes = git(clone, "tag", "-l", "--format=%(contents)", "v0.0.1-rc.1")
    assert "Release check passed" in notes
    for name in GATE:
        assert f"- {name}: pass" in notes


def test_a_schema_behind_head_fails_the_check_and_nothing_is_tagged(clone: Path) -> None:
    env = {"A0_HOME": str(clone)}
    assert a0ctl("db", "migrate", "--to", "0002").returncode == 0
    try:
        result = a0ctl("release", "check", *SMALL_LOAD, env=env)
    finally:
        assert a0ctl("db", "migrate").returncode == 0
    assert result.returncode == 1
    assert "migrations at head" in result.stdout and "FAIL" in result.stdout
    assert "schema at 0002, pending 0003, 0004" in result.stdout and "release check failed" in result.stdout
    assert f"load: {SHORTER}" in result.stdout
    tags = git(clone, "tag", "--list")  # the repository's own earlier tags came with the clone
    refused = a0ctl("release", "tag", "v0.0.2-rc.1", env=env)
    assert refused.returncode == 1 and "the last release check failed (migrations at head)" in refused.stderr
    assert git(clone, "tag", "--list") == tags


def test_roadmap_reports_each_milestone_with_its_evidence(stack: LocalRuntime) -> None:
    result = a0ctl("roadmap", "--json", "--sessions", "20", "--duration", "10", "--think", "1", timeout=400)
    roadmap = json.loads(result.stdout)
    milestones = {m["id"]: m for m in roadmap["milestones"]}
    assert list(milestones) == ["M0", "M1", "M2", "M3", "M4", "M5"]
    for milestone in milestones.values():
        assert milestone["title"] and milestone["checks"]
        assert milestone["met"] == all(c["ok"] for c in milestone["checks"])
        assert all(set(c) >= {"name", "ok", "detail"} for c in milestone["checks"])
    live = {
        c["name"]: c
        for c in milestones["M0"]["checks"] + milestones["M2"]["checks"] + milestones["M4"]["checks"]
    }
    assert live["every service healthy (a0ctl status)"]["ok"], live
    assert live["smoke"]["ok"] and live["topics plan"]["ok"], live
    assert live["consumer lag < 5 s during a load run"]["ok"], live
    # A real turn's trace in Jaeger, with spans of all three services.
    trace = live["a0ctl trace shows a turn's trace"]
    assert trace["ok"] and "conversation-worker, gateway, tool-executor" in trace["detail"], trace
    # Every panel's query answered by Prometheus after real turns.
    dashboard = live["dashboard panels for throughput and error rate"]
    assert dashboard["ok"] and "queries answered; throughput up to" in dashboard["detail"], dashboard
    sla = next(c for c in milestones["M5"]["checks"] if c["name"].startswith("load within SLA"))
    assert "20 sessions, --think 1, 10 s: shorter than the seed's" in sla["detail"], sla
    assert result.returncode == (0 if all(m["met"] for m in milestones.values()) else 1)
