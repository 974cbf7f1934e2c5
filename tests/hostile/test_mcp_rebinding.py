"""An MCP server's host name that resolves publicly when the egress policy checks it:
the executor's connection goes to the checked address, never to a second answer (here
the system's own: `localhost`, loopback), so a name rebound after the check cannot
point it at an address the policy refuses. No connection reaches the loopback target."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from services.common import mcp_servers
from services.common.policy import PolicyClient
from services.common.settings import Settings
from services.tool_executor.mcp_catalog import McpServers
from services.tool_executor.mcp_connect import PinnedTransport
from tests.support.waiting import eventually

pytestmark = pytest.mark.hostile

PUBLIC = "93.184.215.14"


class Listener:
    """The loopback target: counts the connections made to it and the Host each asked for."""

    def __init__(self) -> None:
        self.connections = 0
        self.hosts: list[str] = []

    async def accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        self.hosts += [
            line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("host:")
        ]
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def _public(host: str, port: int) -> list[str]:
    return [PUBLIC]


async def test_a_server_name_resolving_elsewhere_after_the_check_is_never_connected_to(
    settings: Settings,
) -> None:
    listener = Listener()
    target = await asyncio.start_server(listener.accepted, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    config = mcp_servers.parse(
        f"version: 1\nservers:\n  rebound:\n    transport: http\n    url: https://localhost:{port}/mcp\n"
        "    tools: {echo: }\n    allow: {roles: [user]}\n"
    )
    policy = PolicyClient(settings)
    registry: dict[str, Any] = {}
    servers = McpServers(config, settings, registry, policy=policy)
    server = servers.servers["rebound"]
    server.resolver = _public  # what the check sees: a public address, which OPA allows
    try:
        await servers.start()
        await eventually(lambda: server.restarts >= 2, 60, "connections tried and failed", poll_s=0.2)
        assert server.state == "restarting"
        assert "not allowed" not in server.detail  # the check passed: it was the connection that failed
        assert listener.connections == 0

        # The same transport aimed at the loopback address (as if that had been checked)
        # reaches it, with the server's name as Host: the pin is what kept it out above.
        async with httpx2.AsyncClient(transport=PinnedTransport(["127.0.0.1"])) as http:
            response = await http.get(f"http://rebound.invalid:{port}/mcp")
        assert response.status_code == 404
        assert listener.connections == 1 and listener.hosts == [f"rebound.invalid:{port}"]
    finally:
        async with asyncio.timeout(15):  # its supervisor stops, whatever it was doing
            await servers.stop()
        await policy.aclose()
        target.close()
        await target.wait_closed()


async def test_a_transport_without_checked_addresses_connects_nowhere() -> None:
    async with httpx2.AsyncClient(transport=PinnedTransport([])) as http:
        with pytest.raises(httpx2.ConnectError, match="no address the egress policy checked"):
            await http.get("http://localhost:9/")
