"""Reading one call's answer from the LLM provider: the SSE events of a stream (or a whole
``chat.completion``) into a :class:`~services.conversation_worker.stream.StreamAccumulator`,
the text passed on as it arrives, the time to first token, and whether the answer is
complete. What a stream may look like is :mod:`services.conversation_worker.stream`'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from services.common import metrics
from services.common.sse import SseParser
from services.conversation_worker.llm_errors import LLMError
from services.conversation_worker.stream import (
    BadResponse,
    Completion,
    LineReader,
    StreamAccumulator,
    parse_data,
)

# A non-stream answer (a whole chat.completion) larger than this is refused.
MAX_BODY_BYTES = 8 << 20
# How a provider may say an answer ended, and what a0 makes of it: a cut tool call or
# a filtered answer is not passed on as complete.
LENGTH, CONTENT_FILTER = "length", "content_filter"

# Text as it arrives, with its character offset in the answer.
TextSink = Callable[[str, int], Awaitable[None]]


class FirstToken:
    """Time to first token of one call (its first text, not its first chunk): a span
    event and a histogram, once."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.started = time.monotonic()
        self.pending = True

    def seen(self) -> None:
        self.pending = False
        seconds = time.monotonic() - self.started
        metrics.TTFT_SECONDS.observe(seconds)
        if self.span.is_recording():
            self.span.add_event("first token", {"a0.ttft_ms": round(seconds * 1000, 1)})


class SinkFailed(Exception):
    """``on_text`` failed (the worker's event log): raised as it was, never taken for
    a provider's fault."""

    def __init__(self, original: BaseException) -> None:
        self.original = original


class Call:
    """One attempt of a call: what it received, and its time limits (the time to first
    content until content arrives, then the round's total)."""

    def __init__(self, on_text: TextSink, first_token: FirstToken, round_deadline: float) -> None:
        self.on_text = on_text
        self.first_token = first_token
        self.round_deadline = round_deadline
        self.accumulator = StreamAccumulator()
        self.limit: asyncio.Timeout | None = None
        self.done = False  # [DONE], or a whole completion

    @property
    def received(self) -> bool:
        return self.accumulator.received

    async def take(self, accumulator: StreamAccumulator, chunk: Any) -> None:
        had_content = accumulator.received
        position = accumulator.length
        text = accumulator.feed(chunk)
        if accumulator.received and not had_content and self.limit is not None:
            self.limit.reschedule(self.round_deadline)  # comments never get here
        if text:
            if self.first_token.pending:
                self.first_token.seen()
            try:
                await self.on_text(text, position)
            except Exception as exc:
                raise SinkFailed(exc) from exc


async def read_events(response: aiohttp.ClientResponse, call: Call) -> None:
    """The events of a stream, into ``call``; a last event without its blank line counts."""
    lines = LineReader()
    parser = SseParser()
    accumulator = call.accumulator
    async for data in response.content.iter_any():
        for line in lines.feed(data):
            event = parser.feed(line)
            if event is None or not event["data"]:
                continue
            if event["data"] == "[DONE]":
                call.done = True
                return
            for chunk in parse_data(event["data"]):
                await call.take(accumulator, chunk)
    last = lines.close()
    for line in ([last] if last is not None else []) + [""]:
        event = parser.feed(line)
        if event is not None and event["data"]:
            if event["data"] == "[DONE]":
                call.done = True
                return
            for chunk in parse_data(event["data"]):
                await call.take(accumulator, chunk)


async def whole_body(response: aiohttp.ClientResponse) -> Any:
    """A non-stream answer's JSON, bounded in size."""
    body = bytearray()
    async for data in response.content.iter_any():
        body += data
        if len(body) > MAX_BODY_BYTES:
            raise BadResponse(f"an answer larger than {MAX_BODY_BYTES} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadResponse("an answer that is not JSON") from None


def finished(call: Call, completion: Completion) -> Completion:
    """The completion, if the provider said it is one: an answer cut without a word,
    cut in a tool call, or withheld by a filter ends the round with its own error."""
    finish = completion.finish_reason
    if finish is None and not call.done:
        raise LLMError(
            "llm_incomplete",
            "The LLM provider's answer stopped before its end. Try again.",
            retriable=not call.received,
        )
    if finish == CONTENT_FILTER:
        raise LLMError(
            "llm_content_filter",
            "The LLM provider's content filter stopped this answer.",
            finish_reason=finish,
        )
    if finish == LENGTH and completion.tool_calls:
        raise LLMError(
            "llm_truncated",
            "The LLM provider cut the answer off at its length limit in the middle of a tool call.",
            finish_reason=finish,
        )
    return completion


def timeout_error(call: Call, first_content_s: float, round_s: float) -> LLMError:
    if call.received:
        return LLMError("llm_timeout", f"The LLM provider did not finish its answer within {round_s:g} s.")
    return LLMError("llm_timeout", f"The LLM provider sent no answer within {first_content_s:g} s.")
