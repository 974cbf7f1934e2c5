"""The tool calls of one answer round: published to ``tool.requests``, their results
awaited on ``tool.results`` and stored with the ``tool.result`` events the client sees.
A call answered before a restart (its transcript row exists) is not asked again; a
call with no result in time is answered with a ``timeout`` error, so the turn goes on.
Cancelling a turn cancels its open calls at the executor.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from services.common.envelope import Envelope, EventType, roles_of, tool_call_key
from services.common.kafka import publish
from services.common.tools import ToolResult
from services.common.topics import TOOL_REQUESTS
from services.conversation_worker.events import Draft, EventLog
from services.conversation_worker.results import ToolResults
from services.conversation_worker.turns import Transcript


class ToolRounds:
    def __init__(
        self, *, producer: AIOKafkaProducer, events: EventLog, results: ToolResults, timeout_s: float
    ) -> None:
        self.producer = producer
        self.events = events
        self.results = results
        self.timeout_s = timeout_s
        self._open: dict[str, set[str]] = {}  # turn id → ids of its calls not answered yet

    async def run(
        self, envelope: Envelope, transcript: Transcript, calls: list[dict[str, Any]], *, again: bool
    ) -> None:
        """Ask for every call not answered yet, then store each result in call order.
        ``again``: the turn ran before (a restart, a retry), so its calls may have been
        asked and answered already; the executor then looks for a stored result first."""
        turn_id = envelope.turn_id
        waiting: dict[str, asyncio.Future[ToolResult]] = {}
        open_calls = self._open.setdefault(turn_id, set())
        requests = []
        for call in calls:
            call_id, name = call["id"], call["function"]["name"]
            key = tool_call_key(turn_id, call_id)
            if transcript.get(f"tool:{key}") is not None:
                continue  # answered before a restart
            waiting[call_id] = self.results.expect(key)
            open_calls.add(call_id)
            arguments = call["function"]["arguments"]
            # The roles come from the turn's message.user (the gateway's, from the token),
            # never from the model's call: the executor asks the policy with them.
            payload: dict[str, Any] = {
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
                "roles": roles_of(envelope),
            }
            if again:
                payload["asked_before"] = True
            request = _to_executor(envelope, EventType.TOOL_REQUEST, f"req-{key}", turn_id, payload)
            requests.append(await publish(self.producer, TOOL_REQUESTS, request))
        await asyncio.gather(*requests)
        for call in calls:
            call_id, name = call["id"], call["function"]["name"]
            if call_id not in waiting:
                continue
            key = tool_call_key(turn_id, call_id)
            try:
                result = await self._result(envelope, key, waiting[call_id])
            except TimeoutError:
                result = ToolResult.failed(
                    call_id, name, "timeout", f"no result within {self.timeout_s:.0f}s"
                )
            open_calls.discard(call_id)
            self.results.forget(key)
            body = {"role": "tool", "tool_call_id": call_id, "name": name, "content": result.for_model()}
            await self.events.emit_batch(
                envelope,
                [Draft(EventType.TOOL_RESULT, result.payload(), f"toolresult:{key}")],
                messages=[(f"tool:{key}", body)],
            )
            transcript.add(f"tool:{key}", body)

    async def _result(self, envelope: Envelope, key: str, future: asyncio.Future[ToolResult]) -> ToolResult:
        """The call's result, within the timeout; meanwhile each progress record the
        executor sends becomes a ``tool.progress`` event of the turn. The executor sends
        a call's progress before its result, on the same partition: every update is in
        the queue by the time the result is, and is stored before it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        progress = self.results.progress_of(key)
        while not future.done():
            getter: asyncio.Future[Any] = asyncio.ensure_future(progress.get())
            try:
                await asyncio.wait(
                    {future, getter}, timeout=deadline - loop.time(), return_when="FIRST_COMPLETED"
                )
            finally:
                getter.cancel()
            if getter.done() and not getter.cancelled():
                await self._progress(envelope, key, getter.result())
            elif not future.done():
                raise TimeoutError
        while not progress.empty():
            await self._progress(envelope, key, progress.get_nowait())
        return future.result()

    async def _progress(self, envelope: Envelope, key: str, update: dict[str, Any]) -> None:
        step = f"{update.get('progress')}/{update.get('total')}"
        await self.events.emit_batch(
            envelope, [Draft(EventType.TOOL_PROGRESS, update, f"toolprogress:{key}:{step}")]
        )

    async def cancel(self, source: Envelope, turn_id: str) -> None:
        """Ask the executor to stop the turn's calls still running."""
        for call_id in self._open.get(turn_id, set()):
            key = tool_call_key(turn_id, call_id)
            cancel = _to_executor(
                source, EventType.TOOL_CANCEL, f"cancel-{key}", turn_id, {"call_id": call_id}
            )
            await (await publish(self.producer, TOOL_REQUESTS, cancel))

    def forget(self, turn_id: str) -> None:
        """The turn ended: stop waiting for any of its results."""
        for call_id in self._open.pop(turn_id, set()):
            self.results.forget(tool_call_key(turn_id, call_id))


def _to_executor(
    source: Envelope, type_: EventType, id_: str, turn_id: str, payload: dict[str, Any]
) -> Envelope:
    """A record for ``tool.requests``; its id is fixed by the call, so a re-run turn's
    request is the same record again."""
    return Envelope(
        id=id_,
        type=type_,
        conversation_id=source.conversation_id,
        turn_id=turn_id,
        user_id=source.user_id,
        payload=payload,
    )


def tool_call_event(turn_id: str, call: dict[str, Any]) -> Draft:
    """The ``tool.call`` event of one call the model asked for."""
    call_id = call["id"]
    return Draft(
        EventType.TOOL_CALL,
        {"call_id": call_id, "name": call["function"]["name"], "arguments": call["function"]["arguments"]},
        f"toolcall:{tool_call_key(turn_id, call_id)}",
    )
