"""The hostile tier: real turns through gateway → Kafka → worker → tool executor, with
tool code and input that try to get out. One stack for the tier, as in integration."""

from __future__ import annotations

from tests.support.stack import client, settings, stack

__all__ = ["client", "settings", "stack"]
