"""What ``a0ctl tools`` does: check mcp.yaml, list every tool, call one through the executor.

- :func:`check`: the file's own rules (:mod:`services.common.mcp_servers`), then this
  machine (commands, bound paths, variables) and each HTTP server's URL: the egress
  policy OPA applies to a credential's base URL, then whether anything answers there.
- :func:`list_tools`: built-ins, ``a0.tools`` entry points and the MCP servers' tools,
  each with its state (the executor's catalog in Redis) and the policy's answer for a user.
- :func:`call`: one ``tool.request`` on ``tool.requests`` and its ``tool.response`` read
  back from ``tool.results``: the same path as a model's call, OPA included.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from a0ctl.errors import StackError
from a0ctl.topics.admin import admin_client
from services.common import mcp_servers
from services.common.egress import check_base_url
from services.common.envelope import Envelope, EventType, new_id, tool_call_key
from services.common.errors import CredentialError, PolicyUnavailable
from services.common.kafka import client_options, make_producer, publish
from services.common.policy import PolicyClient
from services.common.settings import Settings
from services.common.tools import BUILTIN_SPECS, ToolResult, plugin_tools, read_catalog
from services.common.topics import TOOL_REQUESTS, TOOL_RESULTS

URL_TIMEOUT_S = 5.0
CHECKED_AS = "a0ctl"


class CheckReport(BaseModel):
    file: str
    servers: list[str]
    tools: list[str]
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


async def _url_problems(server: str, url: str, settings: Settings) -> tuple[list[str], list[str]]:
    where = f"servers.{server}.url"
    try:
        async with PolicyClient(settings) as policy:
            await check_base_url(policy, CHECKED_AS, ["admin"], url)
    except CredentialError as exc:
        if not isinstance(exc.__cause__, PolicyUnavailable):
            return [f"{where}: {exc.message.replace('base URL', 'URL')}"], []
        warning = f"{where}: the egress policy was not asked (OPA is not reachable: is the stack up?)"
    else:
        warning = ""
    try:
        async with httpx.AsyncClient(timeout=URL_TIMEOUT_S) as client:
            await client.get(url)
    except httpx.HTTPError as exc:
        found = [f"{where}: {url} is unreachable ({type(exc).__name__}: {exc or 'no answer'})"]
        return found, [warning] if warning else []
    return [], [warning] if warning else []


async def check(settings: Settings, *, text: str | None = None) -> CheckReport:
    """Every problem of mcp.yaml (``text`` instead of the file, if given)."""
    path = mcp_servers.config_path(settings)
    if text is None:
        if not path.exists():
            return CheckReport(file=str(path), servers=[], tools=[], problems=[], warnings=["no mcp.yaml"])
        text = path.read_text()
    try:
        config = mcp_servers.parse(text, path.name)
    except mcp_servers.McpConfigError as exc:
        return CheckReport(
            file=str(path), servers=[], tools=[], problems=exc.message.splitlines(), warnings=[]
        )
    problems = mcp_servers.local_problems(config, settings)
    warnings: list[str] = []
    for server, spec in config.servers.items():
        if isinstance(spec, mcp_servers.HttpServer):
            found, warned = await _url_problems(server, spec.url, settings)
            problems += found
            warnings += warned
    return CheckReport(
        file=str(path),
        servers=sorted(config.servers),
        tools=sorted(config.tools()),
        problems=problems,
        warnings=warnings,
    )


class ToolRow(BaseModel):
    name: str
    source: str
    state: str
    policy: str
    description: str


class ToolList(BaseModel):
    tools: list[ToolRow]
    servers: list[dict[str, Any]]


async def _catalog(settings: Settings) -> tuple[set[str], list[dict[str, Any]]] | None:
    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        specs, servers = await read_catalog(client)
    except (OSError, aioredis.RedisError):
        return None
    finally:
        await client.aclose()
    return {spec.name for spec in specs}, servers


async def mcp_status_line(settings: Settings) -> str:
    """One line on the MCP servers of mcp.yaml, as the executor last listed them ("" when
    there are none, or Redis does not answer)."""
    if not mcp_servers.config_path(settings).exists():
        return ""
    try:
        declared = mcp_servers.load(settings).servers
    except mcp_servers.McpConfigError:
        return "MCP servers: mcp.yaml is not valid (a0ctl tools check)"
    catalog = await _catalog(settings)
    if not declared or catalog is None:
        return ""
    states = {str(s.get("name")): s for s in catalog[1]}
    parts = []
    for name in declared:
        status = states.get(name)
        if status is None:
            parts.append(f"{name} down")
        else:
            parts.append(f"{name} {status.get('state')} ({status.get('detail') or '-'})")
    return "MCP servers: " + ", ".join(parts)


async def list_tools(settings: Settings, user: str) -> ToolList:
    config = mcp_servers.load(settings)
    catalog = await _catalog(settings)
    offered, servers = catalog if catalog is not None else (set(), [])
    states = {s.get("name"): s for s in servers}
    rows = [
        ToolRow(name=n, source="built-in", state="ready", policy="", description=s.description)
        for n, s in BUILTIN_SPECS.items()
    ]
    rows += [
        ToolRow(name=n, source="entry point", state="ready", policy="", description=t.spec.description)
        for n, t in plugin_tools().items()
    ]
    for name, (server, _, _) in config.tools().items():
        if catalog is None:
            state = "unknown (Redis unreachable)"
        elif name in offered:
            state = "ready"
        elif server in states:
            status = states[server]
            state = (
                str(status.get("state")) if status.get("state") != "ready" else "not offered by the server"
            )
        else:
            state = "down (no executor lists it)"
        spec = config.servers[server]
        rows.append(
            ToolRow(
                name=name, source=f"MCP server {server}", state=state, policy="", description=spec.description
            )
        )
    try:
        async with PolicyClient(settings) as policy:
            for row in rows:
                decision = await policy.decide("tool.call", user, tool=row.name)
                row.policy = decision.reason
    except PolicyUnavailable:
        for row in rows:
            row.policy = "unknown (OPA unreachable)"
    return ToolList(tools=rows, servers=servers)


async def call(
    settings: Settings, name: str, user: str, arguments: dict[str, Any], timeout_s: float
) -> ToolResult:
    """Ask the executor for one call over Kafka, as a turn does, and wait for its result."""
    conversation_id, turn_id, call_id = new_id(), new_id(), f"a0ctl-{new_id()[:12]}"
    request = Envelope(
        type=EventType.TOOL_REQUEST,
        conversation_id=conversation_id,
        turn_id=turn_id,
        user_id=user,
        payload={"call_id": call_id, "name": name, "arguments": arguments},
    )
    expected = f"result-{tool_call_key(turn_id, call_id)}"
    try:
        async with admin_client(settings) as admin:
            described = await admin.describe_topics([TOOL_RESULTS])
    except KafkaError as exc:
        raise StackError(
            f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}", service="kafka"
        ) from None
    partitions = [TopicPartition(TOOL_RESULTS, p["partition"]) for t in described for p in t["partitions"]]
    if not partitions:
        raise StackError(f"topic {TOOL_RESULTS} does not exist", hint="run `a0ctl topics apply`")
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    try:
        await consumer.start()
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # pin the end offsets before the request is sent
            await consumer.position(tp)
        producer = make_producer(settings, "a0ctl-tools")
        await producer.start()
        try:
            await (await publish(producer, TOOL_REQUESTS, request))
        finally:
            await producer.stop()
        async with asyncio.timeout(timeout_s):
            async for record in consumer:
                if record.value is None:
                    continue
                try:
                    envelope = Envelope.model_validate_json(record.value)
                except ValueError:
                    continue
                if envelope.id == expected:
                    return ToolResult.model_validate(envelope.payload)
    except TimeoutError:
        raise StackError(
            f"no result for {name} within {timeout_s:g}s",
            service="tool-executor",
            hint="is the tool executor running? `a0ctl status`",
        ) from None
    except KafkaError as exc:
        raise StackError(
            f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}", service="kafka"
        ) from None
    finally:
        await consumer.stop()
    raise AssertionError("unreachable")


def parse_arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--args is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('--args must be a JSON object, e.g. \'{"timezone": "UTC"}\'')
    return value
