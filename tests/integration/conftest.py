"""The integration tier: one session-scoped stack, brought up by the same code as
``a0ctl up`` (local runtime, real Kafka, Redis, PostgreSQL, OPA and a0's services)."""

from tests.support.stack import client, settings, stack

__all__ = ["client", "settings", "stack"]
