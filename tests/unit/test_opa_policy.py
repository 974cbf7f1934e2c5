"""The OPA policy under ``stack/opa`` passes its own Rego tests, ``opa check --strict``
and ``opa fmt``, and answers the decision path the services query."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from a0ctl.runtime.artifacts import ensure_opa
from services.common.settings import load_settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO / "stack" / "opa"
DECISION_QUERY = "data.a0.authz.decision"  # served as POST /v1/data/a0/authz/decision


@pytest.fixture(scope="module")
def opa() -> Path:
    # The pinned binary, built with `go install` when missing: what `a0ctl up` runs.
    return ensure_opa(load_settings())


def _run(opa: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(opa), *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_policy_files_exist() -> None:
    for name in ("authz.rego", "authz_test.rego", "data.json"):
        assert (POLICY_DIR / name).is_file(), f"missing stack/opa/{name}"


def test_rego_tests_pass(opa: Path) -> None:
    result = _run(opa, "test", str(POLICY_DIR), "-v")
    assert result.returncode == 0, f"opa test failed:\n{result.stdout}\n{result.stderr}"
    assert "FAIL" not in result.stdout


def test_policy_checks_strict(opa: Path) -> None:
    result = _run(opa, "check", "--strict", str(POLICY_DIR))
    assert result.returncode == 0, result.stdout + result.stderr


def test_policy_is_formatted(opa: Path) -> None:
    result = _run(opa, "fmt", "--list", str(POLICY_DIR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", f"not opa-fmt formatted: {result.stdout}"


@pytest.mark.parametrize(
    ("policy_input", "expected"),
    [
        (
            {
                "action": "conversation.read",
                "subject": {"user_id": "alice", "roles": ["user"]},
                "resource": {"owner_id": "alice", "conversation_id": "c1"},
            },
            {"allow": True, "reason": "allowed: owner"},
        ),
        (
            {
                "action": "conversation.write",
                "subject": {"user_id": "bob", "roles": ["user"]},
                "resource": {"owner_id": "alice", "conversation_id": "c1"},
            },
            {"allow": False, "reason": "denied: user bob does not own conversation c1"},
        ),
        (
            {
                "action": "tool.call",
                "subject": {"user_id": "alice", "roles": ["user"]},
                "resource": {"tool": "shell"},
            },
            {"allow": False, "reason": "denied: tool shell is not allowed"},
        ),
        (
            {"action": "nope", "subject": {"user_id": "alice", "roles": []}, "resource": {}},
            {"allow": False, "reason": "denied: unknown action nope"},
        ),
    ],
)
def test_decision_contract(opa: Path, policy_input: dict, expected: dict) -> None:
    result = _run(
        opa,
        "eval",
        "--format",
        "json",
        "--data",
        str(POLICY_DIR),
        "--stdin-input",
        DECISION_QUERY,
        stdin=json.dumps(policy_input),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    value = json.loads(result.stdout)["result"][0]["expressions"][0]["value"]
    assert value == expected
