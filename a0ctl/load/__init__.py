"""``a0ctl load``: many concurrent chat sessions against a running stack, through the
gateway, as browsers would drive it — and what a user would have noticed.

Each session signs in as its own user, opens its conversation's SSE stream, then sends
a message, waits for the answer, thinks, and sends again until the time is up. The
report counts what was sent, answered, refused (429), lost (accepted but never
answered) and shown twice (an event seq seen again, or a gap), with response-time and
delivery percentiles and the worst consumer lag seen while it ran.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel

from a0ctl.client import SseParser
from a0ctl.topics.admin import consumer_lag
from services.common.auth import mint_token
from services.common.envelope import TERMINAL_EVENTS
from services.common.settings import Settings

TERMINAL = frozenset(str(t) for t in TERMINAL_EVENTS)
# Called for each answered turn with when it was sent (time.monotonic()) and how long it took.
AnswerHook = Callable[[float, float], None]


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None

    @classmethod
    def of(cls, values: list[float], scale: float = 1.0, digits: int = 3) -> Percentiles:
        if not values:
            return cls(p50=None, p95=None, p99=None, mean=None)
        return cls(
            p50=round(percentile(values, 50) * scale, digits),
            p95=round(percentile(values, 95) * scale, digits),
            p99=round(percentile(values, 99) * scale, digits),
            mean=round(statistics.fmean(values) * scale, digits),
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class LoadReport(BaseModel):
    sessions: int
    duration_s: float
    prompt: str
    sent: int
    accepted: int
    rejected: int
    completed: int
    failed: int
    lost: int
    duplicate_events: int
    missing_events: int
    throughput_per_s: float
    response_s: Percentiles
    delivery_ms: Percentiles
    max_consumer_lag_s: float
    errors: list[str]

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicate_events == 0 and self.missing_events == 0 and self.sent > 0


class _Tally:
    def __init__(self) -> None:
        self.sent = self.accepted = self.rejected = self.completed = self.failed = self.lost = 0
        self.duplicates = self.missing = 0
        self.response: list[float] = []
        self.delivery: list[float] = []
        self.errors: list[str] = []

    def error(self, message: str) -> None:
        if len(self.errors) < 10:
            self.errors.append(message)


class _Session:
    """One user, one conversation, one SSE stream followed for the whole run."""

    def __init__(
        self, settings: Settings, index: int, tally: _Tally, on_answer: AnswerHook | None = None
    ) -> None:
        self.tally = tally
        self.on_answer = on_answer
        self.headers = {"Authorization": f"Bearer {mint_token(settings, f'load-{index}')}"}
        self.http = httpx.AsyncClient(
            base_url=settings.gateway_url,
            headers=self.headers,
            limits=httpx.Limits(max_connections=4),
            timeout=httpx.Timeout(30, read=90),
        )
        self.last_seq = 0
        self.waiting: dict[str, asyncio.Future[str]] = {}

    async def follow(self, conversation_id: str) -> None:
        """Read the stream, resuming with Last-Event-ID when it drops; check every seq."""
        while True:
            try:
                async with self.http.stream(
                    "GET",
                    f"/v1/conversations/{conversation_id}/events",
                    headers={"Last-Event-ID": str(self.last_seq)},
                ) as response:
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        message = parser.feed(line)
                        if message is not None:
                            self._observe(json.loads(message["data"]))
            except httpx.TransportError:
                await asyncio.sleep(0.5)

    def _observe(self, event: dict[str, Any]) -> None:
        seq = int(event["seq"])
        if seq <= self.last_seq:
            self.tally.duplicates += 1
            return
        self.tally.missing += seq - self.last_seq - 1
        self.last_seq = seq
        sent_at = datetime.fromisoformat(event["ts"]).timestamp()
        self.tally.delivery.append(max(0.0, time.time() - sent_at))
        if event["type"] in TERMINAL:
            future = self.waiting.pop(event["turn_id"], None)
            if future is not None and not future.done():
                future.set_result(event["type"])

    async def run(self, prompt: str, until: float, think_s: float, turn_timeout_s: float) -> None:
        tally = self.tally
        try:
            created = await self.http.post("/v1/conversations", json={"title": "load"})
            created.raise_for_status()
            conversation_id = created.json()["id"]
            reader = asyncio.create_task(self.follow(conversation_id))
            try:
                while time.monotonic() < until:
                    started = time.monotonic()
                    tally.sent += 1
                    posted = await self.http.post(
                        f"/v1/conversations/{conversation_id}/messages", json={"content": prompt}
                    )
                    if posted.status_code == 429:
                        tally.rejected += 1
                        await asyncio.sleep(min(5.0, float(posted.headers.get("Retry-After", "1"))))
                        continue
                    if posted.status_code != 202:
                        tally.error(f"POST answered {posted.status_code}: {posted.text[:160]}")
                        continue
                    tally.accepted += 1
                    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                    self.waiting[posted.json()["turn_id"]] = done
                    try:
                        outcome = await asyncio.wait_for(done, turn_timeout_s)
                    except TimeoutError:
                        tally.lost += 1
                        continue
                    if outcome == "message.completed":
                        tally.completed += 1
                        tally.response.append(time.monotonic() - started)
                        if self.on_answer:
                            self.on_answer(started, time.monotonic() - started)
                    else:
                        tally.failed += 1
                    await asyncio.sleep(think_s * random.uniform(0.5, 1.5))
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        except httpx.HTTPError as exc:
            tally.error(f"session failed: {type(exc).__name__}: {exc}")
        finally:
            await self.http.aclose()


async def _sample_lag(settings: Settings, stop: asyncio.Event) -> float:
    worst = 0.0
    while not stop.is_set():
        try:
            rows = await consumer_lag(settings.kafka_bootstrap, None)
            worst = max([worst, *(row.lag_seconds for row in rows)])
        except Exception:  # sampling is best effort; the run goes on
            pass
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except TimeoutError:
            pass
    return worst


async def run_load(
    settings: Settings,
    *,
    sessions: int,
    duration_s: float,
    think_s: float,
    prompt: str,
    turn_timeout_s: float = 60.0,
    ramp_s: float = 2.0,
    on_answer: AnswerHook | None = None,
) -> LoadReport:
    tally = _Tally()
    started = time.monotonic()
    until = started + duration_s
    stop = asyncio.Event()
    lag = asyncio.create_task(_sample_lag(settings, stop))

    async def start_session(index: int) -> None:
        # Spread session starts over the ramp, as users arrive, rather than in one instant.
        await asyncio.sleep(ramp_s * index / max(1, sessions))
        await _Session(settings, index, tally, on_answer).run(prompt, until, think_s, turn_timeout_s)

    await asyncio.gather(*(start_session(i) for i in range(sessions)))
    elapsed = time.monotonic() - started
    stop.set()
    max_lag = await lag
    return LoadReport(
        sessions=sessions,
        duration_s=round(elapsed, 2),
        prompt=prompt,
        sent=tally.sent,
        accepted=tally.accepted,
        rejected=tally.rejected,
        completed=tally.completed,
        failed=tally.failed,
        lost=tally.lost,
        duplicate_events=tally.duplicates,
        missing_events=tally.missing,
        throughput_per_s=round(tally.completed / elapsed, 2) if elapsed else 0.0,
        response_s=Percentiles.of(tally.response),
        delivery_ms=Percentiles.of(tally.delivery, 1000, 1),
        max_consumer_lag_s=round(max_lag, 3),
        errors=tally.errors,
    )
