"""Kafka as a test sees it: raw records in, dead letters out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from services.common.kafka import client_options
from services.common.settings import Settings


@dataclass
class DeadLetters:
    """A dead-letter topic followed from ``start``, its end when following began."""

    consumer: AIOKafkaConsumer
    start: int

    async def next(self) -> ConsumerRecord[bytes, bytes]:
        """The next record, waiting up to 30 s."""
        return await asyncio.wait_for(self.consumer.getone(), 30)


@asynccontextmanager
async def dead_letters(settings: Settings, topic: str) -> AsyncIterator[DeadLetters]:
    """Follow a dead-letter topic from its end (resolved before this yields)."""
    consumer = AIOKafkaConsumer(**client_options(settings))
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        yield DeadLetters(consumer, await consumer.position(tp))
    finally:
        await consumer.stop()


async def send_raw(settings: Settings, topic: str, value: bytes, key: bytes) -> None:
    """One record, as bytes, past every check a0's producers make."""
    producer = AIOKafkaProducer(**client_options(settings))
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
