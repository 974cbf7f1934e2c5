"""Topics as code against the real broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from a0ctl.runtime.local import LocalRuntime
from a0ctl.topics.admin import LagProbe
from services.common.kafka import client_options
from services.common.secrets_env import apply_generated_secrets
from services.common.settings import Settings
from tests.support.cli import a0ctl, a0ctl_json

pytestmark = pytest.mark.integration


@pytest.fixture
def topics_file(tmp_path: Path, stack: LocalRuntime) -> Path:
    """A file of fresh topics, so the test starts from topics the cluster has never seen."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    spec = {
        "version": 1,
        "defaults": {
            "replication_factor": 1,
            "configs": {
                "cleanup.policy": "delete",
                "retention.ms": 3600000,
                "min.insync.replicas": 1,
                "max.message.bytes": 1048576,
            },
        },
        "topics": {
            f"{prefix}.keyed": {"partitions": 3, "keyed_by": "conversation_id"},
            f"{prefix}.plain": {"partitions": 2},
        },
    }
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def edit(path: Path, change) -> None:
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec))


def test_plan_apply_plan_is_idempotent(topics_file: Path) -> None:
    first = a0ctl("topics", "plan", "--file", str(topics_file), "--detailed-exitcode")
    assert first.returncode == 2, first.stderr
    plan = a0ctl_json("topics", "plan", "--file", str(topics_file))
    assert [c["action"] for c in plan["changes"]] == ["create", "create"]
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0
    again = a0ctl("topics", "plan", "--file", str(topics_file), "--detailed-exitcode")
    assert again.returncode == 0 and "No changes" in again.stdout
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0


def test_config_change_is_planned_and_applied(topics_file: Path) -> None:
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0
    name = next(n for n in yaml.safe_load(topics_file.read_text())["topics"] if n.endswith(".plain"))
    edit(topics_file, lambda s: s["topics"][name].update({"configs": {"retention.ms": 7200000}}))
    shown = a0ctl("topics", "plan", "--file", str(topics_file))
    assert "alter_config" in shown.stdout and "retention.ms: 3600000 → 7200000" in shown.stdout
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0
    described = a0ctl_json("topics", "describe", name)["topics"][0]
    assert described["configs"]["retention.ms"] == "7200000"
    assert len(described["partitions"]) == 2


def test_the_previous_topics_file_rolls_configs_back(topics_file: Path, tmp_path: Path) -> None:
    """docs/rollback.md, topic configs: plan and apply the previous release's topics.yaml."""
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0
    previous = tmp_path / "previous-topics.yaml"
    previous.write_text(topics_file.read_text())
    spec = yaml.safe_load(topics_file.read_text())
    plain = next(n for n in spec["topics"] if n.endswith(".plain"))
    added = plain.replace(".plain", ".added")
    edit(
        topics_file,
        lambda s: s["topics"].update(
            {plain: {"partitions": 2, "configs": {"retention.ms": 7200000}}, added: {"partitions": 1}}
        ),
    )
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0

    planned = a0ctl("topics", "plan", "--file", str(previous), "--detailed-exitcode")
    assert planned.returncode == 2, planned.stderr
    assert "retention.ms: 7200000 → 3600000" in planned.stdout
    assert "not in the file (left alone): " in planned.stdout and added in planned.stdout
    assert a0ctl("topics", "apply", "--file", str(previous)).returncode == 0
    again = a0ctl("topics", "plan", "--file", str(previous), "--detailed-exitcode")
    assert again.returncode == 0 and "No changes" in again.stdout
    assert a0ctl_json("topics", "describe", plain)["topics"][0]["configs"]["retention.ms"] == "3600000"


def test_partition_decrease_is_refused_and_changes_nothing(topics_file: Path) -> None:
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0
    spec = yaml.safe_load(topics_file.read_text())
    keyed = next(n for n in spec["topics"] if n.endswith(".keyed"))
    plain = next(n for n in spec["topics"] if n.endswith(".plain"))

    def change(s):
        s["topics"][keyed]["partitions"] = 1
        s["topics"][plain]["configs"] = {"retention.ms": 999999}

    edit(topics_file, change)
    result = a0ctl("topics", "apply", "--file", str(topics_file))
    assert result.returncode == 1
    assert "cannot decrease" in result.stderr and "nothing was changed" in result.stderr
    described = {t["name"]: t for t in a0ctl_json("topics", "describe")["topics"]}
    assert len(described[keyed]["partitions"]) == 3
    assert described[plain]["configs"]["retention.ms"] == "3600000"


def test_repartition_of_keyed_topic_needs_flag(topics_file: Path) -> None:
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0
    keyed = next(n for n in yaml.safe_load(topics_file.read_text())["topics"] if n.endswith(".keyed"))
    edit(topics_file, lambda s: s["topics"][keyed].update({"partitions": 4}))
    refused = a0ctl("topics", "apply", "--file", str(topics_file))
    assert refused.returncode == 1 and "--allow-repartition" in refused.stderr
    assert a0ctl("topics", "apply", "--file", str(topics_file), "--allow-repartition").returncode == 0
    assert len(a0ctl_json("topics", "describe", keyed)["topics"][0]["partitions"]) == 4


def test_unknown_key_is_rejected_with_its_line(topics_file: Path) -> None:
    topics_file.write_text(topics_file.read_text().replace("partitions: 2", "partitons: 2"))
    result = a0ctl("topics", "plan", "--file", str(topics_file))
    assert result.returncode == 1
    line = topics_file.read_text().splitlines().index("    partitons: 2") + 1
    assert f"{topics_file}:{line}:" in result.stderr and "unknown key" in result.stderr


def test_project_topics_are_applied_by_up(stack: LocalRuntime) -> None:
    result = a0ctl("topics", "plan", "--detailed-exitcode")
    assert result.returncode == 0, result.stdout + result.stderr
    lag = a0ctl("topics", "lag", "--json")
    assert lag.returncode == 0 and "lag" in json.loads(lag.stdout)


def test_smoke_passes_then_fails_naming_redis_when_it_stops(stack: LocalRuntime) -> None:
    ok = a0ctl("smoke", "--json", "--infra-only")
    report = json.loads(ok.stdout)
    assert ok.returncode == 0 and report["ok"] is True, report
    stack.stop_service("redis")
    try:
        failed = a0ctl("smoke", "--json", "--infra-only")
        report = json.loads(failed.stdout)
        assert failed.returncode == 1 and report["ok"] is False
        bad = [c for c in report["checks"] if not c["ok"]]
        assert [c["name"] for c in bad] == ["redis"]
    finally:
        stack.up(services=("redis",))


def test_lag_counts_waiting_records_and_their_age(topics_file: Path, settings: Settings) -> None:
    """Records a group has not consumed show as lag, in records and in seconds (the age
    of the oldest, as of the offsets read), and as none once the group commits past them."""
    assert a0ctl("topics", "apply", "--file", str(topics_file)).returncode == 0
    topic = next(n for n in yaml.safe_load(topics_file.read_text())["topics"] if n.endswith(".plain"))
    asyncio.run(_lag_probe(settings, topic))


async def _lag_probe(settings: Settings, topic: str) -> None:
    group = f"lag-probe-{uuid.uuid4().hex[:8]}"
    options = client_options(apply_generated_secrets(settings))
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(**options, group_id=group, enable_auto_commit=False)
    producer = AIOKafkaProducer(**options)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: 0})
        for n in range(5):
            await producer.send_and_wait(topic, f"record {n}".encode(), partition=0)
        waited = time.monotonic()
        await asyncio.sleep(2)
        rows = a0ctl_json("topics", "lag", "--group", group)["lag"]
        (row,) = [r for r in rows if r["topic"] == topic and r["partition"] == 0]
        assert row["lag"] == 5 and row["committed"] == 0
        assert 2 <= row["lag_seconds"] <= time.monotonic() - waited + 1, row

        await consumer.commit({tp: 5})
        (row,) = [r for r in a0ctl_json("topics", "lag", "--group", group)["lag"] if r["topic"] == topic]
        assert row["lag"] == 0 and row["lag_seconds"] == 0, row

        # One probe read again and again (as a load run samples) follows each change.
        async with LagProbe(settings) as probe:
            for batch, commit in ((3, 8), (2, 10)):
                sent = time.monotonic()
                for n in range(batch):
                    await producer.send_and_wait(topic, f"more {n}".encode(), partition=0)
                await asyncio.sleep(1)
                (row,) = [r for r in await probe.read(group) if r.topic == topic]
                assert row.lag == batch and 1 <= row.lag_seconds <= time.monotonic() - sent + 1, row
                await consumer.commit({tp: commit})
                (row,) = [r for r in await probe.read(group) if r.topic == topic]
                assert row.lag == 0 and row.lag_seconds == 0, row
    finally:
        await producer.stop()
        await consumer.stop()
