"""ACLs as code against the real broker (SASL/SCRAM, StandardAuthorizer): each service
connects as its own principal, a service without the ACL it needs is denied with a clear
line in its log, and ``topics plan`` shows an ACL changed by hand until ``apply``
restores it."""

from __future__ import annotations

import json
import time

import pytest

from a0ctl.runtime.local import LocalRuntime
from a0ctl.topics.acl_admin import acl_admin, apply_acl_changes, live_acls
from a0ctl.topics.acls import AclChange, AclEntry
from services.common.secrets_env import secrets_path
from services.common.settings import Settings
from tests.support.cli import a0ctl

pytestmark = pytest.mark.integration


def revoke(settings: Settings, entry: AclEntry) -> None:
    """What an operator with the admin credentials might do by hand."""
    with acl_admin(settings) as admin:
        apply_acl_changes(admin, [AclChange(action="revoke", entry=entry)])


def wait_for_log(stack: LocalRuntime, service: str, needle: str, since: int, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # ``since`` is a size in bytes, and tracebacks in the log hold multi-byte characters.
        text = stack.log_path(service).read_bytes()[since:].decode(errors="replace")
        for line in text.splitlines():
            if needle in line:
                return line
        time.sleep(0.5)
    state = stack.supervisor.process(service).statename
    raise AssertionError(f"{service} ({state}) never logged {needle!r}; its log ends:\n{text[-4000:]}")


def test_each_service_has_exactly_the_acls_of_topics_yaml(stack: LocalRuntime, settings: Settings) -> None:
    result = a0ctl("topics", "plan", "--detailed-exitcode")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ACLs match" in result.stdout
    with acl_admin(settings) as admin:
        live = live_acls(admin)
    assert (
        AclEntry(principal="tool-executor", resource_type="group", name="a0-tool-executor", operation="Read")
        in live
    )
    assert not [
        e
        for e in live
        if e.principal == "tool-executor"
        and e.operation == "Write"
        and e.name != "tool.results"
        and not e.name.startswith("dlq.")
    ]


@pytest.mark.parametrize(
    ("entry", "denied"),
    [
        (
            AclEntry(
                principal="tool-executor", resource_type="group", name="a0-tool-executor", operation="Read"
            ),
            "consumer group a0-tool-executor",
        ),
        (
            AclEntry(
                principal="tool-executor", resource_type="topic", name="tool.requests", operation="Read"
            ),
            "topic tool.requests",
        ),
    ],
    ids=["group", "topic"],
)
def test_a_service_denied_its_acl_logs_why_and_plan_shows_the_drift(
    stack: LocalRuntime, settings: Settings, entry: AclEntry, denied: str
) -> None:
    revoke(settings, entry)
    try:
        plan = a0ctl("topics", "plan", "--detailed-exitcode")
        assert plan.returncode == 2, plan.stdout + plan.stderr
        assert "grant" in plan.stdout and entry.describe() in plan.stdout
        as_json = json.loads(a0ctl("topics", "plan", "--json").stdout)
        assert [c["entry"] for c in as_json["acls"]] == [entry.model_dump()]

        log = stack.log_path("tool-executor")
        since = log.stat().st_size if log.exists() else 0
        stack.supervisor.stop("tool-executor")
        stack.supervisor.start("tool-executor")
        line = wait_for_log(stack, "tool-executor", "Kafka denied principal tool-executor", since)
        assert denied in line and "topics.yaml" in line and "a0ctl topics apply" in line, line
    finally:
        applied = a0ctl("topics", "apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
    assert a0ctl("topics", "plan", "--detailed-exitcode").returncode == 0
    # Granted again, the service consumes again once restarted (supervisord may have
    # given up on it meanwhile: `a0ctl restart` is what an operator runs).
    since = stack.log_path("tool-executor").stat().st_size
    stack.restart("tool-executor")
    wait_for_log(stack, "tool-executor", "a0-tool-executor consuming tool.requests", since)


def test_no_kafka_password_reaches_a_log(stack: LocalRuntime, settings: Settings) -> None:
    values = [
        line.split("=", 1)[1]
        for line in secrets_path(settings.stack.conf_path).read_text().splitlines()
        if line.startswith("A0_KAFKA_PASSWORD_")
    ]
    assert len(values) == 5  # a0-admin, the three services and ops
    for log in (settings.stack.state_path / "logs").rglob("*.log*"):
        text = log.read_text(errors="replace")
        assert not [v for v in values if v in text], f"a Kafka password is in {log}"
