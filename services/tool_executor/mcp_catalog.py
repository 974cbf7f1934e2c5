"""Every MCP server of mcp.yaml (:class:`~services.tool_executor.mcp_client.McpServer`
each): keeps the executor's tool registry in step with them and writes the catalog the
workers offer (:func:`services.common.tools.publish_catalog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from services.common.mcp_servers import SEPARATOR, McpConfig
from services.common.policy import PolicyClient
from services.common.settings import Settings
from services.common.ticks import sleep_to_tick
from services.common.tools import ToolSpec
from services.tool_executor.cgroups import RunCgroups
from services.tool_executor.mcp_client import McpPending, McpServer, McpTool

log = logging.getLogger(__name__)


class McpServers:
    """Every server of mcp.yaml; ``registry`` (the executor's tools by name) follows them."""

    def __init__(
        self,
        config: McpConfig,
        settings: Settings,
        registry: dict[str, Any],
        on_catalog: Callable[[list[ToolSpec], list[dict[str, Any]]], Awaitable[None]] | None = None,
        policy: PolicyClient | None = None,
        cgroups: RunCgroups | None = None,
    ) -> None:
        self.registry = registry
        self.on_catalog = on_catalog
        self.servers = {
            name: McpServer(name, spec, settings, self._changed, policy, cgroups)
            for name, spec in config.servers.items()
        }
        self.tasks: list[asyncio.Task[None]] = []
        self._dirty = asyncio.Event()

    def _changed(self) -> None:
        for server in self.servers.values():
            for name in list(self.registry):
                if (
                    isinstance(self.registry[name], McpTool | McpPending)
                    and self.registry[name].server is server
                ):
                    del self.registry[name]
            if server.state == "ready":
                self.registry.update(server.tools)
            else:  # not offered, but a call (a model's, a0ctl's) learns why
                for name in server.spec.tools:
                    full = f"{server.name}{SEPARATOR}{name}"
                    self.registry[full] = McpPending(server, full)
        self._dirty.set()

    def catalog(self) -> list[ToolSpec]:
        return [tool.spec for tool in self.registry.values() if isinstance(tool, McpTool)]

    def status(self) -> list[dict[str, Any]]:
        return [server.describe() for server in self.servers.values()]

    async def _publish(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.on_catalog is not None:
                try:
                    await self.on_catalog(self.catalog(), self.status())
                except Exception as exc:  # the next change, or the next period, tries again
                    log.warning("could not publish the MCP tool catalog: %s", exc)
                    await asyncio.sleep(1)
                    self._dirty.set()

    async def _refresh(self) -> None:
        # The catalog expires unless refreshed: an executor that is gone stops offering tools.
        while True:
            await sleep_to_tick(10)
            self._dirty.set()

    async def start(self) -> None:
        self.tasks = [
            asyncio.create_task(server.supervise(), name=f"mcp-{name}")
            for name, server in self.servers.items()
        ]
        self.tasks.append(asyncio.create_task(self._publish(), name="mcp-catalog"))
        self.tasks.append(asyncio.create_task(self._refresh(), name="mcp-catalog-refresh"))
        self._dirty.set()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
