"""``a0ctl release tag``: an annotated tag only after a passed release check of exactly
the commit being tagged, its message the notes made from that check's evidence."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from a0ctl.checks import Check
from a0ctl.release.evidence import ReleaseEvidence, git_state, release_notes
from a0ctl.release.gate import LoadLimits
from tests.support.cli import a0ctl

pytestmark = pytest.mark.unit


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "release@a0.test")
    git(repo, "config", "user.name", "a0 release")
    (repo / "README.md").write_text("a0\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-qm", "first")
    return repo


def env(repo: Path) -> dict[str, str]:
    return {"A0_HOME": str(repo), "A0_STATE_DIR": str(repo.parent / "state")}


def record(repo: Path, *, failed: str | None = None) -> ReleaseEvidence:
    names = ["doctor", "migrations at head", "topics plan", "smoke", "load with SLA"]
    evidence = ReleaseEvidence(
        ok=failed is None,
        at=datetime.now(UTC),
        git=git_state(repo),
        load=LoadLimits(),
        checks=[Check(name=n, ok=n != failed, detail=f"{n} detail", seconds=1.5) for n in names],
    )
    folder = repo.parent / "state" / "release"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "last-check.json").write_text(evidence.model_dump_json())
    return evidence


def tag(repo: Path, version: str = "v0.1.0-rc.1"):
    return a0ctl("release", "tag", version, env=env(repo))


def test_without_a_check_nothing_is_tagged(repo: Path) -> None:
    result = tag(repo)
    assert result.returncode == 1 and "no release check recorded" in result.stderr
    assert "a0ctl release check" in result.stderr and git(repo, "tag") == ""


def test_a_failed_check_is_refused_naming_what_failed(repo: Path) -> None:
    record(repo, failed="smoke")
    result = tag(repo)
    assert result.returncode == 1 and "the last release check failed (smoke)" in result.stderr
    assert git(repo, "tag") == ""


def test_a_check_of_another_commit_or_of_uncommitted_changes_is_refused(repo: Path) -> None:
    record(repo)
    (repo / "README.md").write_text("changed\n")
    dirty = tag(repo)
    assert dirty.returncode == 1 and "uncommitted changes (README.md)" in dirty.stderr
    git(repo, "commit", "-qam", "second")
    moved = tag(repo)
    assert moved.returncode == 1 and "the last release check ran on" in moved.stderr
    assert git(repo, "tag") == ""


def test_a_version_that_is_not_semver_is_refused(repo: Path) -> None:
    record(repo)
    result = tag(repo, "release-1")
    assert result.returncode == 1 and "'release-1' is not a release version" in result.stderr


def test_a_passed_check_tags_head_with_its_evidence_as_notes(repo: Path) -> None:
    evidence = record(repo)
    result = tag(repo)
    assert result.returncode == 0, result.stderr
    assert "tagged v0.1.0-rc.1" in result.stdout
    assert git(repo, "cat-file", "-t", "v0.1.0-rc.1").strip() == "tag"  # annotated
    assert git(repo, "rev-list", "-n1", "v0.1.0-rc.1").strip() == evidence.git.commit
    message = git(repo, "tag", "-l", "--format=%(contents)", "v0.1.0-rc.1")
    assert (
        message.strip()
        == release_notes("v0.1.0-rc.1", evidence, [git(repo, "log", "--format=%h %s").strip()]).strip()
    )
    for check in evidence.checks:
        assert f"- {check.name}: pass (1.5 s) - {check.name} detail" in message
    again = tag(repo)
    assert again.returncode == 1 and "tag v0.1.0-rc.1 exists already" in again.stderr
