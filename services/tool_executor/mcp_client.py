"""The tool executor as an MCP client (the official ``mcp`` SDK) of the servers of mcp.yaml.

Each server has a supervisor task (:class:`McpServer`) that connects (a stdio server in
its sandbox, an HTTP server at its URL: :mod:`.mcp_connect`), lists the server's tools,
and keeps those that mcp.yaml allows as :class:`McpTool` under the name the model sees
(``server__tool``). A server that exits or stops answering is restarted with an
exponential backoff; meanwhile its tools answer ``unavailable``. ``tools/list_changed``
lists them again. :mod:`.mcp_catalog` holds them all; :mod:`.mcp_results` is what a
call's result becomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2

# What the SDK imports only at a call (validating a structured result), imported now: the
# executor drops root at start and may not read the interpreter's files afterwards.
import jsonschema
import jsonschema.exceptions
import jsonschema.protocols
import mcp.types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT

from services.common.egress import Resolver, check_base_url
from services.common.errors import CredentialError
from services.common.logging import redact
from services.common.mcp_servers import (
    SEPARATOR,
    HttpServer,
    StdioServer,
    ToolEntry,
)
from services.common.policy import PolicyClient
from services.common.settings import Settings
from services.common.ticks import until_tick
from services.common.tools import ToolSpec
from services.tool_executor.cgroups import RunBounds, RunCgroup, RunCgroups
from services.tool_executor.mcp_connect import (
    PinnedTransport,
    launch_argv,
    sandbox_argv,
    sandbox_env,
    server_filter,
)
from services.tool_executor.mcp_results import clip, to_output
from services.tool_executor.tools import ToolContext, ToolError

log = logging.getLogger(__name__)
_IMPORTED_FOR_CALLS = (jsonschema.exceptions, jsonschema.protocols)

MAX_DESCRIPTION_CHARS = 1024
# How long a server may take to start and answer its first listing.
START_TIMEOUT_S = 30.0
# A hung server is found by this ping; one that exits breaks its connection at once.
PING_EVERY_S = 15.0
PING_TIMEOUT_S = 10.0
RESTART_FIRST_S = 0.5
# Who asks the egress policy about an HTTP server's URL.
EGRESS_SUBJECT = "a0-tool-executor"
MAX_STDERR_BYTES = 1024 * 1024
# The SDK's own: a server may hold a response stream open for a long call.
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)

Progress = ProgressFnT


class McpUnavailable(ToolError):
    code = "unavailable"


class McpTool:
    """One allowed tool of a server, as the executor runs it."""

    def __init__(self, server: McpServer, remote: types.Tool, entry: ToolEntry) -> None:
        self.server = server
        self.remote_name = remote.name
        self.entry = entry
        description = clip((remote.description or remote.title or remote.name).strip(), MAX_DESCRIPTION_CHARS)
        schema = remote.input_schema if isinstance(remote.input_schema, dict) else {}
        self.spec = ToolSpec(
            name=f"{server.name}{SEPARATOR}{remote.name}",
            description=f"[MCP server {server.name}] {description}",
            parameters={"type": "object", "properties": {}, **schema},
        )

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        output, _ = await self.call(arguments)
        return output

    async def call(
        self, arguments: dict[str, Any], progress: Progress | None = None
    ) -> tuple[str, list[dict[str, str]]]:
        """The output the model sees and the images for the UI; ToolError if the server
        reports an error (``isError``), cannot be reached or times out."""
        result = await self.server.call(self.remote_name, arguments, self.entry.timeout_s, progress)
        output, images = to_output(result)
        if result.is_error:
            raise ToolError(output or f"{self.spec.name} failed", code="tool_error")
        return output, images


class McpPending:
    """A tool of a server that is not ready: not offered to the model; a call answers
    ``unavailable`` with the server's state."""

    def __init__(self, server: McpServer, name: str) -> None:
        self.server = server
        self.spec = ToolSpec(name=name, description="unavailable", parameters={"type": "object"})

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        server = self.server
        raise McpUnavailable(
            f"MCP server {server.name} is {server.state}" + (f" ({server.detail})" if server.detail else "")
        )


class McpServer:
    """One server of mcp.yaml: its connection, kept up by :meth:`supervise`."""

    def __init__(
        self,
        name: str,
        spec: StdioServer | HttpServer,
        settings: Settings,
        on_change: Callable[[], None],
        policy: PolicyClient | None = None,
        cgroups: RunCgroups | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.spec = spec
        self.settings = settings
        self.on_change = on_change
        self.state = "starting"
        self.detail = ""
        self.restarts = 0
        self.tools: dict[str, McpTool] = {}
        self.session: ClientSession | None = None
        self.pid: int | None = None
        self.cgroups = cgroups
        self.cgroup: RunCgroup | None = None
        self.resolver: Resolver | None = None  # how the HTTP server's host is looked up (tests)
        self._errlog: Any = None
        self._last_stderr = ""
        self._broken = asyncio.Event()
        self._relist = asyncio.Event()

    def _stderr_tail(self) -> str:
        errlog = self._errlog
        if errlog is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            size = os.fstat(errlog.fileno()).st_size
            with open(errlog.fileno(), "rb", closefd=False) as raw:
                raw.seek(max(0, size - 4000))
                text = raw.read().decode("utf-8", errors="replace").replace("\0", "")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return "; stderr: " + clip(redact(" | ".join(lines[-6:])), 600)
        return ""

    def _bound_stderr(self) -> None:
        """Keep a chatty server's stderr file small: past the bound it starts over (the
        server writes on at its offset, into a sparse file)."""
        errlog = self._errlog
        if errlog is not None:
            with contextlib.suppress(OSError, ValueError):
                if os.fstat(errlog.fileno()).st_size > MAX_STDERR_BYTES:
                    os.ftruncate(errlog.fileno(), 0)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.spec.transport,
            "state": self.state,
            "detail": self.detail,
            "restarts": self.restarts,
            "tools": sorted(self.tools),
        }

    def _set(self, state: str, detail: str = "") -> None:
        self.state, self.detail = state, redact(detail)
        self.on_change()

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        if isinstance(self.spec, StdioServer):
            async with self._stdio(self.spec) as streams:
                yield streams
            return
        addresses = None
        if self.policy is not None:
            # The egress policy of a credential's base URL, asked before every connection:
            # a server's URL is a request the executor makes from inside the network.
            try:
                addresses = await check_base_url(
                    self.policy, EGRESS_SUBJECT, ["admin"], self.spec.url, resolver=self.resolver
                )
            except CredentialError as exc:
                raise ConnectionRefusedError(exc.message.replace("base URL", "URL")) from None
        transport = PinnedTransport(addresses) if addresses is not None else None
        async with httpx2.AsyncClient(transport=transport, timeout=HTTP_TIMEOUT) as http:
            async with streamable_http_client(self.spec.url, http_client=http) as streams:
                yield streams

    @asynccontextmanager
    async def _stdio(self, spec: StdioServer) -> AsyncIterator[Any]:
        """The server started in its sandbox, its cgroup and seccomp filter; when the
        connection ends, whatever is left of it is killed and its cgroup removed."""
        bpf = await asyncio.to_thread(server_filter, spec.network)
        cgroup = None
        if self.cgroups is not None:
            limits = spec.limits
            bounds = RunBounds(
                memory_bytes=limits.memory_mb * 2**20,
                processes=limits.max_processes,
                cpu_cores=limits.cpu_cores,
            )
            try:
                cgroup = await asyncio.to_thread(self.cgroups.create, bounds, "mcp")
            except OSError as exc:
                raise ConnectionRefusedError(f"no cgroup for the server: {exc}") from None
        try:
            # The server's stderr: its last lines say why it stopped.
            with (
                tempfile.NamedTemporaryFile(prefix="a0-mcp-seccomp-") as seccomp,
                tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog,
            ):
                seccomp.write(bpf)
                seccomp.flush()
                argv = launch_argv(sandbox_argv(spec, self.settings), cgroup, seccomp.name)
                params = StdioServerParameters(command=argv[0], args=argv[1:], env=sandbox_env(spec), cwd="/")
                self._errlog = errlog
                self.cgroup = cgroup
                try:
                    async with stdio_client(params, errlog=errlog) as streams:
                        yield streams
                finally:
                    self._last_stderr = self._stderr_tail()
                    self._errlog = None
                    if cgroup is not None and cgroup.memory_kills():
                        self._last_stderr = (
                            f"; killed at its memory limit ({spec.limits.memory_mb} MiB, mcp.yaml)"
                            + self._last_stderr
                        )
        finally:
            self.cgroup = None
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)

    async def _messages(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._relist.set()
        elif isinstance(message, Exception):
            log.warning("MCP server %s: %s", self.name, message)

    async def _list(self, session: ClientSession) -> None:
        listed: dict[str, types.Tool] = {}
        cursor = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            listed.update({tool.name: tool for tool in page.tools})
            cursor = page.next_cursor
            if not cursor:
                break
        missing = sorted(set(self.spec.tools) - set(listed))
        if missing:
            log.warning(
                "MCP server %s does not offer %s (mcp.yaml allows them)", self.name, ", ".join(missing)
            )
        self.tools = {
            f"{self.name}{SEPARATOR}{name}": McpTool(self, listed[name], entry)
            for name, entry in self.spec.tools.items()
            if name in listed
        }

    async def supervise(self) -> None:
        """Connect, list, watch; on any failure wait (0.5 s doubling up to the setting) and
        connect again. Runs until cancelled."""
        delay = RESTART_FIRST_S
        while True:
            started = time.monotonic()
            try:
                await self._connected()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001  # anyio groups: any failure means restart
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # a stop, wrapped in a group by the transport's task group
                detail = _reason(exc) + self._last_stderr
                log.warning("MCP server %s stopped: %s; restarting in %.1fs", self.name, detail, delay)
                self.session = None
                self._set("restarting", detail)
            if time.monotonic() - started > 60:
                delay = RESTART_FIRST_S  # it ran a while: a fresh failure, not a crash loop
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.tools.mcp_restart_max_s)
            self.restarts += 1

    async def _connected(self) -> None:
        self._broken.clear()
        async with self._transport() as (read, write):
            async with ClientSession(read, write, message_handler=self._messages) as session:
                async with asyncio.timeout(START_TIMEOUT_S):
                    await session.initialize()
                    await self._list(session)
                self.session = session
                self._set("ready", f"tools: {len(self.tools)}")
                while True:
                    waits = [asyncio.ensure_future(e.wait()) for e in (self._broken, self._relist)]
                    done, pending = await asyncio.wait(
                        waits, timeout=until_tick(PING_EVERY_S), return_when="FIRST_COMPLETED"
                    )
                    for task in pending:
                        task.cancel()
                    if self._broken.is_set():
                        raise ConnectionError("the connection broke during a call")
                    if self._relist.is_set():
                        self._relist.clear()
                        await self._list(session)
                        self._set("ready", f"tools: {len(self.tools)}, list changed")
                        continue
                    async with asyncio.timeout(PING_TIMEOUT_S):
                        await session.send_ping()
                    self._bound_stderr()

    async def call(
        self, name: str, arguments: dict[str, Any], timeout_s: float, progress: Progress | None
    ) -> types.CallToolResult:
        session = self.session
        if session is None or self.state != "ready":
            raise McpUnavailable(
                f"MCP server {self.name} is {self.state}"
                + (f" ({self.detail})" if self.detail else "")
                + "; try again shortly"
            )
        try:
            async with asyncio.timeout(timeout_s):
                return await session.call_tool(name, arguments, progress_callback=progress)
        except TimeoutError:
            raise ToolError(f"{self.name}__{name} timed out after {timeout_s:g}s", code="timeout") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            detail = _reason(exc)
            if _is_protocol_error(exc):
                raise ToolError(f"MCP server {self.name}: {detail}", code="tool_error") from None
            self._broken.set()
            raise McpUnavailable(
                f"MCP server {self.name} stopped during the call ({detail}); it is being restarted"
            ) from None


def _is_protocol_error(exc: BaseException) -> bool:
    from mcp.shared.exceptions import MCPError

    return isinstance(exc, MCPError) and "closed" not in str(exc).lower()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _reason(exc.exceptions[0])
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
