"""The executable roadmap: docs/roadmap.md names what ``a0ctl roadmap`` checks, and test
evidence is read from JUnit files as they are, stale or failed results included."""

from __future__ import annotations

from pathlib import Path

import pytest

from a0ctl.roadmap import junit_check, milestones
from services.common.settings import load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


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


def test_junit_evidence_passes_only_when_the_named_tests_passed(tmp_path: Path) -> None:
    missing = junit_check(tmp_path, "e2e", ("test_a",))
    assert not missing.ok and "no test-artifacts/junit-e2e.xml" in missing.detail
    write_junit(
        tmp_path,
        "e2e",
        '<testcase name="test_a"/><testcase name="test_b[x]"/>'
        '<testcase name="test_b[y]"><failure message="boom"/></testcase>'
        '<testcase name="test_c"><skipped/></testcase>',
    )
    assert junit_check(tmp_path, "e2e", ("test_a",)).ok
    named = junit_check(tmp_path, "e2e", ("test_a", "test_b", "test_gone"))
    assert not named.ok and "test_gone not run" in named.detail and "test_b failure" in named.detail
    whole = junit_check(tmp_path, "e2e")
    assert not whole.ok and "test_b failure" in whole.detail and "test_c skipped" in whole.detail
    write_junit(tmp_path, "e2e", '<testcase name="test_a"/><testcase name="test_b"/>')
    green = junit_check(tmp_path, "e2e")
    assert (
        green.ok and "junit-e2e.xml of " in green.detail and "2 passed, 0 failed, 0 skipped" in green.detail
    )
