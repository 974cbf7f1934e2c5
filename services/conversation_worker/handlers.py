"""What a record on ``conversation.inbound`` does: run a turn, or cancel one.

A turn: accept → (LLM round → tool calls → tool results)* → final answer. Progress is
durable: the transcript (``messages``), every client event (``events``) and tool
results are in PostgreSQL, so a turn redelivered after a crash resumes from the last
finished step and re-emits nothing a client has already seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from redis.asyncio import Redis

from services.common import metrics
from services.common.envelope import Envelope, EventType, tool_call_key
from services.common.errors import CredentialError, PolicyDenied
from services.common.kafka import TOOL_REQUESTS, PoisonRecord, publish
from services.common.settings import Settings
from services.conversation_worker.deltas import DeltaStream
from services.conversation_worker.events import Draft, EventLog
from services.conversation_worker.llm import Completion, LLMClients, LLMError, classify
from services.conversation_worker.results import ToolResults
from services.conversation_worker.sequencer import Sequencer
from services.conversation_worker.turns import TERMINAL, Transcript, TurnStart, TurnStatus, TurnStore

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a helpful assistant in the a0 agent stack. Use the tools offered when they help, "
    "and answer concisely."
)
OPEN_TURNS_KEY = "a0:turns:open"


@dataclass
class ActiveTurn:
    turn_id: str
    task: asyncio.Task[Any]


class TurnRunner:
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
        self.producer = producer
        self.redis = redis
        self.events = events
        self.results = results
        self.llm = llm
        self.tool_specs = tool_specs
        self.sequencer = Sequencer()
        self.active: dict[str, ActiveTurn] = {}
        self.cancel_requested: set[str] = set()
        self.open_calls: dict[str, set[str]] = {}

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
        try:
            await self.events.emit(
                envelope,
                EventType.ACCEPTED,
                {"message_id": message_id, "content": content},
                key=f"accepted:{envelope.turn_id}",
            )
            await ticket.wait()
            await self._run_turn(envelope, message_id, content)
        finally:
            ticket.release()
            if self.sequencer.idle(envelope.conversation_id):
                self.events.forget(envelope.conversation_id)

    # --- a turn --------------------------------------------------------------------
    async def _run_turn(self, envelope: Envelope, message_id: str, content: str) -> None:
        turn_id = envelope.turn_id
        if turn_id in self.cancel_requested:  # cancelled while it waited for its slot
            if await self.store.status(turn_id) in TERMINAL:
                await self.events.republish_turn(envelope.conversation_id, turn_id)
            else:
                await self._end(envelope, TurnStatus.CANCELLED, [_cancelled(turn_id)])
            return
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
            await self._rounds(envelope, start)
            metrics.TURNS.labels("completed").inc()
        except asyncio.CancelledError:
            if turn_id not in self.cancel_requested:
                raise  # the worker is stopping: the turn is redelivered and resumes
            if await self.store.status(turn_id) not in TERMINAL:  # not if it had just finished
                await self._end(envelope, TurnStatus.CANCELLED, [_cancelled(turn_id)])
            metrics.TURNS.labels("cancelled").inc()
        except LLMError as exc:
            error = Draft(EventType.ERROR, {"code": exc.code, "message": exc.message}, f"error:{turn_id}")
            await self._end(envelope, TurnStatus.FAILED, [error])
            metrics.TURNS.labels("failed").inc()
        finally:
            metrics.TURNS_INFLIGHT.dec()
            metrics.TURN_SECONDS.observe(time.monotonic() - started)
            if (active := self.active.get(envelope.conversation_id)) and active.turn_id == turn_id:
                del self.active[envelope.conversation_id]
            self.cancel_requested.discard(turn_id)
            for call_id in self.open_calls.pop(turn_id, set()):
                self.results.forget(tool_call_key(turn_id, call_id))

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
                    already_sent=start.sent_text.get(round_, 0),
                    window_s=self.settings.worker.delta_window_ms / 1000,
                )
                try:
                    completion = await self._llm_round(
                        envelope, transcript, round_, deltas, offer_tools=round_ < max_rounds
                    )
                except BaseException:
                    deltas.abandon()
                    raise
                tail = await deltas.close()
                calls = completion.tool_calls
                if not calls:
                    await self._complete(envelope, key, completion.text, tail)
                    return
                body = {"role": "assistant", "content": completion.text or None, "tool_calls": calls}
                await self.events.emit_batch(
                    envelope,
                    [*tail, *(_tool_call_event(turn_id, call) for call in calls)],
                    messages=[(key, body)],
                )
                transcript.add(key, body)
            await self._tool_round(envelope, transcript, calls)

    async def _complete(self, envelope: Envelope, key: str, text: str, tail: list[Draft]) -> None:
        """The final answer: its last text, the transcript row, ``message.completed`` and
        the turn's end, stored together."""
        completed = Draft(
            EventType.COMPLETED, {"content": text, "finish_reason": "stop"}, f"completed:{envelope.turn_id}"
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

    async def _tool_round(
        self, envelope: Envelope, transcript: Transcript, calls: list[dict[str, Any]]
    ) -> None:
        turn_id = envelope.turn_id
        waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        open_calls = self.open_calls.setdefault(turn_id, set())
        requests = []
        for call in calls:
            call_id, name = call["id"], call["function"]["name"]
            key = tool_call_key(turn_id, call_id)
            if transcript.get(f"tool:{key}") is not None:
                continue  # answered before a restart
            waiting[call_id] = self.results.expect(key)
            open_calls.add(call_id)
            request = Envelope(
                id=f"req-{key}",
                type=EventType.TOOL_REQUEST,
                conversation_id=envelope.conversation_id,
                turn_id=turn_id,
                user_id=envelope.user_id,
                payload={"call_id": call_id, "name": name, "arguments": call["function"]["arguments"]},
            )
            requests.append(await publish(self.producer, TOOL_REQUESTS, request))
        await asyncio.gather(*requests)
        timeout = self.settings.tools.wall_seconds + 30
        for call in calls:
            call_id, name = call["id"], call["function"]["name"]
            if call_id not in waiting:
                continue
            key = tool_call_key(turn_id, call_id)
            try:
                result = await asyncio.wait_for(asyncio.shield(waiting[call_id]), timeout)
            except TimeoutError:
                result = {
                    "call_id": call_id,
                    "name": name,
                    "error": {"code": "timeout", "message": f"no result within {timeout:.0f}s"},
                }
            open_calls.discard(call_id)
            self.results.forget(key)
            content = result["output"] if "output" in result else json.dumps({"error": result.get("error")})
            body = {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}
            await self.events.emit_batch(
                envelope,
                [Draft(EventType.TOOL_RESULT, result, f"toolresult:{key}")],
                messages=[(f"tool:{key}", body)],
            )
            transcript.add(f"tool:{key}", body)

    # --- cancel ----------------------------------------------------------------------
    async def _cancel(self, envelope: Envelope) -> None:
        target = envelope.turn_id
        active = self.active.get(envelope.conversation_id)
        if active is not None and target in ("*", active.turn_id):
            self.cancel_requested.add(active.turn_id)
            for call_id in self.open_calls.get(active.turn_id, set()):
                cancel = Envelope(
                    id=f"cancel-{tool_call_key(active.turn_id, call_id)}",
                    type=EventType.TOOL_CANCEL,
                    conversation_id=envelope.conversation_id,
                    turn_id=active.turn_id,
                    user_id=envelope.user_id,
                    payload={"call_id": call_id},
                )
                await (await publish(self.producer, TOOL_REQUESTS, cancel))
            active.task.cancel()
        elif target != "*":
            self.cancel_requested.add(target)  # still queued: it is cancelled when its slot comes

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
            value = await self.redis.decr(OPEN_TURNS_KEY)
            if value < 0:
                await self.redis.set(OPEN_TURNS_KEY, 0)


def _cancelled(turn_id: str) -> Draft:
    return Draft(EventType.CANCELLED, {"reason": "cancelled by user"}, f"cancelled:{turn_id}")


def _tool_call_event(turn_id: str, call: dict[str, Any]) -> Draft:
    call_id = call["id"]
    return Draft(
        EventType.TOOL_CALL,
        {"call_id": call_id, "name": call["function"]["name"], "arguments": call["function"]["arguments"]},
        f"toolcall:{tool_call_key(turn_id, call_id)}",
    )
