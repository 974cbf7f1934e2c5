"""The gateway's pure parts: the error shape, SSE framing, rate-limit maths, the hub and
cursor that make streams gap- and duplicate-free, the CLI client's SSE parser — and the
app's answers that need no backing service (errors, auth, size limits, health)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.common.auth import mint_token
from services.common.envelope import Envelope, EventType
from services.common.settings import (
    GatewaySettings,
    KafkaSettings,
    LLMSettings,
    LLMSimSettings,
    OpaSettings,
    PostgresSettings,
    RedisSettings,
    Settings,
    StackSettings,
    TelemetrySettings,
    ToolSettings,
    WorkerSettings,
)
from services.common.sse import SseParser
from services.gateway import fanout
from services.gateway.errors import InvalidRequest, error_body, validation_message
from services.gateway.fanout import Cursor, Hub, SlowConsumer, Step, Subscription
from services.gateway.handlers import title_from_message
from services.gateway.main import create_app
from services.gateway.middleware import RequestIds, Shedding, pick_request_id
from services.gateway.owners import Owners
from services.gateway.ratelimit import (
    OVERLOADED_RETRY_AFTER_S,
    OpenTurns,
    ShedPacer,
    over_budget,
    over_capacity,
    rate_key,
    seconds_to_next_minute,
)
from services.gateway.routes_stream import resume_cursor, sse_event
from services.gateway.textcheck import json_too_deep, storable_text

pytestmark = pytest.mark.unit

CONVERSATION = "c1"


def event(seq: int, type_: EventType = EventType.DELTA, conversation_id: str = CONVERSATION) -> Envelope:
    return Envelope(
        type=type_,
        conversation_id=conversation_id,
        turn_id="t1",
        user_id="alice",
        seq=seq,
        payload={"text": f"#{seq}"},
    )


# --- the error shape ---------------------------------------------------------------------


def test_error_body_is_the_one_shape() -> None:
    assert error_body("not_found", "no conversation x", "r1") == {
        "error": {"code": "not_found", "message": "no conversation x", "request_id": "r1"}
    }


def test_malformed_json_is_its_own_code() -> None:
    code, message = validation_message(
        [{"type": "json_invalid", "loc": ("body", 1), "ctx": {"error": "Expecting value"}}]
    )
    assert code == "malformed_json"
    assert "not valid JSON" in message and "Expecting value" in message


def test_validation_message_names_the_field_without_the_body_prefix() -> None:
    errors = [
        {
            "type": "string_too_short",
            "loc": ("body", "content"),
            "msg": "String should have at least 1 character",
        }
    ]
    assert validation_message(errors) == (
        "invalid_request",
        "content: String should have at least 1 character",
    )


def test_validation_message_strips_websocket_command_tags() -> None:
    errors = [{"type": "missing", "loc": ("message", "content"), "msg": "Field required"}]
    assert validation_message(errors, frozenset({"message"}))[1] == "content: Field required"


async def test_writes_past_the_pending_limit_are_shed_until_answers_start() -> None:
    """Writes wait on ``release``; the third is refused at once with 429 + Retry-After,
    reads are never counted, and a slot frees as soon as an answer starts."""
    release, both_in = asyncio.Event(), asyncio.Event()
    started = 0

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        nonlocal started
        started += 1
        if started == 2:
            both_in.set()
        if scope["method"] == "POST":
            await release.wait()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    shedding = Shedding(slow, max_pending_writes=2, max_inflight_turns=10)
    transport = httpx.ASGITransport(app=RequestIds(shedding))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        held = [asyncio.create_task(client.post("/v1/conversations", json={})) for _ in range(2)]
        await asyncio.wait_for(both_in.wait(), 5)
        shed = await client.post("/v1/conversations", json={})
        read = await client.get("/v1/conversations")
        assert shed.status_code == 429 and shed.headers["Retry-After"] == "2"
        assert shed.json()["error"]["code"] == "overloaded" and "busy" in shed.json()["error"]["message"]
        assert read.status_code == 202 and started == 3  # the shed write never reached the app
        release.set()
        assert [response.status_code for response in await asyncio.gather(*held)] == [202, 202]
        assert (await client.post("/v1/conversations", json={})).status_code == 202
    assert shedding.pending_writes == 0


class _StartedGateway:
    """The middleware in front of an app that answers 202 and records what reached it, with
    the started gateway's open-turn reading and database pool counters set by the test."""

    def __init__(self, *, open_turns: int, waiting: int) -> None:
        self.reached: list[str] = []
        # A fresh reading (no refresh due, so no Redis read).
        self.reading = OpenTurns(redis=None, value=open_turns, read_at=time.monotonic() + 3600)  # type: ignore[arg-type]
        self.stats = {"requests_waiting": waiting, "pool_max": 40}
        pool = SimpleNamespace(get_stats=lambda: dict(self.stats))
        gateway = SimpleNamespace(open_turns=self.reading, pool=pool)
        self.started_app = SimpleNamespace(state=SimpleNamespace(gateway=gateway))
        self.middleware = Shedding(self.app, max_pending_writes=8, max_inflight_turns=4)

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.middleware({**scope, "app": self.started_app}, receive, send)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self), base_url="http://gw")


async def test_at_its_turns_in_flight_a_new_message_is_shed_before_the_app_sees_it() -> None:
    """With the open-turn reading at the limit, a message POST gets 429 + Retry-After
    without sign-in or routing (the app is not called); other writes and reads pass."""
    gateway = _StartedGateway(open_turns=4, waiting=0)
    async with gateway.client() as client:
        shed = await client.post("/v1/conversations/c1/messages", json={"content": "hi"})
        assert shed.status_code == 429 and shed.headers["Retry-After"] == str(OVERLOADED_RETRY_AFTER_S)
        assert (
            shed.json()["error"]["code"] == "overloaded"
            and "turns in flight" in shed.json()["error"]["message"]
        )
        assert (await client.post("/v1/conversations/c1/cancel", json={})).status_code == 202
        assert (await client.post("/v1/conversations", json={})).status_code == 202
        gateway.reading.value = 3
        assert (await client.post("/v1/conversations/c1/messages", json={"content": "hi"})).status_code == 202
    assert gateway.reached == [
        "POST /v1/conversations/c1/cancel",
        "POST /v1/conversations",
        "POST /v1/conversations/c1/messages",
    ]
    assert gateway.middleware.pending_writes == 0


async def test_with_a_pool_of_requests_waiting_for_the_database_writes_are_shed_reads_pass() -> None:
    """A pool's worth of requests already waiting for a PostgreSQL connection: a write gets
    429 + Retry-After before the app sees it; reads (streams) still go through."""
    gateway = _StartedGateway(open_turns=0, waiting=40)
    async with gateway.client() as client:
        for shed in (
            await client.post("/v1/conversations", json={}),
            await client.post("/v1/conversations/c1/messages", json={"content": "hi"}),
        ):
            assert shed.status_code == 429 and shed.headers["Retry-After"] == "2"
            assert "database connections" in shed.json()["error"]["message"]
        assert (await client.get("/v1/conversations/c1/events")).status_code == 202
        gateway.stats["requests_waiting"] = 39
        assert (await client.post("/v1/conversations", json={})).status_code == 202
    assert gateway.reached == ["GET /v1/conversations/c1/events", "POST /v1/conversations"]
    assert gateway.middleware.pending_writes == 0


def test_retry_after_stretches_while_a_crowd_is_shed_and_returns_to_the_base_wait() -> None:
    now = [0.0]
    pacer = ShedPacer(pace_per_s=100, max_s=60, clock=lambda: now[0])

    def shed_for_a_second(per_s: int) -> list[int]:
        waits = [pacer.retry_after(5) for _ in range(per_s)]
        now[0] += 1.0
        return waits

    assert set(shed_for_a_second(50)) == {5}  # under the pace: the base wait
    assert set(shed_for_a_second(400)) == {5}  # measured at the end of the second
    first = shed_for_a_second(400)
    assert first[0] == 10  # 4x the pace: stretched by sqrt(4)
    stretched = [shed_for_a_second(400)[0] for _ in range(10)]
    assert stretched == sorted(stretched) and stretched[-1] == 60  # capped at max_s
    shed_for_a_second(1)
    assert pacer.retry_after(2) < 60  # quiet again: it shrinks back
    for _ in range(12):
        shed_for_a_second(1)
    assert pacer.retry_after(2) == 2 and pacer.retry_after(5) == 5


def test_caller_request_id_is_kept_only_when_plain() -> None:
    assert pick_request_id("abc-123") == "abc-123"
    assert pick_request_id("has space") != "has space"
    assert len(pick_request_id(None)) == 32
    assert pick_request_id("x" * 200) != "x" * 200


# --- rate limits and shedding ------------------------------------------------------------


def test_rate_key_is_per_user_per_epoch_minute() -> None:
    assert rate_key("alice", 120.0) == "a0:rate:alice:2"
    assert rate_key("alice", 179.9) == "a0:rate:alice:2"
    assert rate_key("alice", 180.0) == "a0:rate:alice:3"


@pytest.mark.parametrize(("now", "expected"), [(120.0, 60), (150.2, 30), (179.5, 1), (179.99, 1)])
def test_retry_after_counts_to_the_next_minute(now: float, expected: int) -> None:
    assert seconds_to_next_minute(now) == expected


def test_budget_allows_exactly_the_limit() -> None:
    assert not over_budget(600, 600)
    assert over_budget(601, 600)


def test_shedding_refuses_once_open_turns_reach_the_maximum() -> None:
    # the counter after this request's INCR: it was 1 below, so this one fits
    assert not over_capacity(2000, 2000)
    assert over_capacity(2001, 2000)


def test_the_turn_budget_is_what_the_stack_ends_in_the_shed_time_and_never_below_the_floor() -> None:
    turns = OpenTurns(redis=None, turn_s=1.0)  # type: ignore[arg-type]
    assert turns.ending_per_s() == 0 and turns.budget(40) == 40  # nothing ended yet: the floor
    turns.note_ended(100.0, 5_000)
    turns.note_ended(100.4, 5_040)
    assert turns.ending_per_s() == 0  # too short a span to call a rate
    turns.note_ended(102.0, 5_200)
    assert turns.ending_per_s() == 100 and turns.budget(40) == 100  # 100 a second, for 1 s
    assert turns.budget(150) == 150
    # Readings older than the window drop out: the rate follows the latest 3 s.
    turns.note_ended(105.0, 5_260)
    assert [at for at, _ in turns.ended] == [102.0, 105.0] and turns.ending_per_s() == 20
    assert turns.budget(10) == 20
    # Half the time allowed in flight, half the budget.
    half = OpenTurns(redis=None, turn_s=0.5, ended=turns.ended)  # type: ignore[arg-type]
    assert half.budget(1) == 10
    # Sparse readings: the rate since the last one, however long ago.
    turns.note_ended(115.0, 5_300)
    assert [at for at, _ in turns.ended] == [105.0, 115.0] and turns.ending_per_s() == 4
    # A counter that went back (Redis restarted empty) starts the window again.
    turns.note_ended(105.5, 3)
    assert list(turns.ended) == [(105.5, 3)] and turns.budget(40) == 40


async def test_a_turn_budget_grown_by_the_rate_lets_messages_through_past_the_floor() -> None:
    """The middleware holds a message to the measured budget, not to the floor alone."""
    gateway = _StartedGateway(open_turns=60, waiting=0)  # the floor is 4
    gateway.reading.note_ended(0.0, 0)
    gateway.reading.note_ended(2.0, 200)  # 100 turns a second end: 100 may be open
    async with gateway.client() as client:
        assert (await client.post("/v1/conversations/c1/messages", json={"content": "hi"})).status_code == 202
        gateway.reading.value = 100
        assert (await client.post("/v1/conversations/c1/messages", json={"content": "hi"})).status_code == 429


# --- SSE framing and cursors --------------------------------------------------------------


def test_sse_event_carries_seq_type_and_the_client_event() -> None:
    envelope = event(7)
    raw = sse_event(envelope).encode().decode()
    lines = raw.split("\r\n")
    assert lines[0] == "id: 7"
    assert lines[1] == "event: message.delta"
    assert json.loads(lines[2].removeprefix("data: ")) == envelope.client_event()
    assert raw.endswith("\r\n\r\n")
    assert "v" not in envelope.client_event()


def test_last_event_id_wins_over_after() -> None:
    assert resume_cursor("12", 3) == 12
    assert resume_cursor(None, 3) == 3
    assert resume_cursor("", None) == 0
    with pytest.raises(InvalidRequest):
        resume_cursor("twelve", None)


def test_client_sse_parser_reassembles_events_and_skips_pings() -> None:
    parser = SseParser()
    lines = [": ping", "", "id: 3", "event: message.delta", 'data: {"a":', "data: 1}", "", "retry: 5", ""]
    parsed = [message for line in lines if (message := parser.feed(line))]
    assert parsed == [{"id": "3", "event": "message.delta", "data": '{"a":\n1}'}]


# --- the hub and the cursor ------------------------------------------------------------------


def test_cursor_classifies_duplicates_next_and_gaps() -> None:
    cursor = Cursor(3)
    assert cursor.step(2) is Step.DUPLICATE
    assert cursor.step(3) is Step.DUPLICATE
    assert cursor.step(4) is Step.NEXT
    assert cursor.step(6) is Step.GAP
    cursor.advance(6)
    cursor.advance(5)  # never goes back
    assert cursor.last == 6


async def test_hub_delivers_only_to_subscribers_of_the_conversation() -> None:
    hub = Hub()
    mine, other = hub.subscribe(CONVERSATION), hub.subscribe("c2")
    assert hub.publish(event(1)) == 1
    assert mine.queue.qsize() == 1 and other.queue.qsize() == 0
    hub.unsubscribe(mine)
    hub.unsubscribe(mine)  # twice is harmless
    assert CONVERSATION not in hub and len(hub) == 1


async def test_hub_drops_a_slow_subscriber_instead_of_blocking() -> None:
    hub = Hub(queue_size=2)
    slow, fast = hub.subscribe(CONVERSATION), hub.subscribe(CONVERSATION)
    for seq in (1, 2):
        hub.publish(event(seq))
    for _ in range(2):
        fast.queue.get_nowait()
    assert hub.publish(event(3)) == 1
    assert slow.overflowed and not fast.overflowed
    assert len(hub) == 1


class MemoryEvents:
    """Stands in for the events table (what the worker stored before publishing)."""

    def __init__(self, stored: list[Envelope]) -> None:
        self.stored = stored

    async def load(
        self, conversation_id: str, after: int, before: int | None = None
    ) -> AsyncIterator[Envelope]:
        for envelope in sorted(self.stored, key=lambda e: e.seq):
            if (
                envelope.conversation_id == conversation_id
                and envelope.seq > after
                and (before is None or envelope.seq < before)
            ):
                yield envelope


async def _take(events: AsyncIterator[Envelope], count: int) -> list[int]:
    seqs = []
    async with asyncio.timeout(2):
        async for envelope in events:
            seqs.append(envelope.seq)
            if len(seqs) == count:
                break
    return seqs


async def test_subscription_replays_then_follows_without_gap_or_duplicate() -> None:
    table = MemoryEvents([event(seq) for seq in range(1, 6)])
    hub = Hub()
    async with Subscription(hub, table.load, CONVERSATION, after=2) as events:
        assert await _take(events, 3) == [3, 4, 5]
        hub.publish(event(4))  # already replayed: skipped
        hub.publish(event(5))
        table.stored += [event(6), event(7), event(8)]
        hub.publish(event(6))
        hub.publish(event(6))  # a redelivery: skipped
        hub.publish(event(8))  # 7 never arrived live: filled from the table
        assert await _take(events, 3) == [6, 7, 8]
    assert len(hub) == 0


async def test_subscription_resyncs_from_the_table_after_a_consumer_restart() -> None:
    table = MemoryEvents([event(1)])
    hub = Hub()
    async with Subscription(hub, table.load, CONVERSATION, after=0) as events:
        assert await _take(events, 1) == [1]
        table.stored += [event(2), event(3)]  # published while the consumer was away
        hub.resync_all()
        assert await _take(events, 2) == [2, 3]


class CountingEvents(MemoryEvents):
    """The table, counting its reads."""

    def __init__(self, stored: list[Envelope]) -> None:
        super().__init__(stored)
        self.reads: list[int] = []

    async def load(
        self, conversation_id: str, after: int, before: int | None = None
    ) -> AsyncIterator[Envelope]:
        self.reads.append(after)
        async for envelope in super().load(conversation_id, after, before):
            yield envelope


async def test_a_primed_subscription_starts_with_its_page_and_reads_the_table_only_past_a_full_one() -> None:
    table = CountingEvents([event(seq) for seq in range(1, 7)])
    hub = Hub()
    whole = Subscription(hub, table.load, CONVERSATION, after=1)
    whole.register()
    hub.publish(event(3))  # published between the registration and the read: not shown twice
    whole.prime(fanout.Opening("alice", [event(2), event(3)], complete=True))
    async with whole as events:
        assert await _take(events, 2) == [2, 3]
        hub.publish(event(4))
        assert await _take(events, 1) == [4]
    assert table.reads == []

    partial = Subscription(hub, table.load, CONVERSATION, after=0)
    partial.register()
    partial.prime(fanout.Opening("alice", [event(1), event(2)], complete=False))
    async with partial as events:
        assert await _take(events, 6) == [1, 2, 3, 4, 5, 6]
    assert table.reads == [2]
    assert len(hub) == 0


def test_a_subscription_closed_before_it_streams_stops_queueing() -> None:
    hub = Hub()
    subscription = Subscription(hub, MemoryEvents([]).load, CONVERSATION, after=0)
    subscription.register()
    assert hub.publish(event(1)) == 1
    subscription.close()
    subscription.close()
    assert len(hub) == 0 and hub.publish(event(2)) == 0


async def test_a_slow_subscription_ends_so_the_client_can_resume() -> None:
    hub = Hub(queue_size=1)
    async with Subscription(hub, MemoryEvents([]).load, CONVERSATION, after=0) as events:
        hub.publish(event(1))
        hub.publish(event(2))  # overflow
        with pytest.raises(SlowConsumer):
            await _take(events, 5)


def test_event_latency_is_measured_from_the_envelope_timestamp() -> None:
    envelope = event(1)
    assert fanout.observe_latency(envelope, now=envelope.ts + timedelta(milliseconds=250)) == pytest.approx(
        0.25
    )
    naive = envelope.model_copy(update={"ts": datetime(2026, 1, 1)})
    assert fanout.observe_latency(naive, now=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)) == pytest.approx(1.0)


# --- the app without backing services --------------------------------------------------------

SECRET = "unit-test-jwt-secret-0123456789-abcdef"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        stack=StackSettings(),
        kafka=KafkaSettings(),
        redis=RedisSettings(),
        postgres=PostgresSettings(),
        opa=OpaSettings(),
        # TestClient's requests name the host "testserver": answered besides loopback names.
        gateway=GatewaySettings(
            jwt_secret=SecretStr(SECRET), max_body_bytes=1024, allowed_hosts=("testserver",)
        ),
        worker=WorkerSettings(),
        tools=ToolSettings(),
        llm=LLMSettings(),
        llm_sim=LLMSimSettings(),
        telemetry=TelemetrySettings(),
    )


@pytest.fixture
def client(settings: Settings) -> TestClient:
    # Not entered as a context manager: the lifespan (Kafka, Redis, ...) does not run.
    return TestClient(create_app(settings), raise_server_exceptions=False)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert error["message"]
    return error


def test_health_needs_no_token(client: TestClient) -> None:
    response = client.get("/health")
    assert response.json() == {"status": "ok", "replica": "gw-1"}
    assert response.headers["X-Request-ID"]


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert "/nope" in assert_error(client.get("/nope"), 404, "not_found")["message"]
    assert_error(client.delete("/health"), 405, "method_not_allowed")


def test_missing_or_bad_token_is_401_with_bearer_challenge(client: TestClient) -> None:
    response = client.get("/v1/me")
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_error(client.get("/v1/me", headers={"Authorization": "Bearer nonsense"}), 401, "unauthorized")


def test_me_answers_from_the_token(client: TestClient, settings: Settings) -> None:
    token = mint_token(settings, "alice", ["user", "admin"])
    response = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.json() == {"user_id": "alice", "roles": ["user", "admin"]}


def test_malformed_json_and_invalid_fields(client: TestClient) -> None:
    assert_error(client.post("/v1/auth/dev-login", content=b"{nope"), 400, "malformed_json")
    error = assert_error(
        client.post("/v1/auth/dev-login", json={"user": "no spaces"}), 422, "invalid_request"
    )
    assert error["message"].startswith("user:")


def test_dev_login_mints_a_token_for_the_user(client: TestClient) -> None:
    response = client.post("/v1/auth/dev-login", json={"user": "alice"})
    body = response.json()
    assert body["user_id"] == "alice" and body["expires_in"] > 0
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.json()["user_id"] == "alice"


def test_dev_login_is_404_when_disabled(settings: Settings) -> None:
    closed = settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"dev_login": False})})
    client = TestClient(create_app(closed))
    assert_error(client.post("/v1/auth/dev-login", json={"user": "alice"}), 404, "not_found")


def test_bodies_over_the_limit_are_413_declared_or_streamed(client: TestClient) -> None:
    big = json.dumps({"user": "a" * 2000}).encode()
    assert_error(client.post("/v1/auth/dev-login", content=big), 413, "payload_too_large")

    def chunks() -> Any:
        yield big[:1000]
        yield big[1000:]

    assert_error(client.post("/v1/auth/dev-login", content=chunks()), 413, "payload_too_large")


def test_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/nope", headers={"X-Request-ID": "trace-me-1"})
    assert response.headers["X-Request-ID"] == "trace-me-1"
    assert response.json()["error"]["request_id"] == "trace-me-1"


def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    for response in (
        client.get("/health"),
        client.get("/nope"),
        client.post("/v1/auth/dev-login", content=b"x" * 5000),  # refused by the middleware itself
    ):
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert len(response.headers.get_list("Content-Security-Policy")) == 1


@pytest.mark.parametrize(
    ("message", "title"),
    [
        ("hello there", "hello there"),
        ("\n\n## Plan a trip to Kyoto\nwith temples", "Plan a trip to Kyoto"),
        ("- `pip install a0`  now", "pip install a0 now"),
        ("> quoted\n", "quoted"),
        ("```python\nprint(1)\n```", "print(1)"),  # a fence line names no subject
        ("x" * 80, "x" * 59 + "…"),
        ("  \n\t\n", "New chat"),
    ],
)
def test_a_conversation_is_titled_after_its_first_message(message: str, title: str) -> None:
    assert title_from_message(message) == title


def test_not_ready_while_starting(client: TestClient) -> None:
    assert client.get("/ready").status_code == 503


def test_metrics_are_prometheus_text_for_loopback_clients(settings: Settings) -> None:
    local = TestClient(create_app(settings), client=("127.0.0.1", 50000))
    local.get("/health")
    response = local.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "a0_gateway_requests_total" in response.text


def test_metrics_need_the_token_from_elsewhere(settings: Settings) -> None:
    remote = TestClient(create_app(settings), client=("203.0.113.7", 50000), raise_server_exceptions=False)
    assert_error(remote.get("/metrics"), 403, "forbidden")
    with_token = settings.model_copy(
        update={"gateway": settings.gateway.model_copy(update={"metrics_token": SecretStr("m" * 32)})}
    )
    remote = TestClient(create_app(with_token), client=("203.0.113.7", 50000), raise_server_exceptions=False)
    assert_error(remote.get("/metrics", headers={"Authorization": "Bearer wrong"}), 403, "forbidden")
    assert remote.get("/metrics", headers={"Authorization": "Bearer " + "m" * 32}).status_code == 200


def test_openapi_lists_each_routes_error_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            errors = {code for code in operation["responses"] if code.startswith("4")}
            assert errors, f"{method.upper()} {path} lists no 4xx response"
            for code in errors:
                schema = operation["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, code)
    messages = spec["paths"]["/v1/conversations/{conversation_id}/messages"]["post"]["responses"]
    assert {"401", "404", "413", "422", "429"} <= set(messages)
    deletion = spec["paths"]["/v1/conversations/{conversation_id}"]["delete"]["responses"]
    assert {"204", "401", "403", "404"} <= set(deletion)
    probe = spec["paths"]["/v1/settings/credentials/{provider}/test"]["post"]["responses"]
    assert {"200", "400", "401", "403", "422"} <= set(probe)


# --- text and JSON that cannot be stored or parsed -----------------------------------------


@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "x\udfffy"])
def test_unstorable_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="NUL|surrogate"):
        storable_text(text)


def test_ordinary_text_passes_unchanged() -> None:
    assert storable_text("héllo 👋 \t\n") == "héllo 👋 \t\n"


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert not json_too_deep('{"a": [1, {"b": "' + "[" * 100 + '"}]}', limit=3)
    assert json_too_deep('{"a": [1, {"b": [[]]}]}', limit=3)
    assert json_too_deep("[" * 100 + "]" * 100)
    assert not json_too_deep("[" * 32 + "]" * 32)


def test_remembered_owners_are_bounded_and_the_least_recently_used_go_first() -> None:
    owners = Owners(size=2)
    owners.remember("c1", "alice")
    owners.remember("c2", "bob")
    assert owners.get("c1") == "alice"  # c1 is now the most recently used
    owners.remember("c3", "carol")
    assert (owners.get("c1"), owners.get("c2"), owners.get("c3")) == ("alice", None, "carol")
    owners.forget("c1")
    assert owners.get("c1") is None and len(owners) == 1
    owners.clear()  # the gateway went quiet
    assert owners.get("c3") is None and len(owners) == 0
    owners.remember("c3", "carol")
    assert owners.get("c3") == "carol"
