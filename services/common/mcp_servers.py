"""The MCP servers a0 offers tools from, as code: ``mcp.yaml`` at the repository root.

Each server names its transport — ``stdio`` (a command the tool executor starts in the
tool sandbox) or ``http`` (a streamable HTTP URL, under the same egress policy as a
credential's base URL) —, the tools it may offer (an allow-list: a tool not named is not
offered), each tool's timeout, and who may call them (users and roles, which become OPA
data: ``data.a0_mcp.tools`` in stack/opa/authz.rego). The model sees a tool as
``server__tool``, within OpenAI's function name rules.

``{repo}`` and ``{state}`` in a command, its arguments and bind paths stand for the
repository root and the stack's state directory. A server's environment maps each
variable to the *name* of a variable of the executor's environment (``conf/env`` or the
operator's settings): a value never appears in the file.

:func:`load` reads and validates the file (:class:`McpConfigError` with every problem,
each with its place in the file); :func:`problems` adds the checks that look at the
machine (commands, paths, URLs) — ``a0ctl tools check`` runs both.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.errors import A0Error
from services.common.settings import Settings

# OpenAI's rule for a function name; the model sees ``server__tool``.
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SERVER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
SEPARATOR = "__"
# Where the project's own scripts install the reference servers (scripts/vendor-mcp.sh).
SERVERS_DIR = Path("stack/mcp-servers")


class McpConfigError(A0Error):
    """``mcp.yaml`` is not valid; the message lists every problem."""

    code = "invalid_mcp_config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolEntry(_Strict):
    """One tool of a server that a0 offers."""

    timeout_s: float = Field(default=30.0, gt=0, le=3600, description="A call is cancelled past this.")


class Access(_Strict):
    """Who may call a server's tools: any of these users, or anyone with one of these roles."""

    users: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _someone(self) -> Access:
        if not self.users and not self.roles:
            raise ValueError("name at least one user or role (nobody could call these tools)")
        return self


class Bind(_Strict):
    """A host path the server's sandbox sees, at the same place; read-only unless writable.
    A directory under the state directory that does not exist is made (empty) at start."""

    path: str
    writable: bool = False


class ServerLimits(_Strict):
    """What a stdio server may use, all its processes together, for as long as it runs
    (its cgroup, as a ``run_python`` run's): past the memory the kernel kills it and it
    is restarted."""

    memory_mb: int = Field(default=512, ge=32, le=65_536)
    max_processes: int = Field(default=64, ge=8, le=4096)
    cpu_cores: float = Field(default=1.0, gt=0, le=64)


class _Server(_Strict):
    description: str = ""
    tools: dict[str, ToolEntry] = Field(
        description="The tools offered, by the server's own name: an allow-list (none by default)."
    )
    allow: Access

    @field_validator("tools", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        # `tools: {get_current_time: }` is a tool with the defaults.
        if isinstance(value, dict):
            return {name: {} if entry is None else entry for name, entry in value.items()}
        return value


class StdioServer(_Server):
    transport: Literal["stdio"]
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(
        default_factory=dict, description="Variable of the server → name of the executor's variable."
    )
    network: bool = Field(default=False, description="Whether the server's sandbox has a network.")
    binds: list[Bind] = Field(default_factory=list)
    limits: ServerLimits = Field(default_factory=ServerLimits)

    @field_validator("env")
    @classmethod
    def _names_only(cls, env: dict[str, str]) -> dict[str, str]:
        for name, source in env.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if not ENV_NAME.match(source):
                raise ValueError(
                    f"{name}: give the name of a variable of the executor's environment "
                    "(e.g. A0_MCP_GITHUB_TOKEN), never a value"
                )
        return env


class HttpServer(_Server):
    transport: Literal["http"]
    url: str = Field(pattern=r"^https?://", description="A streamable HTTP endpoint.")


Server = Annotated[StdioServer | HttpServer, Field(discriminator="transport")]


class McpConfig(_Strict):
    version: Literal[1]
    servers: dict[str, Server] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> McpConfig:
        problems = []
        for server, spec in self.servers.items():
            if not SERVER_NAME.match(server) or SEPARATOR in server:
                problems.append(
                    f"servers.{server}: a server name is lower-case letters, digits and single dashes"
                )
            for tool in spec.tools:
                name = f"{server}{SEPARATOR}{tool}"
                if not TOOL_NAME.match(name):
                    problems.append(
                        f"servers.{server}.tools.{tool}: the model cannot take the name {name!r} "
                        "(letters, digits, _ and -, at most 64 characters)"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def tools(self) -> dict[str, tuple[str, str, ToolEntry]]:
        """Every offered tool by the name the model sees: (server, the server's name, entry)."""
        return {
            f"{server}{SEPARATOR}{tool}": (server, tool, entry)
            for server, spec in self.servers.items()
            for tool, entry in spec.tools.items()
        }

    def opa_data(self) -> dict[str, Any]:
        """The policy data of these servers: who may call each tool (stack/opa/authz.rego)."""
        tools = {}
        for name, (server, _, _) in self.tools().items():
            allow = self.servers[server].allow
            tools[name] = {"server": server, "users": sorted(allow.users), "roles": sorted(allow.roles)}
        return {"a0_mcp": {"tools": tools}}


def _place(loc: tuple[int | str, ...]) -> str:
    # Drop the discriminator's own step (servers.time.stdio.command → servers.time.command).
    return ".".join(str(p) for p in loc if p not in ("stdio", "http")) or "(top level)"


def parse(text: str, source: str = "mcp.yaml") -> McpConfig:
    """``text`` as an :class:`McpConfig`, or :class:`McpConfigError` naming every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise McpConfigError(f"{source}: not valid YAML: {exc}") from None
    try:
        return McpConfig.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            lines.append(f"{source}: {_place(error['loc'])}: {message}")
        raise McpConfigError("\n".join(lines)) from None


def config_path(settings: Settings) -> Path:
    return settings.stack.resolve(settings.tools.mcp_file)


def load(settings: Settings) -> McpConfig:
    """The stack's ``mcp.yaml``; no file means no MCP servers."""
    path = config_path(settings)
    if not path.exists():
        return McpConfig(version=1)
    return parse(path.read_text(), path.name)


def expand(value: str, settings: Settings) -> str:
    """``{repo}`` and ``{state}`` of ``value`` filled in."""
    repo = str(settings.stack.home.resolve())
    return value.replace("{repo}", repo).replace("{state}", str(settings.stack.state_path))


def servers_bin(settings: Settings) -> Path:
    """The bin directory of the reference Python servers' environment (scripts/vendor-mcp.sh)."""
    return settings.stack.resolve(SERVERS_DIR / ".venv" / "bin")


def resolve_command(command: str, settings: Settings) -> str | None:
    """The executable ``command`` names: a path, or a name looked up in the reference
    servers' environment, then PATH."""
    command = expand(command, settings)
    if os.sep in command:
        return command if os.access(command, os.X_OK) else None
    search = os.pathsep.join([str(servers_bin(settings)), os.environ.get("PATH", os.defpath)])
    return shutil.which(command, path=search)


def local_problems(config: McpConfig, settings: Settings) -> list[str]:
    """What this machine lacks for ``config``: commands, bound paths, variables, names
    already taken by other tools. HTTP servers are checked by :mod:`a0ctl` (network)."""
    from services.common.tools import BUILTIN_SPECS

    problems = []
    for server, spec in config.servers.items():
        where = f"servers.{server}"
        for tool in spec.tools:
            if f"{server}{SEPARATOR}{tool}" in BUILTIN_SPECS:
                problems.append(f"{where}.tools.{tool}: the name is a built-in tool's")
        if not isinstance(spec, StdioServer):
            continue
        if resolve_command(spec.command, settings) is None:
            problems.append(
                f"{where}.command: {spec.command!r} not found (looked in {servers_bin(settings)} and PATH; "
                "is ./scripts/bootstrap.sh run?)"
            )
        for bind in spec.binds:
            path = Path(expand(bind.path, settings))
            if not path.is_absolute():
                problems.append(f"{where}.binds: {bind.path!r} must be an absolute path")
            elif not path.exists() and not path.is_relative_to(settings.stack.state_path):
                problems.append(f"{where}.binds: {path} does not exist")
        for name, source in spec.env.items():
            if source not in os.environ:
                problems.append(f"{where}.env.{name}: the executor's environment has no {source}")
    return problems
