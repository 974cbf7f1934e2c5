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
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from services.common import metrics
from services.common.envelope import Envelope, EventType, tool_call_key
from services.common.kafka import TOOL_REQUESTS, PoisonRecord, publish
from services.common.settings import Settings
from services.conversation_worker.events import EventLog
from services.conversation_worker.llm import LLMClients, LLMError, classify
from services.conversation_worker.results import ToolResults
from services.conversation_worker.sequencer import Sequencer

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a helpful assistant in the a0 agent stack. Use the tools offered when they help, "
    "and answer concisely."
)
OPEN_TURNS_KEY = "a0:turns:open"
TERMINAL = ("completed", "cancelled", "failed")
DELTA_FLUSH_S = 0.03


@dataclass
class ActiveTurn:
    turn_id: str
    task: asyncio.Task[Any]


class TurnRunner:
    def __init__(
        self,
        settings: Settings,
        *,
        pool: AsyncConnectionPool,
        producer: AIOKafkaProducer,
        redis: Redis,
        events: EventLog,
        results: ToolResults,
        llm: LLMClients,
        tool_specs: list[dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.pool = pool
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
        status = await self._turn_status(envelope)
        if status in TERMINAL:
            await self.events.republish_turn(envelope.conversation_id, turn_id)
            return
        if turn_id in self.cancel_requested:
            await self._finish_cancelled(envelope)
            return
        await self._set_status(envelope, "running")
        await self._store_message(envelope, f"user:{message_id}", {"role": "user", "content": content})
        task = asyncio.current_task()
        assert task is not None
        self.active[envelope.conversation_id] = ActiveTurn(turn_id, task)
        started = time.monotonic()
        metrics.TURNS_INFLIGHT.inc()
        try:
            await self._rounds(envelope)
            metrics.TURNS.labels("completed").inc()
        except asyncio.CancelledError:
            if turn_id not in self.cancel_requested:
                raise  # the worker is stopping: the turn is redelivered and resumes
            if await self._turn_status(envelope) not in TERMINAL:  # not if it had just finished
                await self._finish_cancelled(envelope)
            metrics.TURNS.labels("cancelled").inc()
        except LLMError as exc:
            await self.events.emit(
                envelope, EventType.ERROR, {"code": exc.code, "message": exc.message}, key=f"error:{turn_id}"
            )
            await self._finish(envelope, "failed")
            metrics.TURNS.labels("failed").inc()
        finally:
            metrics.TURNS_INFLIGHT.dec()
            metrics.TURN_SECONDS.observe(time.monotonic() - started)
            if (active := self.active.get(envelope.conversation_id)) and active.turn_id == turn_id:
                del self.active[envelope.conversation_id]
            self.cancel_requested.discard(turn_id)
            for call_id in self.open_calls.pop(turn_id, set()):
                self.results.forget(tool_call_key(turn_id, call_id))

    async def _rounds(self, envelope: Envelope) -> None:
        turn_id = envelope.turn_id
        max_rounds = self.settings.worker.max_tool_rounds
        for round_ in range(max_rounds + 1):
            stored = await self._stored_message(envelope, f"assistant:{turn_id}:{round_}")
            if stored is not None:  # this round finished before a restart: resume after it
                calls = stored.get("tool_calls") or []
            else:
                text, calls = await self._llm_round(envelope, round_, offer_tools=round_ < max_rounds)
                if not calls:
                    await self._store_message(
                        envelope, f"assistant:{turn_id}:{round_}", {"role": "assistant", "content": text}
                    )
                    await self.events.emit(
                        envelope,
                        EventType.COMPLETED,
                        {"content": text, "finish_reason": "stop"},
                        key=f"completed:{turn_id}",
                    )
                    await self._finish(envelope, "completed")
                    return
                await self._store_message(
                    envelope,
                    f"assistant:{turn_id}:{round_}",
                    {"role": "assistant", "content": text or None, "tool_calls": calls},
                )
            await self._tool_round(envelope, calls)

    async def _llm_round(
        self, envelope: Envelope, round_: int, *, offer_tools: bool
    ) -> tuple[str, list[dict[str, Any]]]:
        for attempt in range(4):
            try:
                return await self._stream_llm(envelope, round_, offer_tools=offer_tools)
            except LLMError:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = classify(exc)
                log.warning(
                    "LLM call failed for turn %s (attempt %d): %s", envelope.turn_id, attempt + 1, error.code
                )
                if not error.retryable or attempt == 3:
                    raise error from None
                await asyncio.sleep(0.5 * 2**attempt)
        raise LLMError("llm_unavailable", "The LLM provider could not be reached.")

    async def _stream_llm(
        self, envelope: Envelope, round_: int, *, offer_tools: bool
    ) -> tuple[str, list[dict[str, Any]]]:
        config = await self.llm.config_for(envelope.user_id)
        client = self.llm.client(config, envelope.conversation_id)
        already_sent = await self.events.emitted_text_length(
            envelope.conversation_id, envelope.turn_id, round_
        )
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *await self._transcript(envelope)]
        kwargs: dict[str, Any] = {"model": config.model, "messages": messages, "stream": True}
        if offer_tools and self.tool_specs:
            kwargs["tools"] = self.tool_specs
        pieces: list[str] = []
        position = 0  # characters of this round's answer received so far
        pending = ""  # received, not yet sent to clients
        pending_at = 0
        last_flush = 0.0
        calls: dict[int, dict[str, Any]] = {}

        async def flush() -> None:
            nonlocal pending, last_flush
            if pending:
                await self.events.emit(
                    envelope,
                    EventType.DELTA,
                    {"text": pending},
                    key=f"delta:{envelope.turn_id}:{round_}:{pending_at}",
                )
                pending = ""
            last_flush = time.monotonic()

        with metrics.LLM_SECONDS.time():
            stream = await client.chat.completions.create(**kwargs)
            async with stream:
                async for chunk in stream:
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta
                    if delta.content:
                        text = delta.content
                        pieces.append(text)
                        start, position = position, position + len(text)
                        if position > already_sent:  # skip what a previous attempt already sent
                            fresh = text[max(0, already_sent - start) :]
                            if not pending:
                                pending_at = max(start, already_sent)
                            pending += fresh
                            if time.monotonic() - last_flush >= DELTA_FLUSH_S:
                                await flush()
                    for call in delta.tool_calls or []:
                        slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                        if call.id:
                            slot["id"] = call.id
                        if call.function and call.function.name:
                            slot["name"] += call.function.name
                        if call.function and call.function.arguments:
                            slot["arguments"] += call.function.arguments
        await flush()
        tool_calls = [
            {
                "id": slot["id"] or f"call_{envelope.turn_id}_{round_}_{index}",
                "type": "function",
                "function": {"name": slot["name"], "arguments": slot["arguments"] or "{}"},
            }
            for index, slot in sorted(calls.items())
        ]
        return "".join(pieces), tool_calls

    async def _tool_round(self, envelope: Envelope, calls: list[dict[str, Any]]) -> None:
        turn_id = envelope.turn_id
        waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        open_calls = self.open_calls.setdefault(turn_id, set())
        for call in calls:
            call_id, name = call["id"], call["function"]["name"]
            arguments = call["function"]["arguments"]
            key = tool_call_key(turn_id, call_id)
            if await self._stored_message(envelope, f"tool:{key}") is not None:
                continue  # answered before a restart
            await self.events.emit(
                envelope,
                EventType.TOOL_CALL,
                {"call_id": call_id, "name": name, "arguments": arguments},
                key=f"toolcall:{key}",
            )
            waiting[call_id] = self.results.expect(key)
            open_calls.add(call_id)
            request = Envelope(
                id=f"req-{key}",
                type=EventType.TOOL_REQUEST,
                conversation_id=envelope.conversation_id,
                turn_id=turn_id,
                user_id=envelope.user_id,
                payload={"call_id": call_id, "name": name, "arguments": arguments},
            )
            await (await publish(self.producer, TOOL_REQUESTS, request))
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
            await self.events.emit(envelope, EventType.TOOL_RESULT, result, key=f"toolresult:{key}")
            content = result["output"] if "output" in result else json.dumps({"error": result.get("error")})
            await self._store_message(
                envelope,
                f"tool:{key}",
                {"role": "tool", "tool_call_id": call_id, "name": name, "content": content},
            )

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

    async def _finish_cancelled(self, envelope: Envelope) -> None:
        await self.events.emit(
            envelope,
            EventType.CANCELLED,
            {"reason": "cancelled by user"},
            key=f"cancelled:{envelope.turn_id}",
        )
        await self._finish(envelope, "cancelled")

    # --- persistence -------------------------------------------------------------------
    async def _turn_status(self, envelope: Envelope) -> str | None:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT status FROM turns WHERE turn_id = %s", (envelope.turn_id,))
            ).fetchone()
        return row[0] if row else None

    async def _set_status(self, envelope: Envelope, status: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO turns (turn_id, conversation_id, status) VALUES (%s, %s, %s) "
                "ON CONFLICT (turn_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()",
                (envelope.turn_id, envelope.conversation_id, status),
            )

    async def _finish(self, envelope: Envelope, status: str) -> None:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE turns SET status = %s, updated_at = now() "
                    "WHERE turn_id = %s AND status NOT IN ('completed', 'cancelled', 'failed') RETURNING 1",
                    (status, envelope.turn_id),
                )
            ).fetchone()
        if row is not None:  # first time this turn ends: release its slot in the gateway's budget
            value = await self.redis.decr(OPEN_TURNS_KEY)
            if value < 0:
                await self.redis.set(OPEN_TURNS_KEY, 0)

    async def _store_message(self, envelope: Envelope, key: str, body: dict[str, Any]) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO messages (conversation_id, message_key, turn_id, role, body) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (envelope.conversation_id, key, envelope.turn_id, body["role"], Jsonb(body)),
            )

    async def _stored_message(self, envelope: Envelope, key: str) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT body FROM messages WHERE conversation_id = %s AND message_key = %s",
                    (envelope.conversation_id, key),
                )
            ).fetchone()
        return row[0] if row else None

    async def _transcript(self, envelope: Envelope) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT body FROM messages WHERE conversation_id = %s ORDER BY position",
                    (envelope.conversation_id,),
                )
            ).fetchall()
        return [row[0] for row in rows]
