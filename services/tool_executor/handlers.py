"""What a record on ``tool.requests`` does: ask OPA, run the tool, publish ``tool.results``.

Idempotent by call id: a result is stored in PostgreSQL before it is published, and a
redelivered request is answered from there, never run twice. Only a request that can
have been answered before is looked up: the worker marks the calls of a turn it runs
again (``asked_before``), and the consumer loop knows the records an earlier owner of
their partition, a retry or a dead-letter replay may have handled. ``tool.cancel`` kills a
running call (its process group, for the code runner; for an MCP server's tool, MCP's
``notifications/cancelled`` to the server).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common import metrics, telemetry
from services.common.envelope import Envelope, EventType, roles_of, tool_call_key
from services.common.errors import PoisonRecord, is_transient
from services.common.kafka import publish
from services.common.policy import PolicyClient
from services.common.retry import Backoff
from services.common.tools import ToolResult
from services.common.topics import TOOL_RESULTS
from services.tool_executor.mcp_client import McpTool
from services.tool_executor.sandbox_limits import SandboxLimits
from services.tool_executor.tools import Tool, ToolContext, ToolError

log = logging.getLogger(__name__)

# PostgreSQL's text and jsonb cannot hold NUL (\u0000), nor UTF-8 a lone surrogate: a
# result with either could not be stored, and the call would be dead-lettered.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
PROGRESS_EVERY_S = 0.5
MAX_PROGRESS_MESSAGE = 200
# A result is stored with retries of its own: it is only ever computed once.
STORE_ATTEMPTS = 5
STORE_RETRY_BASE_S = 0.2
STORE_RETRY_CAP_S = 2.0


def storable(result: ToolResult) -> ToolResult:
    """``result`` with NUL and lone surrogates in its output and error message replaced
    by U+FFFD, so that it is stored and reaches the turn like any other output."""
    update: dict[str, object] = {}
    if result.output is not None and _UNSTORABLE.search(result.output):
        update["output"] = _UNSTORABLE.sub(REPLACEMENT, result.output)
    if result.error is not None and _UNSTORABLE.search(result.error.message):
        message = _UNSTORABLE.sub(REPLACEMENT, result.error.message)
        update["error"] = result.error.model_copy(update={"message": message})
    return result.model_copy(update=update) if update else result


class ProgressReporter:
    """An MCP server's progress notifications of one call, as ``tool.progress`` records on
    ``tool.results`` (the worker makes them client events): at most one every
    :data:`PROGRESS_EVERY_S`, the last one always, message text size-limited."""

    def __init__(
        self, producer: AIOKafkaProducer, request: Envelope, key: str, call_id: str, name: str
    ) -> None:
        self.producer = producer
        self.request = request
        self.key = key
        self.call_id = call_id
        self.name = name
        self.sent = 0
        self.last_at = 0.0

    async def report(self, progress: float, total: float | None, message: str | None) -> None:
        now = time.monotonic()
        final = total is not None and progress >= total
        if not final and now - self.last_at < PROGRESS_EVERY_S:
            return
        self.last_at = now
        self.sent += 1
        payload: dict[str, Any] = {"call_id": self.call_id, "name": self.name, "progress": progress}
        if total is not None:
            payload["total"] = total
        if message:
            payload["message"] = message[:MAX_PROGRESS_MESSAGE]
        record = Envelope(
            id=f"progress-{self.key}-{self.sent}",
            type=EventType.TOOL_PROGRESS,
            conversation_id=self.request.conversation_id,
            turn_id=self.request.turn_id,
            user_id=self.request.user_id,
            payload=payload,
        )
        try:
            await publish(self.producer, TOOL_RESULTS, record)  # queued; not awaited: best effort
        except Exception as exc:  # progress is a courtesy: never fail the call for it
            log.warning("could not publish progress of %s: %s", self.key, exc)


class ToolExecutor:
    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        producer: AIOKafkaProducer,
        policy: PolicyClient,
        tools: dict[str, Tool],
        limits: SandboxLimits,
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.policy = policy
        self.tools = tools
        self.limits = limits
        self.running: dict[str, asyncio.Task[str]] = {}
        self.cancelled: set[str] = set()
        # Whether a record may have been handled before (its consumer loop's answer; until
        # one is set, every record may have been).
        self.seen_before: Callable[[ConsumerRecord[bytes, bytes]], bool] = lambda record: True

    async def handle(self, envelope: Envelope, record: ConsumerRecord[bytes, bytes]) -> None:
        if envelope.type == EventType.TOOL_CANCEL:
            self._cancel(tool_call_key(envelope.turn_id, str(envelope.payload.get("call_id", ""))))
            return
        if envelope.type != EventType.TOOL_REQUEST:
            raise PoisonRecord(f"unexpected event type {envelope.type} on tool.requests")
        call_id = envelope.payload.get("call_id")
        name = envelope.payload.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise PoisonRecord("tool.request needs payload.call_id and payload.name (strings)")
        key = tool_call_key(envelope.turn_id, call_id)
        # Only a call asked before (a turn run again) or a record handled before can have a
        # stored result: a call certainly new is not looked up (a statement per call).
        look_up = envelope.payload.get("asked_before") is True or self.seen_before(record)
        try:
            await self._answer(envelope, call_id, name, key, look_up=look_up)
        except Exception as exc:
            if isinstance(exc, PoisonRecord) or is_transient(exc):
                raise  # dead-lettered as it is, or retried by the consumer loop
            # The record goes to the dead-letter topic; the turn still gets an answer,
            # rather than waiting out its timeout.
            failure = ToolResult.failed(
                call_id, name, "executor_error", "the tool executor could not run this call"
            )
            await (await publish(self.producer, TOOL_RESULTS, self._result(envelope, key, failure)))
            raise

    def _result(self, envelope: Envelope, key: str, result: ToolResult) -> Envelope:
        return Envelope(
            id=f"result-{key}",
            type=EventType.TOOL_RESPONSE,
            conversation_id=envelope.conversation_id,
            turn_id=envelope.turn_id,
            user_id=envelope.user_id,
            payload=result.payload(),
        )

    async def _answer(self, envelope: Envelope, call_id: str, name: str, key: str, *, look_up: bool) -> None:
        stored = await self._stored_result(key) if look_up else None
        if stored is not None:
            # Redelivery (or the worker asking again after a restart): answer from the store.
            await (await publish(self.producer, TOOL_RESULTS, stored))
            return
        attributes = {
            "a0.tool": name,
            "a0.conversation_id": envelope.conversation_id,
            "a0.turn_id": envelope.turn_id,
        }
        tool = self.tools.get(name)
        if isinstance(tool, McpTool):  # which server answered, in the trace
            attributes["a0.mcp.server"] = tool.server.name
        with telemetry.span("tool run", attributes) as span:
            started = time.monotonic()
            payload = storable(await self._execute(envelope, call_id, name, key))
            if payload.error is not None:
                metrics.TOOL_ERRORS.labels(name, payload.error.code).inc()
            metrics.TOOL_SECONDS.labels(name).observe(time.monotonic() - started)
            outcome = payload.error.code if payload.error is not None else "ok"
            telemetry.set_outcome(span, outcome, error=payload.error is not None)
        result = self._result(envelope, key, payload)
        await self._store(key, result)
        await (await publish(self.producer, TOOL_RESULTS, result))

    async def _store(self, key: str, result: Envelope) -> None:
        """Store a call's result, trying again on a transient failure (a connection that a
        PostgreSQL restart broke): giving up makes the record's retry run the tool again."""
        retries = Backoff(base=STORE_RETRY_BASE_S, cap=STORE_RETRY_CAP_S)
        for attempt in range(STORE_ATTEMPTS):
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(
                        "INSERT INTO tool_results (call_key, envelope) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (key, Jsonb(result.model_dump(mode="json"))),
                    )
                return
            except Exception as exc:
                if not is_transient(exc) or attempt == STORE_ATTEMPTS - 1:
                    raise
                log.info("storing the result of %s failed (%s); trying again", key, type(exc).__name__)
                await self.pool.check()  # replaces every connection the failure also broke
                await asyncio.sleep(retries.next())

    async def _stored_result(self, key: str) -> Envelope | None:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT envelope FROM tool_results WHERE call_key = %s", (key,))
            ).fetchone()
        return Envelope.model_validate(row[0]) if row else None

    def _cancel(self, key: str) -> None:
        self.cancelled.add(key)
        task = self.running.get(key)
        if task is not None:
            task.cancel()

    async def _execute(self, envelope: Envelope, call_id: str, name: str, key: str) -> ToolResult:
        def failed(code: str, message: str) -> ToolResult:
            return ToolResult.failed(call_id, name, code, message)

        arguments = envelope.payload.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError:
                return failed("bad_arguments", "tool arguments are not valid JSON")
        if not isinstance(arguments, dict):
            return failed("bad_arguments", "tool arguments must be a JSON object")
        # PolicyUnavailable is transient: the consumer loop asks again after a backoff.
        decision = await self.policy.decide(
            "tool.call",
            envelope.user_id,
            roles=roles_of(envelope),
            tool=name,
            conversation_id=envelope.conversation_id,
        )
        if not decision.allow:
            metrics.TOOL_CALLS.labels(name, "denied").inc()
            return failed("denied", f"policy {decision.reason}")
        tool = self.tools.get(name)
        if tool is None:
            metrics.TOOL_CALLS.labels(name, "unknown").inc()
            return failed("unknown_tool", f"no tool named {name!r}")
        if key in self.cancelled:
            return failed("cancelled", "the turn was cancelled")
        return await self._run(envelope, tool, arguments, call_id, name, key)

    async def _run(
        self, envelope: Envelope, tool: Tool, arguments: dict[str, Any], call_id: str, name: str, key: str
    ) -> ToolResult:
        """Run an allowed call to its end (or its turn's cancel): its result, or its error."""

        def failed(code: str, message: str) -> ToolResult:
            return ToolResult.failed(call_id, name, code, message)

        ctx = ToolContext(
            call_id=call_id,
            user_id=envelope.user_id,
            conversation_id=envelope.conversation_id,
            limits=self.limits,
        )
        images: list[dict[str, str]] = []
        if isinstance(tool, McpTool):
            progress = ProgressReporter(self.producer, envelope, key, call_id, name)
            task = asyncio.create_task(self._call_mcp(tool, arguments, images, progress))
        else:
            task = asyncio.create_task(tool.run(arguments, ctx))
        self.running[key] = task
        started = time.monotonic()
        try:
            output = await task
        except ToolError as exc:
            metrics.TOOL_CALLS.labels(name, "error").inc()
            return failed(exc.code, str(exc))
        except asyncio.CancelledError:
            if key not in self.cancelled:
                raise  # the executor itself is stopping: leave the request for redelivery
            metrics.TOOL_CALLS.labels(name, "cancelled").inc()
            return failed("cancelled", "the turn was cancelled")
        except Exception as exc:  # a broken tool is reported to the turn, not fatal to the executor
            log.exception("tool %s crashed", name)
            metrics.TOOL_CALLS.labels(name, "crashed").inc()
            return failed("tool_crashed", f"{type(exc).__name__}: {exc}")
        finally:
            self.running.pop(key, None)
            self.cancelled.discard(key)
        metrics.TOOL_CALLS.labels(name, "ok").inc()
        result = ToolResult(
            call_id=call_id, name=name, output=output, seconds=round(time.monotonic() - started, 3)
        )
        if images:  # shown by the chat UI; the model reads the output's note of them
            result = result.model_copy(update={"images": images})
        return result

    async def _call_mcp(
        self,
        tool: McpTool,
        arguments: dict[str, Any],
        images: list[dict[str, str]],
        progress: ProgressReporter,
    ) -> str:
        output, shown = await tool.call(arguments, progress.report)
        images.extend(shown)
        return output
