"""A turn's status, one enum for every service: the gateway queues a turn (in the
transaction that publishes its message: a message the broker refuses leaves no row),
the worker runs and ends it, and the open-turn budget counts the turns not ended yet.
Stored in ``turns.status`` as its value."""

from __future__ import annotations

from enum import StrEnum


class TurnStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL = frozenset({TurnStatus.COMPLETED, TurnStatus.CANCELLED, TurnStatus.FAILED})
OPEN = frozenset({TurnStatus.QUEUED, TurnStatus.RUNNING})


def sql_list(statuses: frozenset[TurnStatus]) -> str:
    """A set of statuses as an SQL list literal, for statements built once at import:
    ``('cancelled', 'completed', 'failed')``."""
    return "(" + ", ".join(f"'{status.value}'" for status in sorted(statuses)) + ")"


TERMINAL_SQL = sql_list(TERMINAL)
OPEN_SQL = sql_list(OPEN)
