"""Talk to the live cluster through Kafka's admin API (aiokafka): read topics, carry a
plan out, describe topics and consumer-group lag."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from a0ctl.errors import StackError, TopicPlanError
from a0ctl.topics.model import CONFIG_RULES, DesiredTopic
from a0ctl.topics.plan import LiveTopic, TopicPlan
from services.common.kafka import client_options
from services.common.retry import WaitTimeout, wait_until_async
from services.common.settings import Settings

Client = TypeVar("Client", AIOKafkaAdminClient, AIOKafkaConsumer)


def kafka_unreachable(settings: Settings, exc: Exception) -> StackError:
    return StackError(
        f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}",
        service="kafka",
        hint="is the stack up? run `a0ctl up`",
    )


@asynccontextmanager
async def started(client: Client, settings: Settings) -> AsyncIterator[Client]:
    """``client`` started, and closed when the block is left; a broker that cannot be
    reached is a :class:`StackError` that says so."""
    close = client.close if isinstance(client, AIOKafkaAdminClient) else client.stop
    try:
        await client.start()
    except KafkaError as exc:
        await close()
        raise kafka_unreachable(settings, exc) from exc
    try:
        yield client
    finally:
        await close()


def admin_client(settings: Settings) -> AbstractAsyncContextManager[AIOKafkaAdminClient]:
    return started(AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000), settings)


def _check(response: Any, what: str) -> None:
    obj = response.to_object()
    for entry in obj.get("resources", obj.get("topic_errors", [])):
        if entry.get("error_code"):
            name = entry.get("resource_name") or entry.get("topic")
            raise TopicPlanError(f"{what} {name} failed: {entry.get('error_message') or entry['error_code']}")


async def topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            configs[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]
            }
    return configs


async def live_topics(admin: AIOKafkaAdminClient) -> dict[str, LiveTopic]:
    names = [name for name in await admin.list_topics() if not name.startswith("__")]
    if not names:
        return {}
    described = await admin.describe_topics(names)
    configs = await topic_configs(admin, names)
    live = {}
    for topic in described:
        partitions = topic["partitions"]
        live[topic["topic"]] = LiveTopic(
            name=topic["topic"],
            partitions=len(partitions),
            replication_factor=len(partitions[0]["replicas"]) if partitions else 0,
            configs={k: v for k, v in configs.get(topic["topic"], {}).items() if k in CONFIG_RULES},
        )
    return live


async def apply_plan(admin: AIOKafkaAdminClient, plan: TopicPlan, desired: list[DesiredTopic]) -> None:
    """Carry a plan out. A plan with any refused change is rejected before anything changes."""
    if plan.refused:
        raise TopicPlanError(
            "refusing to apply; nothing was changed:\n"
            + "\n".join(f"  {change.topic}: {change.detail}" for change in plan.refused)
        )
    by_name = {topic.name: topic for topic in desired}
    creates = [by_name[c.topic] for c in plan.changes if c.action == "create"]
    if creates:
        response = await admin.create_topics(
            [NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.configs) for t in creates]
        )
        _check(response, "create topic")
    grow = {c.topic: NewPartitions(c.partitions) for c in plan.changes if c.action == "increase_partitions"}
    if grow:
        await admin.create_partitions(grow)
    alters = [c for c in plan.changes if c.action == "alter_config"]
    if alters:
        # AlterConfigs replaces a topic's dynamic configs as a whole: send the full managed set.
        responses = await admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, c.topic, configs=by_name[c.topic].configs)
                for c in alters
            ]
        )
        for response in responses:
            _check(response, "alter configs of")
    deletes = [c.topic for c in plan.changes if c.action == "delete"]
    if deletes:
        await admin.delete_topics(deletes)


class PartitionInfo(BaseModel):
    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]
    end_offset: int


class TopicDescription(BaseModel):
    name: str
    partitions: list[PartitionInfo]
    configs: dict[str, str]


async def end_offsets(settings: Settings, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.end_offsets(partitions)
    finally:
        await _stop(consumer)


async def describe_topics(settings: Settings, names: list[str] | None) -> list[TopicDescription]:
    async with admin_client(settings) as admin:
        existing = [n for n in await admin.list_topics() if not n.startswith("__")]
        if names:
            missing = sorted(set(names) - set(existing))
            if missing:
                raise TopicPlanError(f"no such topic: {', '.join(missing)}", hint="see `a0ctl topics plan`")
        wanted = sorted(names or existing)
        described = await admin.describe_topics(wanted) if wanted else []
        configs = await topic_configs(admin, wanted)
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    offsets = await end_offsets(settings, tps)
    return [
        TopicDescription(
            name=t["topic"],
            partitions=sorted(
                (
                    PartitionInfo(
                        partition=p["partition"],
                        leader=p["leader"],
                        replicas=p["replicas"],
                        isr=p["isr"],
                        end_offset=offsets.get(TopicPartition(t["topic"], p["partition"]), 0),
                    )
                    for p in t["partitions"]
                ),
                key=lambda info: info.partition,
            ),
            configs={k: v for k, v in configs.get(t["topic"], {}).items() if k in CONFIG_RULES},
        )
        for t in sorted(described, key=lambda t: t["topic"])
    ]


class PartitionLag(BaseModel):
    group: str
    topic: str
    partition: int
    committed: int
    end_offset: int
    lag: int
    lag_seconds: float = 0.0  # age of the oldest record the group has not consumed yet


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer. With a broker down, aiokafka's fetcher can raise the cancellation
    of its own fetch task from ``stop()``: that is swallowed, while a cancellation of
    the caller's task still goes through."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def _oldest_unconsumed_age(
    consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int], as_of_ms: float
) -> dict[TopicPartition, float]:
    """How long the record at each committed offset had been waiting at ``as_of_ms`` (when
    the offsets were read), in seconds. Measured from then, not from when its record is
    fetched: connecting and fetching take a while under load, and the group may have
    handled the record meanwhile."""
    if not positions:
        return {}
    ages: dict[TopicPartition, float] = {}
    consumer.assign(list(positions))
    try:
        for tp, offset in positions.items():
            consumer.seek(tp, offset)

        async def all_seen() -> bool:
            waiting = [tp for tp in positions if tp not in ages]
            batches = await consumer.getmany(*waiting, timeout_ms=500, max_records=len(waiting) * 20)
            for tp, records in batches.items():
                if records and tp not in ages:
                    ages[tp] = max(0.0, (as_of_ms - records[0].timestamp) / 1000)
                    consumer.pause(tp)
            return len(ages) == len(positions)

        # A fetch answers with the partitions that have data ready; ask until each has
        # shown its first record. A partition that shows none in time has no age.
        with contextlib.suppress(WaitTimeout):
            await wait_until_async(
                all_seen, timeout=3.0, interval=0, describe="the oldest unconsumed records"
            )
    finally:
        # Nothing is fetched until the next reading assigns partitions again.
        consumer.pause(*consumer.assignment())
    return ages


class LagProbe:
    """Reads consumer-group lag over connections it keeps: one admin client and one
    consumer, opened once. A load run reads lag every few seconds, and each new client
    costs its host and the broker a connection, a SCRAM handshake and a metadata fetch
    (about 50 ms of CPU in all)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._exit = AsyncExitStack()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def open(self) -> LagProbe:
        try:
            self._admin = await self._exit.enter_async_context(admin_client(self.settings))
            consumer = AIOKafkaConsumer(**client_options(self.settings), enable_auto_commit=False)
            self._exit.push_async_callback(_stop, consumer)
            await consumer.start()
            self._consumer = consumer
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        self._admin = self._consumer = None
        await self._exit.aclose()

    async def __aenter__(self) -> LagProbe:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def read(self, group: str | None) -> list[PartitionLag]:
        """Lag per partition of ``group`` (None: every group), in records and seconds."""
        assert self._admin is not None and self._consumer is not None, "open the probe first"
        admin = self._admin
        groups = [group] if group else sorted(g[0] for g in await admin.list_consumer_groups())
        committed: dict[str, dict[TopicPartition, int]] = {}
        for name in groups:
            offsets = await admin.list_consumer_group_offsets(name)
            committed[name] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        as_of_ms = time.time() * 1000  # ages as of the offsets just read (each read just before)
        if group and not committed.get(group):
            raise TopicPlanError(
                f"consumer group {group!r} has no committed offsets", hint="see `a0ctl topics lag`"
            )
        all_tps = sorted({tp for offsets in committed.values() for tp in offsets})
        ends = await self._consumer.end_offsets(all_tps) if all_tps else {}
        # The age of the oldest record a group has not finished, per partition it is behind
        # on (the lowest committed offset of any group reading it).
        behind: dict[TopicPartition, int] = {}
        for offsets in committed.values():
            for tp, offset in offsets.items():
                if ends.get(tp, offset) > offset:
                    behind[tp] = min(offset, behind.get(tp, offset))
        ages = await _oldest_unconsumed_age(self._consumer, behind, as_of_ms)
        rows = []
        for name, offsets in committed.items():
            for tp, offset in sorted(offsets.items()):
                lag = max(0, ends.get(tp, offset) - offset)
                # With several groups on one partition, the age is that of the group furthest
                # behind: for the others, an upper bound.
                age = ages.get(tp, 0.0) if lag else 0.0
                rows.append(
                    PartitionLag(
                        group=name,
                        topic=tp.topic,
                        partition=tp.partition,
                        committed=offset,
                        end_offset=ends.get(tp, offset),
                        lag=lag,
                        lag_seconds=round(age, 3),
                    )
                )
        return rows


async def consumer_lag(settings: Settings, group: str | None) -> list[PartitionLag]:
    async with LagProbe(settings) as probe:
        return await probe.read(group)
