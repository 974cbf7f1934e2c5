"""``a0ctl load``: many concurrent chat sessions against a running stack, through the
gateway, as browsers would drive it — and what a user would have noticed.

Each session signs in as its own user, opens its conversation's SSE stream, then sends
a message, waits for the answer, thinks, and sends again until the time is up. Sessions
arrive evenly over the ramp, one think time by default (at least 2 s), as users do: the
run is in its steady state from the start rather than opening with every session's
first message in the same instant. A 429
is shed load: the session waits as ``Retry-After`` says and tries again (one whose
sign-in is still shed when the run ends is a shed session). The report counts what was
sent, answered, shed, failed (with each cause: a 5xx, a connection error, an error
event), lost (accepted but never answered) and shown twice (an event seq seen again,
or a gap); every session counts, and one that cannot go on is a failed session. With
response-time, time-to-first-token and acceptance-time percentiles, delivery times, the
worst consumer lag sampled while it ran, in records and seconds, and how busy this
host's CPUs were meanwhile: with the stack on the same machine, a tail that comes from
waiting for a core shows there first. Its timeline splits the run into windows by when
each message was sent, so the ramp's arrivals, a fault or a drift show where they were.

A session whose connection to the gateway fails (a gateway restarting) reconnects as a
browser would: after a pause that doubles from a quarter of a second up to 5 s, with
jitter, until the run ends; each attempt is counted as a reconnect, not a failure. Only
a session that never got through again before the run ended fails.

With an :class:`~a0ctl.load.account.AccountProbe`, the run also carries its account
(:mod:`a0ctl.load.account`): what each answered turn cost every process of the stack,
the load client, PostgreSQL, Kafka, Redis, OPA, the LLM and tracing, net of the idle
rate measured just before.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel, Field, computed_field

from a0ctl.load.account import IDLE_S, SETTLE_S, Account, AccountProbe, build_account
from a0ctl.topics.admin import LagProbe
from services.common.auth import mint_token
from services.common.envelope import TERMINAL_EVENTS
from services.common.errors import A0Error
from services.common.settings import Settings
from services.common.sse import SseParser

TERMINAL = frozenset(str(t) for t in TERMINAL_EVENTS)
# A stream waits for the next event; the gateway pings every 15 s.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=90)


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


class HostCpu(BaseModel):
    """How busy this host's CPUs were while the load ran, as a fraction of all its cores
    (``/proc/stat``; None where there is none): over the whole run, and in its busiest
    window. Time stolen by a hypervisor counts as busy: no a0 process could use it."""

    cores: int = Field(default_factory=lambda: os.cpu_count() or 1)
    mean: float | None = None
    max: float | None = None


# How often the run samples consumer lag and this host's CPU.
SAMPLE_S = 2.0
LAG_READ_TIMEOUT_S = 10.0
PROC_STAT = Path("/proc/stat")


def cpu_times(stat: str) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from the text of ``/proc/stat``."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            # user nice system idle iowait irq softirq steal (guest time is within user)
            ticks = [int(value) for value in fields[1:9]]
            idle = ticks[3] + ticks[4]
            return sum(ticks) - idle, sum(ticks)
    return None


def busy_between(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else None


def _read_cpu_times() -> tuple[int, int] | None:
    try:
        return cpu_times(PROC_STAT.read_text())
    except (OSError, ValueError, IndexError):
        return None


class Window(BaseModel):
    """The turns sent in one stretch of the run (``start_s`` to ``end_s`` after it began):
    how many were answered, their response times and acceptance, and how busy this host's
    CPUs were meanwhile. The first windows are the ramp, where sessions arrive."""

    start_s: float
    end_s: float
    answered: int
    response_mean_s: float | None
    response_p99_s: float | None
    accept_mean_s: float | None
    host_cpu: float | None


# A run's timeline: this many windows of equal length (at least MIN_WINDOW_S each).
TIMELINE_WINDOWS = 6
MIN_WINDOW_S = 5.0


def timeline(
    duration_s: float,
    answered: list[tuple[float, float]],
    accepted: list[tuple[float, float]],
    cpu: list[tuple[float, tuple[int, int]]],
) -> list[Window]:
    """Windows over ``duration_s`` of (sent at, seconds) pairs of answered and accepted
    turns, and of (at, :func:`cpu_times`) readings; a turn sent after the last window's end
    (a retry at the end of the run) counts in the last."""
    count = max(1, min(TIMELINE_WINDOWS, int(duration_s // MIN_WINDOW_S)))
    width = duration_s / count

    def index(at: float) -> int:
        return min(count - 1, max(0, int(at // width)))

    responses: list[list[float]] = [[] for _ in range(count)]
    accepts: list[list[float]] = [[] for _ in range(count)]
    for at, seconds in answered:
        responses[index(at)].append(seconds)
    for at, seconds in accepted:
        accepts[index(at)].append(seconds)
    windows = []
    for i in range(count):
        start, end = i * width, (i + 1) * width
        inside = [times for at, times in cpu if start <= at <= end]
        busy = busy_between(inside[0], inside[-1]) if len(inside) > 1 else None
        windows.append(
            Window(
                start_s=round(start, 1),
                end_s=round(end, 1),
                answered=len(responses[i]),
                response_mean_s=round(statistics.fmean(responses[i]), 3) if responses[i] else None,
                response_p99_s=round(percentile(responses[i], 99), 3) if responses[i] else None,
                accept_mean_s=round(statistics.fmean(accepts[i]), 3) if accepts[i] else None,
                host_cpu=busy,
            )
        )
    return windows


class Sla(BaseModel):
    """Limits a run must meet (``--sla-mean``, ``--sla-p99``), and whether it did."""

    mean_s: float | None = None
    p99_s: float | None = None
    met: bool = True
    misses: list[str] = []


class LoadReport(BaseModel):
    sessions: int
    duration_s: float
    ramp_s: float
    prompt: str
    sent: int
    accepted: int
    rejected: int  # refused with 429 (shed); kept under its first name
    shed: int  # messages refused with 429
    shed_sign_ins: int = 0  # conversations refused with 429 (a busy gateway), then retried
    stream_retries: int = 0  # streams (re)opened with 429 or 503 (busy or recovering), then retried
    reconnects: int = 0  # requests and streams tried again after a connection error, with backoff
    shed_sessions: int = 0  # sessions whose every sign-in was shed until the run ended
    completed: int
    failed: int  # turns that ended in an error, or a request answered with another failure
    failed_sessions: int  # sessions that could not go on (no conversation, broken stream)
    lost: int
    duplicate_events: int
    missing_events: int
    throughput_per_s: float
    response_s: Percentiles
    ttft_s: Percentiles  # POST to the turn's first text (or its end, when it has none)
    accept_s: Percentiles  # POST to its 202: the gateway's part of the response
    delivery_ms: Percentiles
    max_consumer_lag_s: float
    max_consumer_lag_records: int
    host_cpu: HostCpu = Field(default_factory=HostCpu)
    timeline: list[Window] = []  # by when the message was sent
    causes: dict[str, int]  # every failure, by cause
    errors: list[str]
    sla: Sla = Sla()
    account: Account | None = None  # what each answered turn cost the stack (a0ctl.load.account)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """Every session to the end; nothing failed, lost or shown twice; the SLA met."""
        return (
            self.sent > 0
            and self.lost == 0
            and self.duplicate_events == 0
            and self.missing_events == 0
            and self.failed == 0
            and self.failed_sessions == 0
            and self.sla.met
        )

    def check_sla(self, mean_s: float | None, p99_s: float | None) -> LoadReport:
        misses = []
        if mean_s is not None and (self.response_s.mean is None or self.response_s.mean > mean_s):
            misses.append(f"mean response {self.response_s.mean} s > {mean_s} s")
        if p99_s is not None and (self.response_s.p99 is None or self.response_s.p99 > p99_s):
            misses.append(f"p99 response {self.response_s.p99} s > {p99_s} s")
        return self.model_copy(update={"sla": Sla(mean_s=mean_s, p99_s=p99_s, met=not misses, misses=misses)})


# Called for each answered turn with when it was sent (time.monotonic()) and how long it took.
AnswerHook = Callable[[float, float], None]


class _Tally:
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
class _Answer:
    """A gateway answer, read whole: its status, ``Retry-After`` and body."""

    status: int
    retry_after: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _http_cause(what: str, response: _Answer) -> str:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = response.body[:80].decode(errors="replace")
    return f"{what} answered {response.status} ({code})"


class _Turn:
    """A sent message until its end: when it was posted, its first text, its outcome."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_text: float | None = None
        self.outcome: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()


class _Session:
    """One user, one conversation, one SSE stream followed for the whole run."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        settings: Settings,
        index: int,
        tally: _Tally,
        on_answer: AnswerHook | None = None,
    ) -> None:
        self.tally = tally
        self.on_answer = on_answer
        self.base_url = settings.gateway_url
        self.headers = {"Authorization": f"Bearer {mint_token(settings, f'load-{index}')}"}
        self.http = http
        self.last_seq = 0
        # By turn id; events may arrive before the POST's answer names the turn.
        self.turns: dict[str, _Turn] = {}

    async def post(self, path: str, body: dict[str, Any], until: float) -> _Answer:
        """POST, reconnecting after a connection error (with backoff) until ``until``; past
        it, the last error is raised. A request cut while the gateway went away may have
        been accepted: it is sent again, as a user would when the page says it failed."""
        backoff = Backoff()
        while True:
            try:
                async with self.http.post(self.base_url + path, json=body, headers=self.headers) as response:
                    return _Answer(
                        response.status, response.headers.get("Retry-After"), await response.read()
                    )
            except (aiohttp.ClientConnectionError, TimeoutError):
                if time.monotonic() >= until:
                    raise
                self.tally.reconnects += 1
                await asyncio.sleep(min(backoff.next(), max(0.0, until - time.monotonic())))

    def _turn(self, turn_id: str) -> _Turn:
        turn = self.turns.get(turn_id)
        if turn is None:
            turn = self.turns[turn_id] = _Turn(time.monotonic())
        return turn

    async def follow(self, conversation_id: str, until: float) -> None:
        """Read the stream, resuming with Last-Event-ID when it drops; check every seq.

        A busy gateway (429) or one whose backing store is restarting (503) is asked again
        after its ``Retry-After``; any other refusal ends the session."""
        url = f"{self.base_url}/v1/conversations/{conversation_id}/events"
        backoff = Backoff()
        while True:
            try:
                headers = {**self.headers, "Last-Event-ID": str(self.last_seq)}
                async with self.http.get(url, headers=headers, timeout=STREAM_TIMEOUT) as response:
                    backoff.reset()
                    if response.status != 200:
                        answer = _Answer(
                            response.status, response.headers.get("Retry-After"), await response.read()
                        )
                        if answer.status not in (429, 503):
                            raise _SessionFailed(_http_cause("GET events", answer))
                        self.tally.stream_retries += 1
                        # At least half a second: past the run's end the turn in flight is still awaited.
                        await asyncio.sleep(max(0.5, _retry_after(answer, until)))
                        continue
                    parser = SseParser()
                    async for line in response.content:
                        message = parser.feed(line.decode().rstrip("\r\n"))
                        if message is not None:
                            self._observe(json.loads(message["data"]))
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
            created = await self.post("/v1/conversations", {"title": "load"}, until)
            # Shed (429), or a backing store restarting (503, "try again"): asked again.
            while created.status in (429, 503) and time.monotonic() < until:
                if created.status == 429:
                    tally.shed_sign_ins += 1
                else:
                    tally.fail(_http_cause("POST /v1/conversations", created))
                await asyncio.sleep(_retry_after(created, until))
                created = await self.post("/v1/conversations", {"title": "load"}, until)
            if created.status == 429:  # shed to the end: load refused as it should be, not a failure
                tally.shed_sessions += 1
                return
            if created.status != 201:
                raise _SessionFailed(_http_cause("POST /v1/conversations", created))
            conversation_id = created.json()["id"]
            reader = asyncio.create_task(self.follow(conversation_id, until))
            while time.monotonic() < until:
                if reader.done():
                    reader.result()  # the stream failed for good: raise why
                started = time.monotonic()
                tally.sent += 1
                try:
                    posted = await self.post(
                        f"/v1/conversations/{conversation_id}/messages", {"content": prompt}, until
                    )
                except (aiohttp.ClientConnectionError, TimeoutError):
                    tally.sent -= 1  # the run ended while the gateway was away: nothing was sent
                    raise
                if posted.status == 429:
                    tally.shed += 1
                    await asyncio.sleep(_retry_after(posted, until))
                    continue
                if posted.status != 202:
                    tally.fail(_http_cause("POST message", posted))
                    await asyncio.sleep(min(1.0, think_s))
                    continue
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
                    continue
                outcome, payload = turn.outcome.result()
                if outcome == "message.completed":
                    tally.completed += 1
                    tally.response.append((started - tally.started, time.monotonic() - started))
                    tally.ttft.append((turn.first_text or time.monotonic()) - started)
                    if self.on_answer:
                        self.on_answer(started, time.monotonic() - started)
                else:
                    tally.fail(
                        f"turn ended with {outcome} ({payload.get('code', payload.get('reason', ''))})"
                    )
                await asyncio.sleep(think_s * random.uniform(0.5, 1.5))
        except _SessionFailed as exc:
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


class Backoff:
    """The pause before each reconnection: from a quarter of a second, doubling up to
    ``cap_s``, each drawn at random from its upper half — sessions dropped together by a
    restarting gateway do not all come back in the same instant."""

    def __init__(self, first_s: float = 0.25, cap_s: float = 5.0) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self.attempt = 0

    def next(self) -> float:
        bound = min(self.cap_s, self.first_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(bound / 2, bound)

    def reset(self) -> None:
        self.attempt = 0


def _retry_after(response: _Answer, until: float) -> float:
    """How long a shed request waits: as its ``Retry-After`` says, and up to half as long
    again at random, as people do — a crowd that retries in the same instant is the
    overload again — within the run."""
    try:
        wait = float(response.retry_after or "1")
    except ValueError:
        wait = 1.0
    return max(0.0, min(wait * random.uniform(1.0, 1.5), until - time.monotonic()))


class _SessionFailed(A0Error):
    """A session cannot go on; the message says why."""


async def _sample_lag(settings: Settings, stop: asyncio.Event) -> tuple[float, int]:
    """The worst consumer lag seen while the load runs: (seconds, records). One probe
    serves every reading; after a failed one (a broker restarting) the next opens anew."""
    worst_s, worst_records = 0.0, 0
    probe: LagProbe | None = None
    try:
        while not stop.is_set():
            try:
                if probe is None:
                    probe = await LagProbe(settings).open()
                # A broker gone mid-reading holds a request until the client's own timeout
                # (40 s): give up sooner, and open anew.
                rows = await asyncio.wait_for(probe.read(None), LAG_READ_TIMEOUT_S)
                worst_s = max([worst_s, *(row.lag_seconds for row in rows)])
                worst_records = max([worst_records, *(row.lag for row in rows)])
            except Exception:  # sampling is best effort; the run goes on
                if probe is not None:
                    await _close(probe)
                    probe = None
            await _pause(stop)
    finally:
        if probe is not None:
            await _close(probe)
    return worst_s, worst_records


async def _close(probe: LagProbe) -> None:
    try:
        await probe.close()
    except Exception:  # a broker gone: nothing left to close cleanly
        pass


async def _sample_cpu(stop: asyncio.Event, readings: list[tuple[float, tuple[int, int]]]) -> HostCpu:
    """This host's CPU while the load runs: over the whole run, and the busiest window.
    Each reading is added to ``readings`` with when it was taken (time.monotonic())."""
    first = _read_cpu_times()
    if first is None:
        return HostCpu()
    last, last_at = first, time.monotonic()
    readings.append((last_at, first))
    busiest: float | None = None
    while not stop.is_set():
        await _pause(stop)
        now, at = _read_cpu_times(), time.monotonic()
        if now is None:
            return HostCpu()
        readings.append((at, now))
        window = busy_between(last, now)
        # The last window, cut short by the end of the run, is too short to judge a peak.
        if window is not None and at - last_at >= SAMPLE_S / 2 and (busiest is None or window > busiest):
            busiest = window
        last, last_at = now, at
    return HostCpu(mean=busy_between(first, last), max=busiest)


async def _pause(stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), SAMPLE_S)
    except TimeoutError:
        pass


async def run_load(
    settings: Settings,
    *,
    sessions: int,
    duration_s: float,
    think_s: float,
    prompt: str,
    turn_timeout_s: float = 60.0,
    ramp_s: float | None = None,
    on_answer: AnswerHook | None = None,
    account: AccountProbe | None = None,
    idle_s: float = IDLE_S,
    settle_s: float = SETTLE_S,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> LoadReport:
    """Run the sessions and report. With ``account``, the stack is first read over
    ``idle_s`` of no traffic, and read again ``settle_s`` after the run (see
    :mod:`a0ctl.load.account`). ``on_start`` and ``on_end`` are called as the sessions
    start and once they all ended (before the settle time)."""
    idle = None
    if account is not None:
        first = await account.read()
        await asyncio.sleep(idle_s)
        idle = (first, await account.read())
    if on_start is not None:
        on_start()
    tally = _Tally()
    started = tally.started
    until = started + duration_s
    stop = asyncio.Event()
    lag = asyncio.create_task(_sample_lag(settings, stop))
    readings: list[tuple[float, tuple[int, int]]] = []
    cpu = asyncio.create_task(_sample_cpu(stop, readings))

    ramp = max(2.0, think_s) if ramp_s is None else ramp_s

    # One client for every session (one TLS context, one pool: a connection per session's
    # stream plus its requests), on aiohttp: the load generator shares the machine with the
    # stack it measures, and httpx cost it about ten times the CPU per request.
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=30),
        read_bufsize=1 << 18,
    )

    async def start_session(index: int) -> None:
        await asyncio.sleep(ramp * index / max(1, sessions))
        await _Session(http, settings, index, tally, on_answer).run(prompt, until, think_s, turn_timeout_s)

    async with http:
        await asyncio.gather(*(start_session(i) for i in range(sessions)))
    elapsed = time.monotonic() - started
    if on_end is not None:
        on_end()
    stop.set()
    max_lag_s, max_lag_records = await lag
    host_cpu = await cpu
    causes = dict(sorted(tally.causes.items(), key=lambda item: -item[1]))
    cost = None
    if account is not None and idle is not None:
        await asyncio.sleep(settle_s)
        last = await account.read()
        idle_spans = await account.spans(idle[0].wall, idle[1].wall)
        run_spans = await account.spans(idle[1].wall, last.wall)
        cost = build_account(
            idle,
            (idle[1], last),
            tally.completed,
            idle_spans=idle_spans,
            run_spans=run_spans,
            probe_cpu_ms=account.probe_cpu_s * 1000,
            unavailable=account.unavailable,
        )
    return LoadReport(
        sessions=sessions,
        duration_s=round(elapsed, 2),
        ramp_s=ramp,
        prompt=prompt,
        sent=tally.sent,
        accepted=tally.accepted,
        rejected=tally.shed,
        shed=tally.shed,
        shed_sign_ins=tally.shed_sign_ins,
        stream_retries=tally.stream_retries,
        reconnects=tally.reconnects,
        shed_sessions=tally.shed_sessions,
        completed=tally.completed,
        failed=tally.failed,
        failed_sessions=tally.failed_sessions,
        lost=tally.lost,
        duplicate_events=tally.duplicates,
        missing_events=tally.missing,
        throughput_per_s=round(tally.completed / elapsed, 2) if elapsed else 0.0,
        response_s=Percentiles.of([seconds for _, seconds in tally.response]),
        ttft_s=Percentiles.of(tally.ttft),
        accept_s=Percentiles.of([seconds for _, seconds in tally.accept]),
        delivery_ms=Percentiles.of(tally.delivery, 1000, 1),
        max_consumer_lag_s=round(max_lag_s, 3),
        max_consumer_lag_records=max_lag_records,
        host_cpu=host_cpu,
        timeline=timeline(
            duration_s, tally.response, tally.accept, [(at - started, times) for at, times in readings]
        ),
        causes=causes,
        errors=[f"{count}x {cause}" for cause, count in list(causes.items())[:10]],
        account=cost,
    )
