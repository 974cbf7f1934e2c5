"""The worker's transcript cache: what a turn start reads after, what it keeps, and what
it lets go."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from services.conversation_worker.turns import TranscriptCache

pytestmark = pytest.mark.unit


def _row(position: int, key: str, content: str = "x") -> tuple[int, str, str]:
    return position, key, orjson.dumps({"role": "user", "content": content}).decode()


def test_a_conversation_is_read_whole_once_then_after_its_last_row() -> None:
    cache = TranscriptCache(max_bytes=1 << 20)
    assert cache.after("c1") == 0
    first = cache.merge("c1", [_row(3, "user:a"), _row(7, "assistant:t1:0")])
    assert list(first.messages) == ["user:a", "assistant:t1:0"]
    assert cache.after("c1") == 7
    second = cache.merge("c1", [_row(9, "tool:t1:x"), _row(12, "user:b")])
    assert list(second.messages) == ["user:a", "assistant:t1:0", "tool:t1:x", "user:b"]
    assert cache.after("c1") == 12


def test_a_turn_adding_to_its_transcript_does_not_change_what_is_kept() -> None:
    cache = TranscriptCache(max_bytes=1 << 20)
    transcript = cache.merge("c1", [_row(1, "user:a")])
    transcript.add("assistant:t1:0", {"role": "assistant", "content": "not stored yet"})
    assert list(cache.merge("c1", []).messages) == ["user:a"]


def test_a_row_read_again_keeps_its_first_place() -> None:
    cache = TranscriptCache(max_bytes=1 << 20)
    cache.merge("c1", [_row(1, "user:a", "first")])
    again = cache.merge("c1", [_row(5, "user:a", "second"), _row(6, "user:b")])
    assert again.messages["user:a"]["content"] == "first"
    assert list(again.messages) == ["user:a", "user:b"]


def test_least_recently_used_transcripts_go_first_past_the_bound() -> None:
    body_size = len(_row(1, "k")[2])
    cache = TranscriptCache(max_bytes=3 * body_size)
    cache.merge("old", [_row(1, "user:a")])
    cache.merge("used", [_row(2, "user:a")])
    cache.merge("old2", [_row(3, "user:a")])
    cache.merge("used", [])  # used again: now the most recent
    cache.merge("new", [_row(4, "user:a")])
    assert cache.after("old") == 0  # dropped: read whole next time
    assert cache.after("used") == 2 and cache.after("new") == 4
    # One transcript larger than the bound is not kept at all.
    cache.merge("huge", [_row(p, f"user:{p}") for p in range(10, 15)])
    assert cache.after("huge") == 0 and cache.after("new") == 4


def test_revoked_partitions_empty_the_cache() -> None:
    cache = TranscriptCache(max_bytes=1 << 20)
    cache.merge("c1", [_row(1, "user:a")])
    cache.clear()
    assert cache.after("c1") == 0 and len(cache) == 0


def test_a_transcript_unused_for_the_idle_time_is_let_go_and_read_whole_next() -> None:
    now = [1000.0]
    cache = TranscriptCache(max_bytes=1 << 20, idle_s=60, clock=lambda: now[0])
    cache.merge("quiet", [_row(1, "user:a")])
    cache.merge("talking", [_row(2, "user:a")])
    now[0] += 30
    assert cache.expire() == 0 and len(cache) == 2
    cache.merge("quiet", [])  # spoken in again: its minute starts over
    now[0] += 31
    assert cache.expire() == 1 and len(cache) == 1
    assert cache.after("talking") == 0  # let go: its next turn reads it whole
    now[0] += 30
    assert cache.expire() == 1 and len(cache) == 0  # "quiet", 61 s after its last use
    # A turn that asked where to read from has it in use: it stays until it merges.
    cache.merge("asked", [_row(4, "user:a")])
    now[0] += 59
    assert cache.after("asked") == 4
    now[0] += 2
    assert cache.expire() == 0 and cache.after("asked") == 4
    now[0] += 61
    assert cache.expire() == 1
    # The bytes they held are free again: a transcript as large as the whole bound fits.
    cache.max_bytes = len(_row(1, "k")[2])
    cache.merge("next", [_row(3, "user:a")])
    assert cache.after("next") == 3


async def test_a_quiet_worker_lets_go_of_idle_transcripts_without_a_turn() -> None:
    cache = TranscriptCache(max_bytes=1 << 20, idle_s=0.2)
    cache.merge("c1", [_row(1, "user:a")])
    task = asyncio.create_task(cache.expire_idle())
    try:
        for _ in range(50):  # its sweep runs at least once a second
            if not len(cache):
                break
            await asyncio.sleep(0.1)
        assert len(cache) == 0
    finally:
        task.cancel()
