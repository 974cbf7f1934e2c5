"""What ``a0ctl release check`` found, kept as evidence under ``<state dir>/release/``,
and ``a0ctl release tag``: an annotated git tag of the checked commit, its message the
release notes made from that evidence. No evidence, a failed check, or a check of
another commit (or of uncommitted changes): no tag."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from a0ctl import subprocesses
from a0ctl.checks import Check
from a0ctl.release.gate import (
    LoadLimits,
    doctor_check,
    load_check,
    migrations_check,
    smoke_check,
    topics_check,
)
from services.common.errors import A0Error
from services.common.settings import Settings

LAST_CHECK = "last-check.json"
VERSION_PATTERN = re.compile(r"^v\d+\.\d+\.\d+(-[0-9A-Za-z]+(\.[0-9A-Za-z]+)*)?$")


class ReleaseRefused(A0Error):
    code = "release_refused"


class GitState(BaseModel):
    commit: str
    dirty: list[str]  # paths with uncommitted changes


class ReleaseEvidence(BaseModel):
    ok: bool
    at: datetime
    git: GitState
    load: LoadLimits
    checks: list[Check]


class TagResult(BaseModel):
    version: str
    commit: str
    notes_file: str


def git(home: Path, *args: str) -> str:
    """Run git in the project; its failure is an a0 error with git's own words."""
    try:
        result = subprocesses.run(["git", "-C", str(home), *args], what="git", check=False, timeout=60)
    except subprocesses.CommandError as exc:
        raise ReleaseRefused(f"git does not run: {exc.message}", hint="install git") from None
    if result.returncode != 0:
        raise ReleaseRefused(
            f"git {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-400:]}"
        )
    return result.stdout


def git_state(home: Path) -> GitState:
    commit = git(home, "rev-parse", "HEAD").strip()
    dirty = [line[3:] for line in git(home, "status", "--porcelain").splitlines() if line.strip()]
    return GitState(commit=commit, dirty=dirty)


def release_dir(settings: Settings) -> Path:
    return settings.stack.state_path / "release"


def run_check(settings: Settings, limits: LoadLimits) -> ReleaseEvidence:
    """Every check of the gate, in order; the load run only on a stack that passed smoke."""
    checks = [doctor_check(settings), migrations_check(settings), topics_check(settings)]
    smoke = smoke_check(settings)
    checks.append(smoke)
    if smoke.ok:
        checks.append(load_check(settings, limits)[0])
    else:
        checks.append(Check(name="load with SLA", ok=False, detail="not run: smoke failed"))
    evidence = ReleaseEvidence(
        ok=all(c.ok for c in checks),
        at=datetime.now(UTC),
        git=git_state(settings.stack.home),
        load=limits,
        checks=checks,
    )
    record(settings, evidence)
    return evidence


def record(settings: Settings, evidence: ReleaseEvidence) -> Path:
    folder = release_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = evidence.at.strftime("%Y%m%dT%H%M%SZ")
    body = evidence.model_dump_json(indent=2)
    (folder / f"check-{stamp}.json").write_text(body)
    (folder / LAST_CHECK).write_text(body)
    return folder / f"check-{stamp}.json"


def last_evidence(settings: Settings) -> ReleaseEvidence:
    path = release_dir(settings) / LAST_CHECK
    if not path.exists():
        raise ReleaseRefused(f"no release check recorded ({path})", hint="run `a0ctl release check` first")
    try:
        return ReleaseEvidence.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ReleaseRefused(f"{path} is not a release check's evidence: {exc.errors()[0]['msg']}") from None


def release_notes(version: str, evidence: ReleaseEvidence, commits: list[str]) -> str:
    lines = [
        f"a0 {version}",
        "",
        f"Release check passed at {evidence.at.isoformat(timespec='seconds')} on {evidence.git.commit[:12]}:",
        "",
    ]
    lines += [
        f"- {c.name}: {'pass' if c.ok else 'FAIL'} ({c.seconds:g} s) - {c.detail}" for c in evidence.checks
    ]
    if commits:
        lines += ["", "Changes:", ""] + [f"- {line}" for line in commits]
    return "\n".join(lines) + "\n"


def tag_release(settings: Settings, version: str) -> TagResult:
    """Tag HEAD as ``version`` when the last release check passed on exactly this tree."""
    if not VERSION_PATTERN.match(version):
        raise ReleaseRefused(
            f"{version!r} is not a release version", hint="use vMAJOR.MINOR.PATCH[-PRE], e.g. v0.1.0-rc.1"
        )
    home = settings.stack.home
    evidence = last_evidence(settings)
    if not evidence.ok:
        failed = ", ".join(c.name for c in evidence.checks if not c.ok)
        raise ReleaseRefused(
            f"the last release check failed ({failed}); {version} is not tagged",
            hint="fix what it reports, then `a0ctl release check` again",
        )
    now = git_state(home)
    if evidence.git.dirty or now.dirty:
        dirty = ", ".join((evidence.git.dirty or now.dirty)[:5])
        raise ReleaseRefused(
            f"uncommitted changes ({dirty}): a tag would not name what was checked",
            hint="commit or stash them, then `a0ctl release check` again",
        )
    if evidence.git.commit != now.commit:
        raise ReleaseRefused(
            f"the last release check ran on {evidence.git.commit[:12]}, HEAD is {now.commit[:12]}",
            hint="run `a0ctl release check` on this commit",
        )
    if git(home, "tag", "--list", version).strip():
        raise ReleaseRefused(f"tag {version} exists already", hint="choose the next version")
    previous = git(home, "tag", "--list", "v*", "--merged", "HEAD", "--sort=-creatordate").split()
    span = f"{previous[0]}..HEAD" if previous else "HEAD"
    commits = git(home, "log", "--format=%h %s", "--max-count=50", span).splitlines()
    notes = release_notes(version, evidence, commits)
    folder = release_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    notes_file = folder / f"{version}.md"
    notes_file.write_text(notes)
    git(home, "tag", "--annotate", version, "--file", str(notes_file), now.commit)
    return TagResult(version=version, commit=now.commit, notes_file=str(notes_file))
