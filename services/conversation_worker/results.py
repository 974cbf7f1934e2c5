"""Tool results, followed on ``tool.results`` and matched to waiting turns by call id.

Every worker follows every partition from the end (no consumer group,
:class:`~services.common.tail.PartitionTail`): a turn waits only for calls it published
after the reader started, and a turn re-run after a crash asks again — the tool
executor answers a repeated call id from its store. After losing the broker the reader
resumes where it was, so no result published meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from services.common.envelope import Envelope, EventType, tool_call_key
from services.common.errors import PoisonRecord
from services.common.settings import Settings
from services.common.tail import PartitionTail
from services.common.tools import ToolResult
from services.common.topics import TOOL_RESULTS, dead_letter_topic

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
PROGRESS_QUEUE = 64


class ToolResults:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.pending: dict[str, asyncio.Future[ToolResult]] = {}
        # Progress of the calls awaited here (tool.progress records), by call key.
        self.progress: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.tail = PartitionTail(
            settings,
            topic=TOOL_RESULTS,
            client_id="worker-tool-results",
            producer=producer,
            dead_letter_topic=dead_letter_topic("conversation-worker"),
            handle=self._resolve,
            resume=True,
            # The hop back to the waiting turn, in the trace of the executor's answer.
            span_name=lambda envelope: (
                "worker tool.result" if envelope.type == EventType.TOOL_RESPONSE else None
            ),
        )

    async def start(self) -> None:
        """Follow from the end; returns once the end offsets are known, so the result
        of any request published afterwards is seen."""
        await self.tail.start(timeout_s=START_TIMEOUT_S)

    async def stop(self) -> None:
        await self.tail.stop()

    def expect(self, key: str) -> asyncio.Future[ToolResult]:
        """A future for the result of a call, by :func:`tool_call_key`."""
        future = self.pending.get(key)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self.pending[key] = future
        return future

    def forget(self, key: str) -> None:
        self.pending.pop(key, None)
        self.progress.pop(key, None)

    def progress_of(self, key: str) -> asyncio.Queue[dict[str, Any]]:
        """The progress payloads of an awaited call, as they arrive."""
        return self.progress.setdefault(key, asyncio.Queue(maxsize=PROGRESS_QUEUE))

    def _resolve(self, envelope: Envelope) -> None:
        if envelope.type == EventType.TOOL_PROGRESS:
            queue = self.progress.get(tool_call_key(envelope.turn_id, str(envelope.payload.get("call_id"))))
            if queue is not None and not queue.full():  # a slow turn skips progress, never blocks
                queue.put_nowait(dict(envelope.payload))
            return
        if envelope.type != EventType.TOOL_RESPONSE:
            return
        future = self.pending.get(tool_call_key(envelope.turn_id, str(envelope.payload.get("call_id"))))
        if future is None or future.done():
            return
        try:
            future.set_result(ToolResult.model_validate(envelope.payload))
        except ValidationError as exc:
            raise PoisonRecord(f"not a tool result: {exc.error_count()} invalid fields") from None
