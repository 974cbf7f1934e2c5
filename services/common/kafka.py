"""The one Kafka client factory of a0 (aiokafka): how every client reaches the broker, the
producer, publishing and dead letters. The consumer loop every service uses is
:mod:`services.common.consumer`.

Producers: ``acks=all`` with idempotence, keyed by conversation so one conversation is
strictly ordered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common import metrics, telemetry
from services.common.envelope import Envelope
from services.common.errors import ConfigError
from services.common.logging import register_secret
from services.common.settings import Settings

log = logging.getLogger(__name__)


def client_options(settings: Settings) -> dict[str, Any]:
    """How every Kafka client of a0 reaches the broker: its address and, with SASL, the
    principal this process is (``A0_KAFKA_SASL_USERNAME``) and its password."""
    kafka = settings.kafka
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap}
    if kafka.security_protocol == "SASL_PLAINTEXT":
        password = kafka.sasl_password.get_secret_value()
        if not password:
            raise ConfigError(
                f"no Kafka password for principal {kafka.sasl_username!r}",
                hint="run `a0ctl up` (it generates one in conf/env) or set A0_KAFKA_SASL_PASSWORD",
            )
        register_secret(password)
        options.update(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=password,
        )
    return options


async def topic_partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> list[TopicPartition]:
    """Every partition of ``topics``, as the broker describes them to this principal;
    ``MissingTopics`` names those it does not know (or may not describe)."""
    missing = sorted(set(topics) - set(await admin.list_topics()))
    if missing:
        raise MissingTopics(missing)
    described = await admin.describe_topics(topics)
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in sorted(topic["partitions"], key=lambda p: int(p["partition"]))
    ]


class MissingTopics(Exception):
    def __init__(self, topics: list[str]) -> None:
        super().__init__(f"topic {', '.join(topics)} does not exist on the cluster")
        self.topics = topics


# How often aiokafka's fetch routine wakes with nothing to do (default 0.2 s): new
# records, consumption, a rebalance, a resume and a fetch's answer wake it at once anyway.
CONSUMER_TIMEOUT_MS = 1000


def consumer_options(settings: Settings) -> dict[str, Any]:
    """:func:`client_options` and how long a fetch waits at the broker for records: a
    record arriving answers it at once, and an idle consumer sends one per wait. Every
    consumer's fetch routine wakes at most once a second with nothing to do."""
    return {
        **client_options(settings),
        "fetch_max_wait_ms": settings.kafka.fetch_max_wait_ms,
        "consumer_timeout_ms": CONSUMER_TIMEOUT_MS,
    }


def make_producer(settings: Settings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        # No lingering: every hop of a turn is on a user's critical path, and under load
        # records batch anyway while the previous request is in flight.
        linger_ms=0,
        request_timeout_ms=15_000,
        max_request_size=1_048_576,
    )


async def publish(producer: AIOKafkaProducer, topic: str, envelope: Envelope) -> asyncio.Future[object]:
    """Queue an envelope (W3C trace context in the headers); await the result for the ack."""
    return await publish_encoded(producer, topic, envelope.conversation_id, envelope.to_bytes())


async def publish_encoded(
    producer: AIOKafkaProducer, topic: str, conversation_id: str, value: bytes
) -> asyncio.Future[object]:
    """:func:`publish` for an envelope already in its wire encoding."""
    metrics.produced(topic)
    return await producer.send(topic, value, key=conversation_id.encode(), headers=telemetry.kafka_headers())


# Headers of a dead letter: why and where it came from (``a0-dlq-reason``,
# ``a0-dlq-source-topic`` ...), beside the source record's own headers.
DEAD_LETTER_HEADER_PREFIX = "a0-dlq-"
# How many times ``a0ctl dlq replay`` put a record back on its source topic: a record
# that fails again comes back to the dead-letter topic with it, so it is not replayed in a loop.
REPLAY_COUNT_HEADER = "a0-replay-count"
# This process, for the dead letters it writes when its caller names no replica.
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"


async def dead_letter(
    producer: AIOKafkaProducer,
    topic: str,
    record: ConsumerRecord[bytes, bytes],
    reason: str,
    *,
    group: str,
    **extra: str,
) -> None:
    """Copy a record that cannot be handled to a dead-letter topic, unchanged (value, key
    and its own headers), with why, where it came from and which replica met it in the
    headers (``a0-dlq-*``)."""
    log.error("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
    metrics.DEAD_LETTERS.labels(group).inc()
    dead = {"replica": _PROCESS, **extra}
    headers = [
        *(
            (key, value)
            for key, value in (record.headers or ())
            if not key.startswith(DEAD_LETTER_HEADER_PREFIX)
        ),
        ("a0-dlq-reason", reason.encode()),
        ("a0-dlq-source-topic", record.topic.encode()),
        ("a0-dlq-source-partition", str(record.partition).encode()),
        ("a0-dlq-source-offset", str(record.offset).encode()),
        ("a0-dlq-group", group.encode()),
        *((f"{DEAD_LETTER_HEADER_PREFIX}{key}", value.encode()) for key, value in dead.items()),
    ]
    await (await producer.send(topic, record.value or b"", key=record.key, headers=headers))
