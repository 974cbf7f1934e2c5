"""Gateways side by side on one backbone: a conversation followed on another replica, a
change made through another, and load shed (per user, and past the turns in flight)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import psycopg
import pytest
import redis.asyncio

from services.common.db import open_pool
from services.common.envelope import new_id
from services.common.open_turns import OPEN_TURNS_KEY, OPEN_TURNS_QUERY, Reconciler
from services.common.settings import Settings
from tests.support.gateway import (
    auth,
    collect_turn,
    create_conversation,
    post_message,
    send_and_collect,
    sse_events,
    streaming_clients,
)
from tests.support.processes import running_gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_message_posted_on_one_gateway_streams_to_a_client_on_another(
    settings: Settings, client, tmp_path: Path
) -> None:
    with running_gateway(tmp_path, A0_GATEWAY_REPLICA="gw-2") as other_url:
        async with httpx.AsyncClient(base_url=other_url, timeout=30) as other:
            assert (await other.get("/health")).json()["replica"] == "gw-2"
            headers = auth(settings, "alice")
            conversation_id = await create_conversation(client, headers)
            # Subscribed before the message exists: what arrives is the live fan-out.
            events = sse_events(other, headers, conversation_id)
            first = asyncio.ensure_future(anext(events))
            await eventually(lambda: streaming_clients(other), 30, "the client subscribed on gw-2")
            accepted = await post_message(client, headers, conversation_id, "compute 2+3")

            async def rest():
                yield await first
                async for event in events:
                    yield event

            turn = await asyncio.wait_for(collect_turn(rest(), accepted["turn_id"]), 60)
            await events.aclose()
    assert turn[-1]["type"] == "message.completed" and "5" in turn[-1]["payload"]["content"]


async def test_a_gateway_that_knows_a_conversation_still_sees_its_policy_change_and_its_deletion(
    settings: Settings, client, tmp_path: Path
) -> None:
    """A gateway that already took messages for a conversation authorizes the next ones
    without reading its row; a change made through another replica still holds."""
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    url = f"/v1/conversations/{conversation_id}/messages"
    events = sse_events(client, headers, conversation_id)
    first = await post_message(client, headers, conversation_id, "compute 1+1")
    await asyncio.wait_for(collect_turn(events, first["turn_id"]), 60)
    await events.aclose()
    with running_gateway(tmp_path, A0_GATEWAY_REPLICA="gw-2") as other_url:
        async with httpx.AsyncClient(base_url=other_url, timeout=30) as other:
            changed = await other.patch(
                f"/v1/conversations/{conversation_id}", json={"policy": "reject"}, headers=headers
            )
            assert changed.status_code == 200, changed.text
            await post_message(client, headers, conversation_id, "long answer please")
            refused = await client.post(url, json={"content": "and now?"}, headers=headers)
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict", refused.text

            bob = await client.post(url, json={"content": "hi"}, headers=auth(settings, "bob"))
            assert bob.status_code == 404, bob.text

            deleted = await other.delete(f"/v1/conversations/{conversation_id}", headers=headers)
            assert deleted.status_code == 204, deleted.text
    gone = await client.post(url, json={"content": "still there?"}, headers=headers)
    assert gone.status_code == 404, gone.text
    assert gone.json()["error"]["message"] == f"no conversation {conversation_id}"


async def test_gateway_sheds_load_with_429_and_retry_after(settings: Settings, tmp_path: Path) -> None:
    with running_gateway(tmp_path, A0_GATEWAY_RATE_PER_USER_PER_MIN="2") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as limited:
            headers = auth(settings, "ratelimited-user")
            conversation_id = await create_conversation(limited, headers)
            for _ in range(2):
                await post_message(limited, headers, conversation_id, "hello")
            refused = await limited.post(
                f"/v1/conversations/{conversation_id}/messages",
                json={"content": "one too many"},
                headers=headers,
            )
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["retry-after"]) <= 60


async def open_turns_settled(settings: Settings) -> int:
    """The open turns, once earlier tests' turns have ended and the shared counter agrees
    with the table (the budget is a Redis counter, reconciled every few seconds)."""
    seen: list[int] = []
    async with (
        await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as db,
        redis.asyncio.from_url(settings.redis_url) as store,
    ):

        async def settled() -> bool:
            row = await (await db.execute(OPEN_TURNS_QUERY)).fetchone()
            seen.append(int(row[0]) if row else 0)
            counter = int(await store.get(OPEN_TURNS_KEY) or 0)
            return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3] == counter

        await eventually(settled, 30, "open turns steady and the counter agreeing", poll_s=0.5)
    return seen[-1]


async def test_reconciling_takes_back_lost_reservations_but_none_in_flight(settings: Settings) -> None:
    # A counter of its own (the stack's gateways reconcile the real one), set against the
    # stack's turns table, counted once no earlier test's turn is still ending.
    key = f"a0:test:open-turns:{new_id()}"
    pool = await open_pool(settings, name="test-reconcile", min_size=1, max_size=1)
    try:
        async with pool.connection() as conn:

            async def count() -> int:
                row = await (await conn.execute(OPEN_TURNS_QUERY)).fetchone()
                return int(row[0]) if row else 0

            seen: list[int] = []

            async def steady() -> bool:
                seen.append(await count())
                return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

            await eventually(steady, 30, "the open turns steady", poll_s=0.5)
        counted = seen[-1]
        async with redis.asyncio.from_url(settings.redis_url) as store:
            reconciler = Reconciler(store, pool, key=key)
            try:
                await store.set(key, counted + 3)  # three reservations whose turns never came
                await reconciler.round()
                assert int(await store.get(key) or 0) == counted + 3  # they may still be on their way
                await store.incr(key)  # a reservation on its way at the next round
                await reconciler.round()
                assert int(await store.get(key) or 0) == counted + 1  # the lost three taken back, not it
                await store.decr(key)  # its turn was not accepted: given back
                await store.set(key, 0)  # Redis restarted empty
                await reconciler.round()
                assert int(await store.get(key) or 0) == counted  # a shortfall is made up at once
            finally:
                await store.delete(key)
    finally:
        await pool.close()


async def test_past_its_turns_in_flight_the_gateway_sheds_with_429_until_a_turn_ends(
    settings: Settings, tmp_path: Path
) -> None:
    # Room for exactly one more turn than are open now, on a gateway that has seen no
    # turn end yet: its budget is the floor alone.
    open_now = await open_turns_settled(settings)
    with running_gateway(tmp_path, A0_GATEWAY_MAX_INFLIGHT_TURNS=str(open_now + 1)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as gateway:
            headers = auth(settings, "shed-user")
            busy = await create_conversation(gateway, headers)
            other = await create_conversation(gateway, headers)
            events = sse_events(gateway, headers, busy)
            accepted = await post_message(gateway, headers, busy, "long answer please")
            refused = await gateway.post(
                f"/v1/conversations/{other}/messages", json={"content": "hello"}, headers=headers
            )
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["retry-after"]) >= 1
            turn = await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 60)
            await events.aclose()
            assert turn[-1]["type"] == "message.completed"

            # The answered turn gave its slot back: the next message is accepted.
            async def accepted_again() -> bool:
                again = await gateway.post(
                    f"/v1/conversations/{other}/messages", json={"content": "hello"}, headers=headers
                )
                assert again.status_code in (202, 429), again.text
                return again.status_code == 202

            await eventually(accepted_again, 5, "a message accepted once the turn ended")


async def test_the_turn_budget_grows_with_the_rate_turns_end_at_past_the_floor(
    settings: Settings, tmp_path: Path
) -> None:
    # The same floor as above, but turns may stay open a minute: once this gateway has
    # seen turns end, its budget is the rate they end at times 60 s, and a second turn
    # in flight is accepted where the floor alone would shed it.
    open_now = await open_turns_settled(settings)
    floor = open_now + 1
    with running_gateway(
        tmp_path, A0_GATEWAY_MAX_INFLIGHT_TURNS=str(floor), A0_GATEWAY_SHED_TURN_S="60"
    ) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as gateway:
            headers = auth(settings, "budget-user")
            quick = await create_conversation(gateway, headers)
            for _ in range(3):  # turns end, one after another: the gateway reads their rate
                events = await send_and_collect(gateway, headers, quick, "hello")
                assert events[-1]["type"] == "message.completed", events
                await asyncio.sleep(0.3)  # a pause: a rate is read from readings 0.5 s apart
            busy = await create_conversation(gateway, headers)
            other = await create_conversation(gateway, headers)
            stream = sse_events(gateway, headers, busy)
            accepted = await post_message(gateway, headers, busy, "long answer please")
            second = await gateway.post(
                f"/v1/conversations/{other}/messages", json={"content": "hello"}, headers=headers
            )
            assert second.status_code == 202, second.text
            metrics = (await gateway.get("/metrics")).text
            budget = next(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("a0_gateway_turn_budget ")
            )
            assert budget > floor, metrics
            turn = await asyncio.wait_for(collect_turn(stream, accepted["turn_id"]), 60)
            await stream.aclose()
            assert turn[-1]["type"] == "message.completed"
