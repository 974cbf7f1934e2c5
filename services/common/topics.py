"""The names of a0's Kafka topics, as the services use them. Every one is declared in
``topics.yaml`` (partitions, configs), which `a0ctl topics apply` provisions; a unit
test holds the two together.

Each consuming service has one dead-letter topic, ``dlq.<service>``
(:func:`dead_letter_topic`), for the records it cannot handle, whichever of its
consumers met them.
"""

from __future__ import annotations

from typing import Literal

INBOUND = "conversation.inbound"
OUTBOUND = "conversation.outbound"
TOOL_REQUESTS = "tool.requests"
TOOL_RESULTS = "tool.results"

ConsumingService = Literal["conversation-worker", "tool-executor", "gateway"]
CONSUMING_SERVICES: tuple[ConsumingService, ...] = ("conversation-worker", "tool-executor", "gateway")


def dead_letter_topic(service: ConsumingService) -> str:
    return f"dlq.{service}"


# The topics a turn travels, and the consumer groups that read them (each service names
# its own group; the ops page reads their committed offsets).
TURN_TOPICS = (INBOUND, OUTBOUND, TOOL_REQUESTS, TOOL_RESULTS)
CONSUMER_GROUPS = ("a0-conversation-worker", "a0-tool-executor")
