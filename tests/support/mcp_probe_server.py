"""A tiny MCP server (the official SDK's MCPServer, stdio) for what the reference servers
cannot show: that a cancelled call reaches the server, and that a server's memory is
bounded. Run by the tool executor in its sandbox (tests/support/mcp.yaml), with one
argument: a directory it may write, where it leaves its marks."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

MARKS = Path(sys.argv[1])
server = MCPServer("probe")


@server.tool()
async def wait(seconds: float, token: str) -> str:
    """Wait ``seconds``; a cancellation (notifications/cancelled) leaves the mark
    ``cancelled-TOKEN`` before the call ends."""
    (MARKS / f"started-{token}").write_text("started\n")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        (MARKS / f"cancelled-{token}").write_text("cancelled\n")
        raise
    return f"waited {seconds:g}s"


@server.tool()
def allocate(mib: int) -> str:
    """Take ``mib`` MiB of memory and touch every page."""
    block = bytearray(mib * 2**20)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    return f"allocated {mib} MiB"


if __name__ == "__main__":
    server.run("stdio")
