"""The tool executor service: consumes ``tool.requests``, runs tools under policy,
publishes ``tool.results``."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import uvloop

from services.common import mcp_servers, metrics
from services.common.bootstrap import ServiceStack, run_consumer_service
from services.common.consumer import ConsumerLoop
from services.common.db import schema_at_head
from services.common.errors import ConfigError
from services.common.logging import setup_logging
from services.common.settings import Settings
from services.common.telemetry import setup_tracing
from services.common.tools import publish_catalog
from services.common.topics import TOOL_REQUESTS, dead_letter_topic
from services.tool_executor.cgroups import CgroupError, RunCgroups, parent_name, prepare
from services.tool_executor.confinement import ConfinementError, confinement
from services.tool_executor.handlers import ToolExecutor
from services.tool_executor.mcp_catalog import McpServers
from services.tool_executor.mcp_connect import prepare_binds
from services.tool_executor.privileges import drop_root
from services.tool_executor.sandbox_limits import SandboxLimits
from services.tool_executor.tools import load_tools

log = logging.getLogger(__name__)
GROUP = "a0-tool-executor"


async def open_executor(stack: ServiceStack, cgroups: RunCgroups | None = None) -> ConsumerLoop:
    """Everything the tool executor holds, opened on ``stack``, and its consumer loop."""
    settings = stack.settings
    connections = settings.tools.max_inflight + 2
    tools = load_tools()
    redis = stack.redis()
    policy = stack.policy()
    servers = McpServers(
        mcp_servers.load(settings), settings, tools, partial(publish_catalog, redis), policy, cgroups
    )
    await stack.started(servers.start, servers.stop)
    executor = ToolExecutor(
        # Opened at full size, as the worker's: one per tool call in flight, and two more.
        pool=await stack.pool("tool-executor", min_size=connections, max_size=connections),
        producer=await stack.producer("tool-executor"),
        policy=policy,
        tools=tools,
        limits=SandboxLimits.from_settings(settings.tools, cgroups),
    )
    log.info(
        "tools: %s; MCP servers: %s", ", ".join(sorted(executor.tools)), ", ".join(servers.servers) or "none"
    )
    loop = ConsumerLoop(
        settings,
        topics=[TOOL_REQUESTS],
        group_id=GROUP,
        handler=executor.handle,
        dead_letter_topic=dead_letter_topic("tool-executor"),
        producer=executor.producer,
        max_in_flight=settings.tools.max_inflight,
    )
    executor.seen_before = loop.may_have_been_handled
    return loop


def run_cgroups(settings: Settings) -> RunCgroups | None:
    """The parent cgroup of every run, made while still root; without one the executor
    refuses to start, unless unbounded runs are allowed (development), loudly."""
    name = parent_name(settings.stack.state_path, settings.tools.metrics_port)
    try:
        cgroups = prepare(name, settings.tools.run_as)
    except CgroupError as exc:
        if not settings.tools.allow_unbounded:
            raise ConfigError(
                f"{exc}; tool runs would not be bounded (memory, processes, CPU per run)",
                hint="run the executor as root on a machine with cgroup memory, pids and cpu "
                "controllers, or set A0_TOOLS_ALLOW_UNBOUNDED=true for development",
            ) from None
        log.warning("UNBOUNDED tool runs (A0_TOOLS_ALLOW_UNBOUNDED=true): %s", exc)
        return None
    log.info("each tool run gets its own cgroup under %s", cgroups.describe())
    return cgroups


def serve(settings: Settings) -> None:
    setup_logging("tool-executor")
    setup_tracing(settings, "tool-executor")
    cgroups = run_cgroups(settings)  # while root; on cgroup v2 the executor moves into the subtree
    metrics.serve_metrics(settings.tools.metrics_port, settings.stack.host)
    prepare_binds(mcp_servers.load(settings), settings)
    if not asyncio.run(schema_at_head(settings)):
        import services.common.schema  # noqa: F401  # alembic, to migrate: imported before root is dropped (see privileges)
    drop_root(settings.tools.run_as)
    try:
        confinement(settings.tools.sandbox_python)  # fail here, not at the first tool call
    except ConfinementError as exc:
        log.error("run_python will fail: %s", exc)
    uvloop.run(run_consumer_service(settings, partial(open_executor, cgroups=cgroups)))
