"""What a record on ``conversation.inbound`` does: run a turn, or cancel one.

A turn: accept → (LLM round → tool calls → tool results)* → final answer. Progress is
durable: the transcript (``messages``), every client event (``events``) and tool
results are in PostgreSQL, so a turn redelivered after a crash resumes from the last
finished step and re-emits nothing a client has already seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from opentelemetry import trace
from redis.asyncio import Redis

from services.common import metrics, open_turns, telemetry
from services.common.envelope import Envelope, EventType
from services.common.errors import CredentialError, PoisonRecord, PolicyDenied
from services.common.settings import Settings
from services.common.turns import TERMINAL, TurnStatus
from services.conversation_worker.deltas import DeltaStream
from services.conversation_worker.events import Draft, EventLog
from services.conversation_worker.llm import LLMClients
from services.conversation_worker.llm_errors import LLMError, classify
from services.conversation_worker.results import ToolResults
from services.conversation_worker.sequencer import Sequencer
from services.conversation_worker.stream import Completion
from services.conversation_worker.tool_round import ToolRounds, tool_call_event
from services.conversation_worker.turns import Transcript, TurnStart, TurnStore

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a helpful assistant in the a0 agent stack. Use the tools offered when they help, "
    "and answer concisely."
)


class RoundFailed(Exception):
    """An LLM round failed: its error, and the text it had passed on not sent yet."""

    def __init__(self, error: LLMError, tail: list[Draft]) -> None:
        super().__init__(error.code)
        self.error = error
        self.tail = tail


@dataclass
class ActiveTurn:
    turn_id: str
    task: asyncio.Task[Any]


class TurnRunner:
    """Runs the turns of the records it is handed, in order per conversation: the LLM
    rounds here, the tool calls in :class:`ToolRounds`, the durable state in
    :class:`TurnStore` and :class:`EventLog`."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: TurnStore,
        producer: AIOKafkaProducer,
        redis: Redis,
        events: EventLog,
        results: ToolResults,
        llm: LLMClients,
        tool_specs: list[dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis
        self.events = events
        self.llm = llm
        self.tool_specs = tool_specs
        self.sequencer = Sequencer()
        self.active: dict[str, ActiveTurn] = {}
        # Turns handed a slot here and not finished, by conversation: waiting for their
        # slot, starting, or running (then also in ``active``).
        self.open: dict[str, set[str]] = {}
        self.cancel_requested: set[str] = set()
        self.tools = ToolRounds(
            producer=producer, events=events, results=results, timeout_s=settings.tools.wall_seconds + 30
        )

    # --- entry point -------------------------------------------------------------
    async def handle(self, envelope: Envelope, record: ConsumerRecord[bytes, bytes]) -> None:
        if envelope.type == EventType.CANCEL:
            await self._cancel(envelope)
            return
        if envelope.type != EventType.USER_MESSAGE:
            raise PoisonRecord(f"unexpected event type {envelope.type} on conversation.inbound")
        content = envelope.payload.get("content")
        message_id = envelope.payload.get("message_id")
        if not isinstance(content, str) or not content or not isinstance(message_id, str):
            raise PoisonRecord("message.user needs payload.message_id and a non-empty payload.content")
        # Take this conversation's next slot before the first await, so turns run in arrival order.
        ticket = self.sequencer.ticket(envelope.conversation_id)
        open_here = self.open.setdefault(envelope.conversation_id, set())
        open_here.add(envelope.turn_id)
        accepted = Draft(
            EventType.ACCEPTED, {"message_id": message_id, "content": content}, f"accepted:{envelope.turn_id}"
        )
        try:
            if ticket.first:  # nothing of this conversation ahead of it here: accept and start at once
                start = await self.events.start(envelope, [accepted], f"user:{message_id}", content)
                await self._run_turn(envelope, message_id, content, start)
            else:  # accepted now, started when its slot comes
                await self.events.emit_batch(envelope, [accepted])
                await ticket.wait()
                await self._run_turn(envelope, message_id, content)
        finally:
            ticket.release()
            open_here.discard(envelope.turn_id)
            self.cancel_requested.discard(envelope.turn_id)
            if not open_here:
                self.open.pop(envelope.conversation_id, None)
            if self.sequencer.idle(envelope.conversation_id):
                self.events.forget(envelope.conversation_id)

    # --- a turn --------------------------------------------------------------------
    async def _run_turn(
        self, envelope: Envelope, message_id: str, content: str, start: TurnStart | None = None
    ) -> None:
        """Run the turn from ``start``, or start it first."""
        turn_id = envelope.turn_id
        if turn_id in self.cancel_requested:  # cancelled while it waited for its slot, or started
            if await self.store.status(turn_id) in TERMINAL:
                await self.events.republish_turn(envelope.conversation_id, turn_id)
            else:
                await self._end(envelope, TurnStatus.CANCELLED, [_cancelled(turn_id)])
            return
        if start is None:
            start = await self.store.begin(envelope, f"user:{message_id}", content)
        if start.prior in TERMINAL:
            await self.events.republish_turn(envelope.conversation_id, turn_id)
            return
        task = asyncio.current_task()
        assert task is not None
        self.active[envelope.conversation_id] = ActiveTurn(turn_id, task)
        started = time.monotonic()
        metrics.TURNS_INFLIGHT.inc()
        try:
            if turn_id in self.cancel_requested:  # asked for while the turn was starting
                await self._stop_cancelled(envelope)
                return
            await self._rounds(envelope, start)
            metrics.TURNS.labels(TurnStatus.COMPLETED).inc()
            telemetry.set_outcome(trace.get_current_span(), str(TurnStatus.COMPLETED), error=False)
        except asyncio.CancelledError:
            if turn_id not in self.cancel_requested:
                raise  # the worker is stopping: the turn is redelivered and resumes
            await self._stop_cancelled(envelope)
        except (LLMError, RoundFailed) as failure:
            exc, shown = (failure.error, failure.tail) if isinstance(failure, RoundFailed) else (failure, [])
            payload: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.finish_reason is not None:
                payload["finish_reason"] = exc.finish_reason
            error = Draft(EventType.ERROR, payload, f"error:{turn_id}")
            await self._end(envelope, TurnStatus.FAILED, [*shown, error])
            metrics.TURNS.labels(TurnStatus.FAILED).inc()
            telemetry.set_outcome(trace.get_current_span(), str(TurnStatus.FAILED), error=True)
        finally:
            metrics.TURNS_INFLIGHT.dec()
            metrics.TURN_SECONDS.observe(time.monotonic() - started)
            if (active := self.active.get(envelope.conversation_id)) and active.turn_id == turn_id:
                del self.active[envelope.conversation_id]
            self.tools.forget(turn_id)

    async def _stop_cancelled(self, envelope: Envelope) -> None:
        """End a cancelled turn, unless it had just finished."""
        if await self.store.status(envelope.turn_id) not in TERMINAL:
            await self._end(envelope, TurnStatus.CANCELLED, [_cancelled(envelope.turn_id)])
        metrics.TURNS.labels(TurnStatus.CANCELLED).inc()
        telemetry.set_outcome(trace.get_current_span(), str(TurnStatus.CANCELLED), error=False)

    async def _rounds(self, envelope: Envelope, start: TurnStart) -> None:
        """LLM rounds until an answer without tool calls; a round stored before a restart
        is not asked again."""
        turn_id = envelope.turn_id
        transcript = start.transcript
        max_rounds = self.settings.worker.max_tool_rounds
        for round_ in range(max_rounds + 1):
            key = f"assistant:{turn_id}:{round_}"
            stored = transcript.get(key)
            if stored is not None:  # this round finished before a restart: resume after it
                calls = stored.get("tool_calls") or []
                if not calls:
                    await self._complete(envelope, key, stored.get("content") or "", [])
                    return
            else:
                deltas = DeltaStream(
                    self.events,
                    envelope,
                    round_,
                    already_sent=start.sent_text.get(round_, ""),
                    window_s=self.settings.worker.delta_window_ms / 1000,
                )
                try:
                    completion = await self._llm_round(
                        envelope, transcript, round_, deltas, offer_tools=round_ < max_rounds
                    )
                    deltas.check_answer(completion.text)
                except LLMError as exc:  # what arrived before the failure is shown, then the error
                    raise RoundFailed(exc, await deltas.close()) from None
                except BaseException:
                    deltas.abandon()
                    raise
                tail = await deltas.close()
                calls = completion.tool_calls
                if not calls:
                    await self._complete(envelope, key, completion.text, tail, completion.finish_reason)
                    return
                body = {"role": "assistant", "content": completion.text or None, "tool_calls": calls}
                await self.events.emit_batch(
                    envelope,
                    [*tail, *(tool_call_event(turn_id, call) for call in calls)],
                    messages=[(key, body)],
                )
                transcript.add(key, body)
            await self.tools.run(envelope, transcript, calls, again=start.prior == TurnStatus.RUNNING)

    async def _complete(
        self, envelope: Envelope, key: str, text: str, tail: list[Draft], finish_reason: str | None = None
    ) -> None:
        """The final answer: its last text, the transcript row, ``message.completed`` (with
        the provider's finish reason) and the turn's end, stored together."""
        completed = Draft(
            EventType.COMPLETED,
            {"content": text, "finish_reason": finish_reason or "stop"},
            f"completed:{envelope.turn_id}",
        )
        body = {"role": "assistant", "content": text}
        await self._end(envelope, TurnStatus.COMPLETED, [*tail, completed], messages=[(key, body)])

    async def _llm_round(
        self,
        envelope: Envelope,
        transcript: Transcript,
        round_: int,
        deltas: DeltaStream,
        *,
        offer_tools: bool,
    ) -> Completion:
        try:
            config = await self.llm.config_for(envelope.user_id)
        except (PolicyDenied, CredentialError) as exc:
            raise classify(exc) from None
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *transcript.for_model()]
        with metrics.LLM_SECONDS.time():
            try:
                return await self.llm.stream_chat(
                    config,
                    messages,
                    tools=self.tool_specs if offer_tools else None,
                    on_text=deltas.add,
                    fallback_call_id=lambda index: f"call_{envelope.turn_id}_{round_}_{index}",
                )
            except LLMError as error:
                log.warning("LLM call failed for turn %s: %s", envelope.turn_id, error.code)
                raise

    # --- cancel ----------------------------------------------------------------------
    async def _cancel(self, envelope: Envelope) -> None:
        """Cancel one turn of the conversation, or every open one (``*``). A turn waiting
        for its slot, or starting, is marked and ends as cancelled once it gets there; a
        running one is stopped now. A turn not open here has ended: nothing to do."""
        open_here = self.open.get(envelope.conversation_id, set())
        targets = set(open_here) if envelope.turn_id == "*" else {envelope.turn_id} & open_here
        self.cancel_requested |= targets
        active = self.active.get(envelope.conversation_id)
        if active is not None and active.turn_id in targets:
            await self.tools.cancel(envelope, active.turn_id)
            active.task.cancel()

    async def _end(
        self,
        envelope: Envelope,
        status: TurnStatus,
        drafts: list[Draft],
        *,
        messages: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        """The turn's last events and its status, stored together; the first time a turn
        ends, its slot in the gateway's budget of open turns is released."""
        step = await self.events.emit_batch(envelope, drafts, messages=messages or [], end=str(status))
        if step.ended:
            await open_turns.end(self.redis)


def _cancelled(turn_id: str) -> Draft:
    return Draft(EventType.CANCELLED, {"reason": "cancelled by user"}, f"cancelled:{turn_id}")
