"""topics.yaml validation and the plan, as pure code."""

from __future__ import annotations

from pathlib import Path

import pytest

from a0ctl.errors import TopicsFileError
from a0ctl.topics.model import load_topics_file, resolve
from a0ctl.topics.plan import LiveTopic, compute_plan
from services.common import topics
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def desired(env: str = "local"):
    return resolve(load_topics_file(ROOT / "topics.yaml"), env)


def live_from(topics) -> dict[str, LiveTopic]:
    return {
        t.name: LiveTopic(
            name=t.name,
            partitions=t.partitions,
            replication_factor=t.replication_factor,
            configs=dict(t.configs),
        )
        for t in topics
    }


def test_project_topics_file_declares_the_messaging_contract() -> None:
    names = {t.name for t in desired()}
    assert {"conversation.inbound", "conversation.outbound", "tool.requests", "tool.results"} <= names
    assert {"dlq.conversation-worker", "dlq.tool-executor", "dlq.gateway"} <= names
    for topic in desired():
        assert {"retention.ms", "cleanup.policy", "min.insync.replicas", "max.message.bytes"} <= set(
            topic.configs
        )


def test_every_topic_the_services_use_is_declared_in_the_topics_file() -> None:
    names = {t.name for t in desired()}
    used = {topics.INBOUND, topics.OUTBOUND, topics.TOOL_REQUESTS, topics.TOOL_RESULTS}
    used |= {topics.dead_letter_topic(service) for service in topics.CONSUMING_SERVICES}
    assert used <= names, f"not in topics.yaml: {sorted(used - names)}"


def test_environment_overrides_apply() -> None:
    production = {t.name: t for t in desired("production")}
    assert production["conversation.inbound"].partitions == 24
    assert production["tool.requests"].replication_factor == 3
    assert production["tool.requests"].configs["min.insync.replicas"] == "2"


def test_unknown_key_is_rejected_with_file_and_line(tmp_path: Path) -> None:
    text = (ROOT / "topics.yaml").read_text().replace("    partitions: 6\n", "    partitons: 6\n", 1)
    bad = tmp_path / "topics.yaml"
    bad.write_text(text)
    line = text.splitlines().index("    partitons: 6") + 1
    with pytest.raises(TopicsFileError) as info:
        load_topics_file(bad)
    assert f"{bad}:{line}:" in info.value.message and "partitons: unknown key" in info.value.message


def test_wrong_type_and_bad_config_value_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "topics.yaml"
    bad.write_text(
        "version: 1\ntopics:\n  a:\n    partitions: three\n  b:\n    partitions: 1\n"
        "    configs:\n      cleanup.policy: sometimes\n"
    )
    with pytest.raises(TopicsFileError) as info:
        load_topics_file(bad)
    assert f"{bad}:4: topics.a.partitions" in info.value.message
    assert f"{bad}:7: topics.b.configs" in info.value.message and "cleanup.policy must be one of" in str(
        info.value
    )


def test_plan_on_empty_cluster_creates_everything() -> None:
    plan = compute_plan(desired(), {}, "local")
    assert {c.action for c in plan.changes} == {"create"} and len(plan.changes) == len(desired())


def test_plan_matching_cluster_has_no_changes() -> None:
    plan = compute_plan(desired(), live_from(desired()), "local")
    assert not plan.has_changes and len(plan.unchanged) == len(desired())


def test_config_change_is_an_alter_with_old_and_new() -> None:
    live = live_from(desired())
    live["tool.requests"].configs["retention.ms"] = "1000"
    (change,) = compute_plan(desired(), live, "local").changes
    assert change.action == "alter_config"
    assert change.configs["retention.ms"] == {"old": "1000", "new": "604800000"}


def test_partition_decrease_and_replication_change_are_refused() -> None:
    live = live_from(desired())
    live["tool.requests"].partitions = 12
    live["tool.results"].replication_factor = 3
    plan = compute_plan(desired(), live, "local")
    assert {c.topic for c in plan.refused} == {"tool.requests", "tool.results"}
    assert "cannot decrease" in plan.refused[0].detail


def test_repartition_of_keyed_topic_needs_the_flag() -> None:
    live = live_from(desired())
    live["conversation.inbound"].partitions = 3
    (refused,) = compute_plan(desired(), live, "local").changes
    assert refused.action == "refused" and "ordering" in refused.detail
    (allowed,) = compute_plan(desired(), live, "local", allow_repartition=True).changes
    assert allowed.action == "increase_partitions" and allowed.partitions == 6


def test_unmanaged_topics_are_reported_not_touched() -> None:
    live = live_from(desired())
    live["someone.else"] = LiveTopic(name="someone.else", partitions=1, replication_factor=1, configs={})
    plan = compute_plan(desired(), live, "local")
    assert plan.unmanaged == ["someone.else"] and not plan.has_changes


def test_a_principal_naming_an_undeclared_topic_is_rejected_with_its_line(tmp_path: Path) -> None:
    text = (ROOT / "topics.yaml").read_text().replace("consume: [tool.requests]", "consume: [tool.request]")
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(TopicsFileError) as info:
        load_topics_file(path)
    assert "principal tool-executor names topic 'tool.request'" in info.value.message
