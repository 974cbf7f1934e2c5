"""Record real envelopes of the running stack as fixtures for the compatibility tests.

Drives a few turns through the gateway (a tool call, a cancelled tool run, a tool that
does not exist), then reads every a0 topic from the start and keeps the first record of
each event type, byte for byte as it was on the wire, under
``tests/fixtures/envelopes/v<version>/<type>.json``. Run it against a stack of the
release whose envelopes later releases must still read, before the version changes:

    .venv/bin/python -m tests.support.record_envelopes
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from a0ctl.client import GatewayClient
from services.common.kafka import client_options
from services.common.secrets_env import apply_generated_secrets
from services.common.settings import Settings, load_settings
from services.common.topics import INBOUND, OUTBOUND, TOOL_REQUESTS, TOOL_RESULTS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes"


async def drive_turns(settings: Settings) -> None:
    async with GatewayClient.for_user(settings, "recorder") as client:
        conversation = await client.create_conversation("recorded envelopes")
        await client.send_and_collect(conversation, "compute 6*7", timeout=60)
        await client.send_and_collect(conversation, "run the shell please", timeout=60)
        cancelled = await client.create_conversation("recorded cancel")
        async with (
            asyncio.timeout(60),
            client.turn(cancelled, "run python: import time\nwhile True: time.sleep(0.05)") as turn,
        ):
            async for event in turn:
                if event["type"] == "tool.call":
                    await client.cancel(cancelled, turn.turn_id)


async def read_records(settings: Settings) -> dict[str, bytes]:
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in (INBOUND, OUTBOUND, TOOL_REQUESTS, TOOL_RESULTS)
            for p in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: dict[str, bytes] = {}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=2000)
            for records in batch.values():
                for record in records:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        found.setdefault(json.loads(record.value)["type"], record.value)
        return found
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka's only refresh
    return consumer.partitions_for_topic(topic) or set()


async def main() -> None:
    settings = apply_generated_secrets(load_settings())
    await drive_turns(settings)
    for event_type, raw in sorted((await read_records(settings)).items()):
        version = json.loads(raw).get("v", 1)
        path = FIXTURES / f"v{version}" / f"{event_type}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw + b"\n")
        print(f"recorded {path.relative_to(FIXTURES.parents[1])}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
