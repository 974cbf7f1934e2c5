"""The executor's MCP client against the reference server over streamable HTTP (a real
server-everything process, from scripts/vendor-mcp.sh): listing, calling, and what a
call answers while its server cannot be reached."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from services.common import mcp_servers
from services.common.settings import load_settings
from services.tool_executor.mcp_catalog import McpServers
from services.tool_executor.mcp_client import McpTool
from services.tool_executor.tools import ToolContext, ToolError
from tests.conftest import ROOT
from tests.support.waiting import eventually

pytestmark = pytest.mark.unit

EVERYTHING = ROOT / "stack/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        ["node", str(EVERYTHING), "streamableHttp"],
        env={"PATH": "/usr/bin:/bin", "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


def _config(url: str) -> mcp_servers.McpConfig:
    return mcp_servers.parse(
        f"version: 1\nservers:\n  remote:\n    transport: http\n    url: {url}\n"
        "    tools: {echo: {timeout_s: 5}, get-sum: }\n    allow: {roles: [user]}\n"
    )


def _ctx() -> ToolContext:
    return ToolContext(call_id="c1", user_id="alice", conversation_id="conv")


async def test_an_http_server_is_listed_and_called(http_server: str) -> None:
    registry: dict[str, Any] = {}
    catalogs: list[list[str]] = []

    async def publish(specs: list[Any], servers: list[dict[str, Any]]) -> None:
        catalogs.append([spec.name for spec in specs])

    servers = McpServers(_config(http_server), load_settings(), registry, publish)
    await servers.start()
    try:
        await eventually(lambda: isinstance(registry.get("remote__echo"), McpTool), 20, "the server's tools")
        assert sorted(n for n, t in registry.items() if isinstance(t, McpTool)) == [
            "remote__echo",
            "remote__get-sum",
        ]
        tool = registry["remote__get-sum"]
        assert tool.spec.description.startswith("[MCP server remote]")
        assert tool.spec.parameters["type"] == "object" and "a" in tool.spec.parameters["properties"]
        assert await registry["remote__echo"].run({"message": "over http"}, _ctx()) == "Echo: over http"
        output, _ = await tool.call({"a": 2, "b": 3})
        assert "5" in output
        await eventually(lambda: any("remote__echo" in c for c in catalogs), 5, "the catalog published")
    finally:
        await servers.stop()


async def test_a_call_while_the_server_cannot_be_reached_answers_unavailable() -> None:
    registry: dict[str, Any] = {}
    servers = McpServers(_config(f"http://127.0.0.1:{_free_port()}/mcp"), load_settings(), registry)
    await servers.start()
    try:
        await eventually(lambda: servers.servers["remote"].state == "restarting", 20, "the connection failed")
        assert not [t for t in registry.values() if isinstance(t, McpTool)]  # nothing offered
        with pytest.raises(ToolError) as raised:
            await registry["remote__echo"].run({"message": "x"}, _ctx())
        assert raised.value.code == "unavailable"
        assert raised.value.message.startswith("MCP server remote is restarting (")
    finally:
        await servers.stop()
    assert all(task.done() for task in servers.tasks)
