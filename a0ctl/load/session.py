"""One load session: a user with one conversation, driven through the gateway as a
browser would, counting into the run's :class:`Tally`."""

from __future__ import annotations

import asyncio
import json
import random
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from a0ctl.client import CONVERSATIONS, bearer, conversation_path, error_of, read_events
from services.common.envelope import TERMINAL_EVENTS
from services.common.errors import A0Error
from services.common.retry import Backoff
from services.common.settings import Settings

TERMINAL = frozenset(str(t) for t in TERMINAL_EVENTS)
# Called for each answered turn with when it was sent (time.monotonic()) and how long it took.
AnswerHook = Callable[[float, float], None]
# A stream waits for the next event; the gateway pings every 15 s.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=90)
# A session whose connection failed tries again after a pause from 0 up to a quarter of a
# second, doubling to 5 s (services.common.retry: capped exponential, full jitter).
RECONNECT_FIRST_S = 0.25
RECONNECT_CAP_S = 5.0
# The gateway went away under a request: before it connected, while it was sent, or
# between the answer's head and its body (a payload cut short).
GATEWAY_GONE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


class Tally:
    def __init__(self) -> None:
        self.started = time.monotonic()
        # (when the message was sent, after the run began; seconds to its answer, its 202)
        self.response: list[tuple[float, float]] = []
        self.accept: list[tuple[float, float]] = []
        self.sent = self.accepted = self.shed = self.completed = self.failed = self.lost = 0
        self.shed_sign_ins = self.shed_sessions = self.stream_retries = self.reconnects = 0
        self.failed_sessions = 0
        self.duplicates = self.missing = 0
        self.ttft: list[float] = []
        self.delivery: list[float] = []
        self.causes: dict[str, int] = {}

    def fail(self, cause: str, *, session: bool = False) -> None:
        if session:
            self.failed_sessions += 1
        else:
            self.failed += 1
        self.causes[cause] = self.causes.get(cause, 0) + 1


@dataclass(frozen=True)
class Answer:
    """A gateway answer, read whole: its status, ``Retry-After`` and body."""

    status: int
    retry_after: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_cause(what: str, response: Answer) -> str:
    error = error_of(response.body)
    code = error[0] if error else response.body[:80].decode(errors="replace")
    return f"{what} answered {response.status} ({code})"


class Turn:
    """A sent message until its end: when it was posted, its first text, its outcome."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_text: float | None = None
        self.outcome: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()


class Session:
    """One user, one conversation, one SSE stream followed for the whole run."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        settings: Settings,
        index: int,
        tally: Tally,
        on_answer: AnswerHook | None = None,
    ) -> None:
        self.tally = tally
        self.on_answer = on_answer
        self.base_url = settings.gateway_url
        self.headers = bearer(settings, f"load-{index}")
        self.http = http
        self.last_seq = 0
        # By turn id; events may arrive before the POST's answer names the turn.
        self.turns: dict[str, Turn] = {}

    async def post(self, path: str, body: dict[str, Any], until: float) -> Answer:
        """POST, reconnecting after a connection error (with backoff) until ``until``; past
        it, the last error is raised. A request cut while the gateway went away may have
        been accepted: it is sent again, as a user would when the page says it failed."""
        backoff = Backoff(base=RECONNECT_FIRST_S, cap=RECONNECT_CAP_S)
        while True:
            try:
                async with self.http.post(self.base_url + path, json=body, headers=self.headers) as response:
                    return Answer(response.status, response.headers.get("Retry-After"), await response.read())
            except GATEWAY_GONE:
                if time.monotonic() >= until:
                    raise
                self.tally.reconnects += 1
                await asyncio.sleep(min(backoff.next(), max(0.0, until - time.monotonic())))

    def _turn(self, turn_id: str) -> Turn:
        turn = self.turns.get(turn_id)
        if turn is None:
            turn = self.turns[turn_id] = Turn(time.monotonic())
        return turn

    async def follow(self, conversation_id: str, until: float) -> None:
        """Read the stream, resuming with Last-Event-ID when it drops; check every seq.

        A busy gateway (429) or one whose backing store is restarting (503) is asked again
        after its ``Retry-After``; any other refusal ends the session."""
        url = self.base_url + conversation_path(conversation_id, "events")
        backoff = Backoff(base=RECONNECT_FIRST_S, cap=RECONNECT_CAP_S)
        while True:
            try:
                headers = {**self.headers, "Last-Event-ID": str(self.last_seq)}
                async with self.http.get(url, headers=headers, timeout=STREAM_TIMEOUT) as response:
                    backoff.reset()
                    if response.status != 200:
                        answer = Answer(
                            response.status, response.headers.get("Retry-After"), await response.read()
                        )
                        if answer.status not in (429, 503):
                            raise SessionFailed(http_cause("GET events", answer))
                        self.tally.stream_retries += 1
                        # At least half a second: past the run's end the turn in flight is still awaited.
                        await asyncio.sleep(max(0.5, retry_after(answer, until)))
                        continue
                    lines = (line.decode().rstrip("\r\n") async for line in response.content)
                    async for event, _ in read_events(lines):
                        self._observe(event)
            except (aiohttp.ClientError, TimeoutError):
                # Dropped (the gateway restarting): reopened from the last seq seen.
                self.tally.reconnects += 1
                await asyncio.sleep(backoff.next())

    def _observe(self, event: dict[str, Any]) -> None:
        seq = int(event["seq"])
        if seq <= self.last_seq:
            self.tally.duplicates += 1
            return
        self.tally.missing += seq - self.last_seq - 1
        self.last_seq = seq
        sent_at = datetime.fromisoformat(event["ts"]).timestamp()
        self.tally.delivery.append(max(0.0, time.time() - sent_at))
        kind = event["type"]
        if kind == "message.delta" or kind in TERMINAL:
            turn = self._turn(event["turn_id"])
            if turn.first_text is None:
                turn.first_text = time.monotonic()
            if kind in TERMINAL and not turn.outcome.done():
                turn.outcome.set_result((kind, event.get("payload") or {}))

    async def run(self, prompt: str, until: float, think_s: float, turn_timeout_s: float) -> None:
        tally = self.tally
        reader: asyncio.Task[None] | None = None
        try:
            conversation_id = await self.open_conversation(until)
            if conversation_id is None:
                return
            reader = asyncio.create_task(self.follow(conversation_id, until))
            while time.monotonic() < until:
                if reader.done():
                    reader.result()  # the stream failed for good: raise why
                await self.turn(conversation_id, reader, prompt, until, think_s, turn_timeout_s)
        except SessionFailed as exc:
            tally.fail(str(exc), session=True)
        except aiohttp.ClientConnectorError as exc:
            # Reconnected with backoff until the run ended, and never got through.
            tally.fail(
                f"cannot connect to the gateway at {self.base_url} ({exc.os_error.strerror})", session=True
            )
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            tally.fail(f"{type(exc).__name__}: {exc}"[:160], session=True)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def open_conversation(self, until: float) -> str | None:
        """The session's conversation, or None when sign-ins were shed to the end of the run."""
        tally = self.tally
        created = await self.post(CONVERSATIONS, {"title": "load"}, until)
        # Shed (429), or a backing store restarting (503, "try again"): asked again.
        while created.status in (429, 503) and time.monotonic() < until:
            if created.status == 429:
                tally.shed_sign_ins += 1
            else:
                tally.fail(http_cause("POST /v1/conversations", created))
            await asyncio.sleep(retry_after(created, until))
            created = await self.post(CONVERSATIONS, {"title": "load"}, until)
        if created.status == 429:  # shed to the end: load refused as it should be, not a failure
            tally.shed_sessions += 1
            return None
        if created.status != 201:
            raise SessionFailed(http_cause("POST /v1/conversations", created))
        return str(created.json()["id"])

    async def turn(
        self,
        conversation_id: str,
        reader: asyncio.Task[None],
        prompt: str,
        until: float,
        think_s: float,
        turn_timeout_s: float,
    ) -> None:
        """One message sent and its turn awaited on the stream, then the think time."""
        tally = self.tally
        started = time.monotonic()
        tally.sent += 1
        try:
            posted = await self.post(
                conversation_path(conversation_id, "messages"), {"content": prompt}, until
            )
        except GATEWAY_GONE:
            tally.sent -= 1  # the run ended while the gateway was away: nothing was sent
            raise
        if posted.status == 429:
            tally.shed += 1
            await asyncio.sleep(retry_after(posted, until))
            return
        if posted.status != 202:
            tally.fail(http_cause("POST message", posted))
            await asyncio.sleep(min(1.0, think_s))
            return
        tally.accepted += 1
        tally.accept.append((started - tally.started, time.monotonic() - started))
        turn = self._turn(posted.json()["turn_id"])
        turn.started = started
        waits: list[asyncio.Future[Any]] = [turn.outcome, reader]
        await asyncio.wait(waits, timeout=turn_timeout_s, return_when=FIRST_COMPLETED)
        if not turn.outcome.done():
            if reader.done():
                reader.result()  # the stream failed for good: raise why
            tally.lost += 1
            return
        outcome, payload = turn.outcome.result()
        if outcome == "message.completed":
            tally.completed += 1
            tally.response.append((started - tally.started, time.monotonic() - started))
            tally.ttft.append((turn.first_text or time.monotonic()) - started)
            if self.on_answer:
                self.on_answer(started, time.monotonic() - started)
        else:
            tally.fail(f"turn ended with {outcome} ({payload.get('code', payload.get('reason', ''))})")
        await asyncio.sleep(think_s * random.uniform(0.5, 1.5))


def retry_after(response: Answer, until: float) -> float:
    """How long a shed request waits: as its ``Retry-After`` says, and up to half as long
    again at random, as people do — a crowd that retries in the same instant is the
    overload again — within the run."""
    try:
        wait = float(response.retry_after or "1")
    except ValueError:
        wait = 1.0
    return max(0.0, min(wait * random.uniform(1.0, 1.5), until - time.monotonic()))


class SessionFailed(A0Error):
    """A session cannot go on; the message says why."""
