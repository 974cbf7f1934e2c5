"""Coalescing of answer text into ``message.delta`` events.

A model streams a token at a time; a0 sends clients one delta per short window (the
``A0_WORKER_DELTA_WINDOW_MS`` setting) instead of one event per token — one database
write and one Kafka record per window. Text never waits longer than one window, the
first text of a round included: an answer that ends within its first window (a short
reply, a tool call's preamble) goes out whole with the event that ends it, in the same
statement and the same produce request, instead of as a step of its own. What is left
when the answer ends goes out with that event too.

Each delta's key is its character offset in the round's answer, and text that clients
were already sent (a turn redelivered after a crash) is skipped by offset, so the deltas
always concatenate to the answer exactly once. That holds only if the new answer begins
with what was sent: a provider may answer differently the second time, so the text is
compared, and an answer that differs fails the round (``llm_interrupted``) instead of
being spliced onto the one shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

from services.common import telemetry
from services.common.envelope import Envelope, EventType
from services.conversation_worker.events import Draft
from services.conversation_worker.llm_errors import LLMError

# A redelivered turn's new answer does not begin with what clients were shown.
DIVERGED = (
    "The answer was interrupted (a0's worker restarted) and the LLM provider answered "
    "differently the second time, so the first answer cannot be finished. Send the message again."
)


class EventSink(Protocol):
    """Where deltas go: :class:`~services.conversation_worker.events.EventLog`."""

    async def emit_batch(self, source: Envelope, drafts: Sequence[Draft]) -> Any: ...


class DeltaStream:
    def __init__(
        self, events: EventSink, envelope: Envelope, round_: int, *, already_sent: str, window_s: float
    ) -> None:
        self.events = events
        self.envelope = envelope
        self.round = round_
        self.window_s = window_s
        self._sent_before = already_sent  # shown to clients before a redelivery
        self._pending = ""  # received, not sent yet
        self._pending_at = len(already_sent)  # its offset in the round's answer
        self._window_at: float | None = None  # when the current window opened: first text, then each flush
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None  # a flush by the timer that failed

    async def add(self, text: str, position: int) -> None:
        """Text of the answer starting at character ``position`` (from the model)."""
        self._raise_failed()
        end = position + len(text)
        if position < len(self._sent_before):
            shown = self._sent_before[position:end]
            if text[: len(shown)] != shown:
                raise LLMError("llm_interrupted", DIVERGED)
        known = self._pending_at + len(self._pending)
        if end <= known:
            return  # sent or pending already
        fresh = text[max(0, known - position) :]
        if not self._pending:
            self._pending_at = known
        self._pending += fresh
        now = time.monotonic()
        if self._window_at is None:  # the window opens with the first text
            self._window_at = now
        if now - self._window_at >= self.window_s:
            await self._flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_after(self._window_at + self.window_s - now))

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timer = None
        try:
            await self._flush()
        except Exception as exc:  # the turn's own task raises it at its next step
            self._failed = exc

    def _raise_failed(self) -> None:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    async def _flush(self) -> None:
        async with self._lock:
            self._window_at = time.monotonic()
            if not self._pending:
                return
            text, at = self._pending, self._pending_at
            with telemetry.untraced():  # one span for the LLM call, none per piece of text
                await self.events.emit_batch(
                    self.envelope, [Draft(EventType.DELTA, {"text": text}, self._key(at))]
                )
            # Stored and published: what was added meanwhile stays pending. A failed
            # flush leaves it all pending, and the turn's retry starts from the table.
            self._pending = self._pending[len(text) :]
            self._pending_at = at + len(text)

    def check_answer(self, text: str) -> None:
        """Fail the round unless the whole answer begins with what was shown before."""
        if not text.startswith(self._sent_before):
            raise LLMError("llm_interrupted", DIVERGED)

    def _key(self, at: int) -> str:
        return f"delta:{self.envelope.turn_id}:{self.round}:{at}"

    def _take(self) -> Draft | None:
        if not self._pending:
            return None
        draft = Draft(EventType.DELTA, {"text": self._pending}, self._key(self._pending_at))
        self._pending_at, self._pending = self._pending_at + len(self._pending), ""
        return draft

    async def close(self) -> list[Draft]:
        """Stop the window timer; the text not sent yet, as drafts to emit with the
        event that ends the answer."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        async with self._lock:  # a flush in progress finishes first
            self._raise_failed()
            draft = self._take()
        return [draft] if draft is not None else []

    def abandon(self) -> None:
        """The answer will not be finished here (cancel, failure): stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
