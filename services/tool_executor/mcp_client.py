"""The tool executor as an MCP client (the official ``mcp`` SDK) of the servers of mcp.yaml.

Each server has a supervisor task (:class:`McpServer`) that connects — a stdio server is
started inside a bubblewrap sandbox as the executor's unprivileged user: new namespaces,
no network unless the file grants it, a read-only ``/usr``, the reference servers'
installs, a private ``/tmp`` and only the paths the file binds; an HTTP server is
reached at its URL —, lists the server's tools, and keeps those that mcp.yaml allows as
:class:`McpTool` under the name the model sees (``server__tool``). A server that exits
or stops answering is restarted with an exponential backoff; meanwhile its tools answer
``unavailable``. ``tools/list_changed`` lists them again.

:class:`McpServers` holds them all, keeps the executor's tool registry in step and writes
the catalog the workers offer (:func:`services.common.tools.publish_catalog`).

What a server says is untrusted: descriptions and outputs are size-limited text, images
are passed on (size-limited, base64) for the chat UI to show, never interpreted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import pwd
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
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

from services.common.egress import Resolver, check_base_url, pinned
from services.common.errors import CredentialError
from services.common.logging import redact, register_secret
from services.common.mcp_servers import (
    SEPARATOR,
    SERVERS_DIR,
    HttpServer,
    McpConfig,
    StdioServer,
    ToolEntry,
    expand,
    resolve_command,
)
from services.common.policy import PolicyClient
from services.common.settings import Settings
from services.common.tools import ToolSpec
from services.tool_executor.cgroups import RunBounds, RunCgroup, RunCgroups
from services.tool_executor.confinement import SECCOMP_GENERATOR_PYTHON, seccomp_program
from services.tool_executor.sandbox import FILE_SIZE_BYTES, UNBOUNDED_MAX_PROCESSES
from services.tool_executor.tools import ToolContext, ToolError

log = logging.getLogger(__name__)
_IMPORTED_FOR_CALLS = (jsonschema.exceptions, jsonschema.protocols)

MAX_DESCRIPTION_CHARS = 1024
MAX_OUTPUT_CHARS = 16_384
# Images travel base64 in the tool.result event (Kafka records are at most 1 MiB).
MAX_IMAGE_BYTES = 256 * 1024
MAX_IMAGES_BASE64_CHARS = 600_000
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


# The first process of a stdio server, run by the system interpreter as the tools user:
# it joins the server's cgroup (so bwrap and everything the server forks are born
# inside), sets the rlimits, opens the seccomp filter for bwrap (``--seccomp``, loaded
# into every process of the sandbox) and becomes bwrap. Its one argument is JSON.
_LAUNCH = """\
import json, os, resource, sys
spec = json.loads(sys.argv[1])
for directory in spec["cgroups"]:
    with open(directory + "/cgroup.procs", "w") as procs:
        procs.write(str(os.getpid()))
for name, value in spec["rlimits"].items():
    which = getattr(resource, name)
    hard = resource.getrlimit(which)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))
fd = os.open(spec["seccomp"], os.O_RDONLY)
os.set_inheritable(fd, True)
argv = [str(fd) if arg == "{seccomp_fd}" else arg for arg in spec["argv"]]
os.execvp(argv[0], argv)
"""


def rlimits(bounded: bool) -> dict[str, int]:
    """Each process's limits: no core files, files at most the size a run may write and,
    without a cgroup, a bound on the tools user's processes. No address-space limit:
    Node reserves far more than it uses; the cgroup bounds the memory used."""
    limits = {"RLIMIT_CORE": 0, "RLIMIT_FSIZE": FILE_SIZE_BYTES, "RLIMIT_NOFILE": 4096}
    if not bounded:
        limits["RLIMIT_NPROC"] = UNBOUNDED_MAX_PROCESSES
    return limits


def launch_argv(sandbox: list[str], cgroup: RunCgroup | None, seccomp_file: str) -> list[str]:
    """The command starting ``sandbox`` (bwrap's command line) in the server's cgroup,
    under rlimits and the seccomp filter at ``seccomp_file``."""
    bwrap = [sandbox[0], "--seccomp", "{seccomp_fd}", *sandbox[1:]]
    spec = {
        "cgroups": [str(d) for d in cgroup.dirs] if cgroup is not None else [],
        "rlimits": rlimits(cgroup is not None),
        "seccomp": seccomp_file,
        "argv": bwrap,
    }
    return [SECCOMP_GENERATOR_PYTHON, "-I", "-c", _LAUNCH, json.dumps(spec)]


@functools.cache
def server_filter(network: bool) -> bytes:
    """The sandbox's seccomp filter for a server (sockets of any family if it has a network)."""
    return seccomp_program(allow_network=network)


class PinnedTransport(httpx2.AsyncHTTPTransport):
    """Connects only to the addresses the egress policy checked (in turn, IPv4 first),
    with the URL's host as Host header and TLS server name: a second DNS answer is never
    asked for, so a name rebound after the check cannot redirect a request."""

    def __init__(self, addresses: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.addresses = sorted(addresses, key=lambda address: ":" in address)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self.addresses:
            raise httpx2.ConnectError("the host has no address the egress policy checked", request=request)
        failure: httpx2.ConnectError | None = None
        for address in self.addresses:
            url, host, extensions = pinned(str(request.url), address)
            aimed = httpx2.Request(
                request.method,
                url,
                headers=[
                    *((k, v) for k, v in request.headers.multi_items() if k.lower() != "host"),
                    *host.items(),
                ],
                stream=request.stream,
                extensions={**request.extensions, **(extensions if request.url.scheme == "https" else {})},
            )
            try:
                return await super().handle_async_request(aimed)
            except httpx2.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure


def sandbox_argv(spec: StdioServer, settings: Settings) -> list[str]:
    """bwrap's command line running ``spec``'s command in its sandbox."""
    command = resolve_command(spec.command, settings) or spec.command
    argv = [
        "bwrap",
        "--unshare-all",
        *(["--share-net"] if spec.network else []),
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):  # merged /usr: links; otherwise bound
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for path in ("/etc/ssl", "/etc/ca-certificates", "/etc/localtime", "/etc/hosts", "/etc/nsswitch.conf"):
        argv += ["--ro-bind-try", path, path]
    if spec.network:
        argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp"]
    # The reference servers' installs (links into the cache, scripts/vendor-mcp.sh): seen
    # at their link's place and their own (a virtual environment's scripts name the latter).
    servers = settings.stack.resolve(SERVERS_DIR)
    for installed in ("node_modules", ".venv"):
        link = servers / installed
        if link.exists():
            real = link.resolve()
            argv += ["--ro-bind", str(real), str(real)]
            if real != link:
                argv += ["--ro-bind", str(real), str(link)]
    for bind in spec.binds:
        bound = Path(expand(bind.path, settings))
        argv += ["--bind" if bind.writable else "--ro-bind", str(bound), str(bound)]
    return [*argv, "--", command, *(expand(arg, settings) for arg in spec.args)]


def prepare_binds(config: McpConfig, settings: Settings) -> None:
    """Make the bound directories that do not exist yet (empty), owned by the tools user
    (run while the executor is still root: the tools user cannot make them in the state
    directory)."""
    for spec in config.servers.values():
        if not isinstance(spec, StdioServer):
            continue
        for bind in spec.binds:
            path = Path(expand(bind.path, settings))
            if not path.exists():
                path.mkdir(parents=True)
                if os.geteuid() == 0:
                    entry = pwd.getpwnam(settings.tools.run_as)
                    os.chown(path, entry.pw_uid, entry.pw_gid)


def sandbox_env(spec: StdioServer) -> dict[str, str]:
    """The server's environment: a PATH, a HOME and the variables mcp.yaml names (passed in
    bwrap's environment, never on its command line)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    for name, source in spec.env.items():
        if source in os.environ:
            env[name] = os.environ[source]
            register_secret(env[name])  # a token, likely: never in a log line or a state
    return env


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "… [truncated]"


def to_output(result: types.CallToolResult) -> tuple[str, list[dict[str, str]]]:
    """The text the model sees and the images the UI shows, of a call's result."""
    parts: list[str] = []
    images: list[dict[str, str]] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent):
            size = len(block.data) * 3 // 4
            shown = sum(len(image["data"]) for image in images)
            if size <= MAX_IMAGE_BYTES and shown + len(block.data) <= MAX_IMAGES_BASE64_CHARS:
                images.append({"mime_type": block.mime_type, "data": block.data})
                parts.append(f"[image {block.mime_type}, {size} bytes, shown to the user]")
            else:
                parts.append(f"[image {block.mime_type}, {size} bytes, too large to show]")
        elif isinstance(block, types.AudioContent):
            parts.append(f"[audio {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                parts.append(f"[resource {resource.uri}]\n{resource.text}")
            else:
                mime = resource.mime_type or "application/octet-stream"
                parts.append(f"[resource {resource.uri}, {mime}, {len(resource.blob) * 3 // 4} bytes]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link {block.uri}" + (f": {block.name}]" if block.name else "]"))
    if result.structured_content is not None and not any(
        isinstance(b, types.TextContent) for b in result.content
    ):
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return _clip("\n".join(parts), MAX_OUTPUT_CHARS), images


class McpTool:
    """One allowed tool of a server, as the executor runs it."""

    def __init__(self, server: McpServer, remote: types.Tool, entry: ToolEntry) -> None:
        self.server = server
        self.remote_name = remote.name
        self.entry = entry
        description = _clip(
            (remote.description or remote.title or remote.name).strip(), MAX_DESCRIPTION_CHARS
        )
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
                return "; stderr: " + _clip(redact(" | ".join(lines[-6:])), 600)
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
                        waits, timeout=PING_EVERY_S, return_when="FIRST_COMPLETED"
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
            await asyncio.sleep(10)
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
