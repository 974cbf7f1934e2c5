"""What a dead letter is to an operator, and the audit record of what was done with it.

An entry is named ``<dead-letter topic>:<partition>:<offset>`` (``dlq.conversation-worker:0:7``):
the place of the copy, which never moves. Its state comes from the audit topic
(``dlq.audit``): pending until someone replays or discards it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from a0ctl.errors import DeadLetterError
from services.common.topics import CONSUMING_SERVICES, dead_letter_topic

# Every replay and discard, one record each, keyed by the entry it is about; kept forever.
AUDIT_TOPIC = "dlq.audit"
DEAD_LETTER_TOPICS = tuple(dead_letter_topic(service) for service in CONSUMING_SERVICES)
# A record that came back to a dead-letter topic after this many replays is not replayed
# again by ``replay --all``, nor by its id without ``--force``: no replay loop.
MAX_REPLAYS = 1

Action = Literal["replay", "discard"]
State = Literal["pending", "replayed", "discarded"]


class AuditRecord(BaseModel):
    """One replay or discard: of which entry, by whom, when, and where a replay went."""

    entry: str
    action: Action
    by: str
    at: datetime
    forced: bool = False
    replayed_to: str | None = None  # <source topic>:<partition>:<offset> of the replayed record


class DeadLetter(BaseModel):
    """One record on a dead-letter topic, with why it is there and what became of it."""

    id: str
    topic: str
    partition: int
    offset: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    reason: str
    group: str | None
    replica: str | None
    time: datetime
    key: str | None
    replay_count: int  # how many replays this record had before it failed again
    state: State = "pending"
    history: list[AuditRecord] = []
    envelope: dict[str, Any] | None = None  # the record as an envelope, secrets masked
    raw: str | None = None  # the record as text (masked), when it is no envelope

    @property
    def looped(self) -> bool:
        """It failed again after its replays: replaying it once more would loop."""
        return self.replay_count >= MAX_REPLAYS


class DeadLetters(BaseModel):
    """What ``dlq list --json`` prints."""

    entries: list[DeadLetter]


class ActionResult(BaseModel):
    """What ``dlq replay`` and ``dlq discard`` print with ``--json``: what was done, and
    what was left alone and why."""

    done: list[AuditRecord]
    skipped: dict[str, str] = {}


def entry_id(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def parse_entry_id(text: str) -> tuple[str, int, int]:
    topic, _, rest = text.partition(":")
    partition, _, offset = rest.partition(":")
    if topic not in DEAD_LETTER_TOPICS or not partition.isdigit() or not offset.isdigit():
        raise DeadLetterError(
            f"not a dead letter's id: {text!r}",
            hint=f"ids look like {entry_id(DEAD_LETTER_TOPICS[0], 0, 7)}; `a0ctl dlq list` shows them",
        )
    return topic, int(partition), int(offset)


def topic_filter(topic: str | None) -> tuple[str, ...]:
    """The dead-letter topics ``--topic`` names: one (``dlq.gateway`` or ``gateway``), or all."""
    if topic is None:
        return DEAD_LETTER_TOPICS
    name = topic if topic.startswith("dlq.") else f"dlq.{topic}"
    if name not in DEAD_LETTER_TOPICS:
        raise DeadLetterError(
            f"no dead-letter topic {topic!r}", hint=f"one of: {', '.join(DEAD_LETTER_TOPICS)}"
        )
    return (name,)
