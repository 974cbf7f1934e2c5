"""A turn's cost does not grow with its conversation: the worker that owns the
conversation keeps its transcript, so a turn start reads from PostgreSQL only what was
stored since the last one; a worker that starts afresh reads it whole, and the model
sees every message either way."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest

from a0ctl.runtime.local import LocalRuntime
from services.common.settings import Settings
from tests.support.gateway import answer_text, auth, create_conversation, send_and_collect
from tests.support.metrics import scrape, value
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ROWS_READ = "a0_worker_transcript_rows_read_total"
# A tool turn stores four messages: the user's, the call, the result, the answer.
MESSAGES_PER_TURN = 4


async def test_a_long_conversation_reads_only_new_rows_and_remembers_after_a_restart(
    stack: LocalRuntime, settings: Settings
) -> None:
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as client:
        await _long_conversation(stack, settings, client)


async def _long_conversation(stack: LocalRuntime, settings: Settings, client: httpx.AsyncClient) -> None:
    headers = auth(settings, "patient")
    conversation_id = await create_conversation(client, headers)
    remembered = await send_and_collect(client, headers, conversation_id, "remember kumquat")
    assert remembered[-1]["type"] == "message.completed", remembered

    reads = []
    turns = 20
    for n in range(turns):
        before = value(scrape(settings), ROWS_READ)
        events = await send_and_collect(client, headers, conversation_id, f"compute {n}*3")
        assert events[-1]["type"] == "message.completed", events
        assert str(n * 3) in answer_text(events)
        reads.append(value(scrape(settings), ROWS_READ) - before)
    stored = 2 + turns * MESSAGES_PER_TURN
    # The last turn read what the turn before it stored and its own message, not the
    # whole transcript of some 80 messages.
    assert reads[-1] <= MESSAGES_PER_TURN + 1, reads
    assert reads[-1] == reads[1], f"rows read per turn grew with the conversation: {reads}"

    # A worker that starts afresh has nothing kept: it reads the transcript whole.
    await asyncio.to_thread(stack.restart, "conversation-worker")
    before = value(scrape(settings), ROWS_READ)
    recalled = await send_and_collect(client, headers, conversation_id, "what did I ask you to remember?")
    assert "kumquat" in answer_text(recalled), answer_text(recalled)
    assert value(scrape(settings), ROWS_READ) - before >= stored + 1


def conversation_updates(settings: Settings) -> tuple[int, int]:
    """Row updates of ``conversations`` so far, and how many of them were HOT, as the
    backends have published them (up to 10 s after their last statement)."""
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'conversations'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_the_updates_a_turn_makes_to_its_conversation_stay_on_their_page(
    stack: LocalRuntime, settings: Settings
) -> None:
    """Each step of a turn advances its conversation's ``last_seq``: an update that
    touches no indexed column and finds room on its page is HOT (no index entries, the
    old version pruned in place). One that sets an indexed column, or a full page,
    makes every step write index entries again."""
    turns = 3
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as client:
        headers = auth(settings, "frugal")
        conversation_id = await create_conversation(client, headers)
        before = await asyncio.to_thread(conversation_updates, settings)
        for n in range(turns):
            events = await send_and_collect(client, headers, conversation_id, f"compute {n}*5")
            assert events[-1]["type"] == "message.completed", events
    # A tool turn updates its conversation six times: the message, then five steps.
    wait_until(
        lambda: conversation_updates(settings)[0] - before[0] >= 6 * turns, 30, "the turns' updates published"
    )
    updated, hot = (now - then for now, then in zip(conversation_updates(settings), before, strict=True))
    assert hot >= 0.9 * updated, f"{hot} of {updated} updates of conversations were HOT"
