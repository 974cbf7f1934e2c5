"""One of three Kafka nodes killed under load: the other two hold every partition in sync
(replication 3, min.insync.replicas 2), leadership moves, supervisord brings the node
back and it catches up; every accepted message is answered exactly once, and nobody
types a command."""

from __future__ import annotations

import pytest

from a0ctl.runtime.local import LocalRuntime
from a0ctl.topics.admin import describe_topics
from services.common.settings import Settings
from tests.support.faults import sigkill, under_load
from tests.support.waiting import eventually

pytestmark = pytest.mark.cluster


async def test_topics_are_replicated_on_three_nodes_with_two_in_sync_required(
    settings: Settings, stack: LocalRuntime
) -> None:
    assert [name for name in stack.services if name.startswith("kafka")] == ["kafka", "kafka-2", "kafka-3"]
    pids = {stack.pid(name) for name in ("kafka", "kafka-2", "kafka-3")}
    assert None not in pids and len(pids) == 3  # three processes
    for topic in await describe_topics(settings, None):
        assert topic.configs["min.insync.replicas"] == "2", topic
        for partition in topic.partitions:
            assert sorted(partition.replicas) == [1, 2, 3] and len(partition.isr) == 3, topic


async def test_a_node_sigkilled_under_load_loses_and_repeats_nothing(
    settings: Settings, stack: LocalRuntime
) -> None:
    # The node leading the most partitions of conversation.inbound: the hardest to lose.
    (inbound,) = await describe_topics(settings, ["conversation.inbound"])
    leaders = [p.leader for p in inbound.partitions]
    victim = max({1, 2, 3}, key=leaders.count)
    name = "kafka" if victim == 1 else f"kafka-{victim}"
    await under_load(settings, stack, f"SIGKILL 1 of 3 Kafka nodes ({name})", name, sigkill(stack, name))

    async def in_sync_again() -> bool:
        described = await describe_topics(settings, None)
        return all(len(p.isr) == 3 for t in described for p in t.partitions)

    await eventually(in_sync_again, 120, "every partition back to three replicas in sync")
