"""The conversation worker service: consumes ``conversation.inbound`` (as a group) and
``tool.results`` (every partition), runs turns, publishes ``conversation.outbound`` and
``tool.requests``."""

from __future__ import annotations

import logging
from typing import Any

import uvloop

from services.common import metrics
from services.common.bootstrap import ServiceStack, run_consumer_service
from services.common.consumer import ConsumerLoop
from services.common.credentials import CredentialStore
from services.common.logging import setup_logging
from services.common.settings import Settings
from services.common.telemetry import setup_tracing
from services.common.ticks import sleep_to_tick
from services.common.tools import read_catalog, tool_catalog
from services.common.topics import INBOUND, dead_letter_topic
from services.conversation_worker.events import EventLog
from services.conversation_worker.handlers import TurnRunner
from services.conversation_worker.llm import LLMClients
from services.conversation_worker.results import ToolResults
from services.conversation_worker.turns import TranscriptCache, TurnStore

log = logging.getLogger(__name__)
GROUP = "a0-conversation-worker"
# PostgreSQL connections of one worker process.
POOL_CONNECTIONS = 32
# How often the MCP servers' tools are read again (services/common/tools.py's catalog).
CATALOG_REFRESH_S = 5.0


async def open_worker(stack: ServiceStack) -> ConsumerLoop:
    """Everything the worker holds, opened on ``stack``, and its consumer loop."""
    settings = stack.settings
    # Opened at full size: a pool grows too slowly for a burst (figures: docs/runbook.md,
    # "Why the pools are opened at full size").
    pool = await stack.pool("conversation-worker", min_size=POOL_CONNECTIONS, max_size=POOL_CONNECTIONS)
    redis = stack.redis()
    policy = stack.policy()
    producer = await stack.producer("conversation-worker")
    credentials = CredentialStore(settings, pool, redis, policy)
    await stack.started(credentials.start_listening, credentials.stop_listening)
    llm = stack.closing(LLMClients(settings, credentials))
    results = ToolResults(settings, producer)
    await stack.started(results.start, results.stop)
    transcripts = TranscriptCache(
        settings.worker.transcript_cache_mb * 2**20, settings.worker.transcript_idle_s
    )
    stack.background(transcripts.expire_idle(), "transcript-expiry")
    runner = TurnRunner(
        settings,
        store=TurnStore(pool, transcripts),
        producer=producer,
        redis=redis,
        events=EventLog(pool, producer, transcripts),
        results=results,
        llm=llm,
        tool_specs=[spec.openai_tool() for spec in tool_catalog()],
    )
    stack.background(follow_mcp_catalog(runner, redis), "mcp-catalog")
    return ConsumerLoop(
        settings,
        topics=[INBOUND],
        group_id=GROUP,
        handler=runner.handle,
        dead_letter_topic=dead_letter_topic("conversation-worker"),
        producer=producer,
        max_in_flight=settings.worker.max_inflight,
        on_revoked=lambda _: transcripts.clear(),
    )


async def follow_mcp_catalog(runner: TurnRunner, redis: Any) -> None:
    """Offer the built-in and plug-in tools plus the MCP servers' tools the executor lists
    now (its catalog in Redis): a server that starts, stops or changes its tools is
    followed within a refresh, without a restart."""
    local = [spec.openai_tool() for spec in tool_catalog()]
    while True:
        try:
            mcp_specs, _ = await read_catalog(redis)
        except Exception as exc:  # Redis away: keep what is offered, ask again
            log.warning("could not read the MCP tool catalog: %s", exc)
        else:
            runner.tool_specs = local + [spec.openai_tool() for spec in mcp_specs]
        await sleep_to_tick(CATALOG_REFRESH_S)


def serve(settings: Settings) -> None:
    setup_logging("conversation-worker")
    setup_tracing(settings, "conversation-worker")
    metrics.serve_metrics(settings.worker.metrics_port, settings.stack.host)
    uvloop.run(run_consumer_service(settings, open_worker))
