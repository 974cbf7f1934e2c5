"""The tool contract between the conversation worker and the tool executor.

- :class:`ToolSpec`: a tool as the model sees it (the OpenAI "tools" format).
- :func:`tool_catalog`: the specs of every tool the executor runs — the built-ins
  (:data:`BUILTIN_SPECS`) and the ``a0.tools`` entry points (:func:`plugin_tools`) —
  which the worker offers to the model.
- :class:`ToolResult`: the payload of a ``tool.result`` event, an output or an error.

The implementations stay in :mod:`services.tool_executor.tools`; the worker needs only
what is here.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "a0.tools"


class ToolSpec(BaseModel):
    """A tool as the model sees it; ``parameters`` is a JSON Schema object."""

    name: str
    description: str
    parameters: dict[str, Any]

    def openai_tool(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


# The MCP servers' tools the executor offers (services/tool_executor/mcp_catalog.py), for
# the workers and a0ctl: written on every change and every few seconds, expiring when no
# executor refreshes it.
CATALOG_KEY = "a0:tools:mcp-catalog"
CATALOG_TTL_S = 30


async def publish_catalog(redis: Any, specs: list[ToolSpec], servers: list[dict[str, Any]]) -> None:
    document = {"tools": [spec.model_dump() for spec in specs], "servers": servers, "at": time.time()}
    await redis.set(CATALOG_KEY, json.dumps(document), ex=CATALOG_TTL_S)


async def read_catalog(redis: Any) -> tuple[list[ToolSpec], list[dict[str, Any]]]:
    """The MCP tools offered now and their servers' states; none when no executor says."""
    raw = await redis.get(CATALOG_KEY)
    if not raw:
        return [], []
    document = json.loads(raw)
    return [ToolSpec.model_validate(t) for t in document.get("tools", [])], list(document.get("servers", []))


class ToolFailure(BaseModel):
    code: str
    message: str


class ToolResult(BaseModel):
    """What a call came to: ``output`` (and how long it ran) or ``error``."""

    model_config = ConfigDict(extra="allow")

    call_id: str
    name: str
    output: str | None = None
    seconds: float | None = None
    error: ToolFailure | None = None

    @classmethod
    def failed(cls, call_id: str, name: str, code: str, message: str) -> ToolResult:
        return cls(call_id=call_id, name=name, error=ToolFailure(code=code, message=message))

    def payload(self) -> dict[str, Any]:
        """The ``tool.result`` event's payload: only the fields that are set."""
        return self.model_dump(exclude_none=True)

    def for_model(self) -> str:
        """The tool message's content: the output, or the error as JSON."""
        if self.output is not None:
            return self.output
        error = self.error.model_dump() if self.error is not None else None
        return json.dumps({"error": error})


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


CALCULATOR = ToolSpec(
    name="calculator",
    description=(
        "Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses, "
        "functions sqrt sin cos tan log exp abs round, constants pi and e."
    ),
    parameters=_schema(
        {"expression": {"type": "string", "description": "e.g. (2 + 3) * sqrt(16)"}}, ["expression"]
    ),
)
CURRENT_TIME = ToolSpec(
    name="current_time",
    description="The current date and time in ISO 8601, in an IANA timezone (default UTC).",
    parameters=_schema({"timezone": {"type": "string", "description": "e.g. Europe/Paris"}}, []),
)
RUN_PYTHON = ToolSpec(
    name="run_python",
    description=(
        "Run a Python 3 program and return what it prints (stdout and stderr). "
        "No network, no subprocesses, limited CPU time, memory and output; "
        "print the values you want to see."
    ),
    parameters=_schema({"code": {"type": "string", "description": "The program source."}}, ["code"]),
)
BUILTIN_SPECS: dict[str, ToolSpec] = {spec.name: spec for spec in (CALCULATOR, CURRENT_TIME, RUN_PYTHON)}


def _is_tool(candidate: object) -> bool:
    return (
        not isinstance(candidate, type)  # a class, not an instance
        and isinstance(getattr(candidate, "spec", None), ToolSpec)
        and inspect.iscoroutinefunction(getattr(candidate, "run", None))
    )


def plugin_tools() -> dict[str, Any]:
    """Every tool of the ``a0.tools`` entry point group, by spec name: an object with
    ``.spec`` (a :class:`ToolSpec`) and an async ``.run(arguments, ctx)``.

    A broken or invalid entry point is logged and skipped. Built-in names cannot be
    taken; among plug-ins with the same name the first one loaded wins.
    """
    tools: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            tool = ep.load()
            if not _is_tool(tool):
                raise TypeError(f"{ep.value} is not a Tool instance (needs .spec: ToolSpec and async .run)")
        except Exception as exc:  # a plug-in must never take a service down
            log.warning("skipping tool entry point %r: %s", ep.name, exc)
            continue
        name = tool.spec.name
        existing = tools.get(name)
        if BUILTIN_SPECS.get(name) is tool.spec:
            continue  # a built-in, which a0's own package registers as an entry point too
        if name in BUILTIN_SPECS or (existing is not None and existing is not tool):
            log.warning("skipping tool entry point %r: tool name %r is already taken", ep.name, name)
        else:
            tools[name] = tool
    return tools


def tool_catalog() -> list[ToolSpec]:
    """The spec of every tool the executor runs, built-ins first."""
    return [*BUILTIN_SPECS.values(), *(tool.spec for tool in plugin_tools().values())]
