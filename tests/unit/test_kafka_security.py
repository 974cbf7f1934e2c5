"""Kafka principals, their generated passwords, the ACL plan, and the cluster profile's
nodes, as pure code."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from a0ctl.runtime.kafka_local import single_node_lines
from a0ctl.topics.acls import AclEntry, compute_acl_changes, desired_acls
from a0ctl.topics.model import load_topics_file
from services.common.kafka import client_options
from services.common.secrets_env import apply_generated_secrets, ensure_kafka_passwords, secrets_path
from services.common.settings import load_settings
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def entry(principal: str, kind: str, name: str, operation: str) -> AclEntry:
    return AclEntry(principal=principal, resource_type=kind, name=name, operation=operation)  # type: ignore[arg-type]


def test_the_file_grants_each_service_only_what_it_uses() -> None:
    acls = desired_acls(load_topics_file(ROOT / "topics.yaml"))
    executor = {(e.resource_type, e.name, e.operation) for e in acls if e.principal == "tool-executor"}
    assert executor == {
        ("topic", "tool.requests", "Read"),
        ("topic", "tool.requests", "Describe"),
        ("topic", "tool.results", "Write"),
        ("topic", "tool.results", "Describe"),
        ("topic", "dlq.tool-executor", "Write"),
        ("topic", "dlq.tool-executor", "Describe"),
        ("group", "a0-tool-executor", "Read"),
        ("group", "a0-tool-executor", "Describe"),
    }
    gateway = {(e.resource_type, e.name) for e in acls if e.principal == "gateway"}
    assert not [name for kind, name in gateway if kind == "group"]  # it reads without a group


def test_the_ops_principal_reads_no_conversation_and_joins_no_group() -> None:
    acls = desired_acls(load_topics_file(ROOT / "topics.yaml"))
    ops = {(e.resource_type, e.name, e.operation) for e in acls if e.principal == "ops"}
    read = {name for kind, name, operation in ops if operation == "Read"}
    assert read == {"dlq.conversation-worker", "dlq.tool-executor", "dlq.gateway", "dlq.audit"}
    groups = {(name, operation) for kind, name, operation in ops if kind == "group"}
    assert groups == {("a0-conversation-worker", "Describe"), ("a0-tool-executor", "Describe")}
    # It writes where a replay goes, and the audit; no dead-letter topic.
    written = {name for kind, name, operation in ops if operation == "Write"}
    assert "dlq.audit" in written and not written & {"dlq.conversation-worker", "dlq.gateway"}


def test_acl_plan_grants_what_is_missing_revokes_what_is_extra_and_leaves_others_alone() -> None:
    desired = [entry("gateway", "topic", "conversation.inbound", "Write")]
    live = [
        entry("gateway", "topic", "tool.requests", "Write"),  # granted by hand
        entry("someone-else", "topic", "conversation.inbound", "Read"),
    ]
    changes, unmanaged = compute_acl_changes(desired, live, ["gateway"])
    assert [(c.action, c.entry) for c in changes] == [
        ("grant", desired[0]),
        ("revoke", live[0]),
    ]
    assert unmanaged == ["User:someone-else Read on topic conversation.inbound"]
    assert compute_acl_changes(desired, desired, ["gateway"]) == ([], [])


def test_each_principal_gets_its_own_generated_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_kafka_passwords(tmp_path, ["a0-admin", "gateway", "tool-executor"])
    text = secrets_path(tmp_path).read_text()
    assert "A0_KAFKA_PASSWORD_GATEWAY=" in text and "A0_KAFKA_PASSWORD_TOOL_EXECUTOR=" in text
    assert stat.S_IMODE(secrets_path(tmp_path).stat().st_mode) == 0o600
    before = text
    ensure_kafka_passwords(tmp_path, ["gateway"])  # kept, never regenerated
    assert secrets_path(tmp_path).read_text() == before

    monkeypatch.setenv("A0_CONF_DIR", str(tmp_path))
    monkeypatch.setenv("A0_KAFKA_SASL_USERNAME", "gateway")
    settings = apply_generated_secrets(load_settings())
    options = client_options(settings)
    assert options["sasl_plain_username"] == "gateway"
    assert f"A0_KAFKA_PASSWORD_GATEWAY={options['sasl_plain_password']}" in text
    assert options["security_protocol"] == "SASL_PLAINTEXT"


def test_the_cluster_profile_runs_three_nodes_shaped_as_staging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A0_PROFILE", "cluster")
    monkeypatch.setenv("A0_KAFKA_PORT", "39092")
    monkeypatch.setenv("A0_KAFKA_CONTROLLER_PORT", "39093")
    monkeypatch.setenv("A0_KAFKA_CLUSTER_PORT", "39140")
    settings = load_settings()
    assert settings.kafka_nodes == [(1, 39092, 39093), (2, 39140, 39141), (3, 39142, 39143)]
    assert settings.kafka_bootstrap == "127.0.0.1:39092,127.0.0.1:39140,127.0.0.1:39142"
    assert settings.stack.topics_env == "staging"
    monkeypatch.setenv("A0_PROFILE", "single")
    assert load_settings().kafka_nodes == [(1, 39092, 39093)]


def test_a_lone_nodes_heartbeat_fits_in_its_session() -> None:
    """Kafka refuses (and logs an error at every start) a broker heartbeat longer than half
    the session the controller grants."""
    lines = dict(line.split("=", 1) for line in single_node_lines(1))
    assert int(lines["broker.heartbeat.interval.ms"]) * 2 <= int(lines["broker.session.timeout.ms"])
    assert single_node_lines(3) == []
