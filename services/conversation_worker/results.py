"""Tool results, consumed from ``tool.results`` and matched to waiting turns by call id.

Every worker reads every partition from the end (no consumer group): a turn waits only
for calls it published after the listener started, and a turn re-run after a crash asks
again — the tool executor answers a repeated call id from its store.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer

from services.common.envelope import Envelope, EnvelopeError, EventType, tool_call_key
from services.common.kafka import TOOL_RESULTS, client_options, partitions_of
from services.common.settings import Settings

log = logging.getLogger(__name__)


class ToolResults:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.consumer = AIOKafkaConsumer(
            **client_options(settings),
            enable_auto_commit=False,
            client_id="worker-tool-results",
        )
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        tps = await partitions_of(self.settings, TOOL_RESULTS)
        await self.consumer.start()
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, before any request is published
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    def expect(self, key: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the result of a call, by :func:`tool_call_key`."""
        future = self.pending.get(key)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self.pending[key] = future
        return future

    def forget(self, key: str) -> None:
        self.pending.pop(key, None)

    async def _run(self) -> None:
        async for record in self.consumer:
            try:
                envelope = Envelope.from_bytes(record.value)
            except EnvelopeError as exc:
                log.warning(
                    "ignoring malformed tool result at %s@%d: %s", record.partition, record.offset, exc
                )
                continue
            if envelope.type != EventType.TOOL_RESPONSE:
                continue
            future = self.pending.get(tool_call_key(envelope.turn_id, str(envelope.payload.get("call_id"))))
            if future is not None and not future.done():
                future.set_result(envelope.payload)
