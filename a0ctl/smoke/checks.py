"""The smoke checks. Each returns a :class:`Check`; none raises."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
from pydantic import BaseModel

from a0ctl.checks import Check
from a0ctl.runtime import health
from a0ctl.topics.admin import consumer_lag
from a0ctl.topics.apply import plan_topics
from services.common.settings import Settings


class SmokeReport(BaseModel):
    ok: bool
    checks: list[Check]


async def _topics(settings: Settings) -> str:
    plan = await plan_topics(settings)
    if plan.has_changes:
        raise RuntimeError(
            "drift from topics.yaml: " + "; ".join(f"{c.topic}: {c.detail}" for c in plan.changes)
        )
    return f"{len(plan.unchanged)} topics match topics.yaml ({plan.env})"


async def _opa(settings: Settings) -> str:
    from services.common.policy import PolicyClient

    async with PolicyClient(settings) as policy:
        allowed = await policy.decide("conversation.read", "smoke", owner_id="smoke")
        denied = await policy.decide("conversation.read", "smoke", owner_id="someone-else")
    if not allowed.allow or denied.allow:
        raise RuntimeError(f"unexpected decisions: owner {allowed.reason!r}, other {denied.reason!r}")
    return f"owner allowed, other user denied ({denied.reason})"


async def _gateway_ready(settings: Settings) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{settings.gateway_url}/ready")
    if response.status_code != 200:
        raise RuntimeError(f"/ready answered {response.status_code}: {response.text[:200]}")
    return "/health and /ready: " + ", ".join(f"{k} ok" for k in response.json().get("checks", {}))


async def _lag(settings: Settings, threshold_s: float) -> str:
    rows = await consumer_lag(settings, None)
    worst: dict[str, tuple[int, float]] = {}
    for row in rows:
        messages, seconds = worst.get(row.group, (0, 0.0))
        worst[row.group] = (messages + row.lag, max(seconds, row.lag_seconds))
    over = {group: f"{s:.1f}s" for group, (_, s) in worst.items() if s > threshold_s}
    if over:
        raise RuntimeError(f"consumers more than {threshold_s:g}s behind: {over}")
    return (
        ", ".join(f"{g}: {m} behind, oldest {s:.1f}s" for g, (m, s) in sorted(worst.items()))
        or "no consumer groups yet"
    )


async def _roundtrip(settings: Settings) -> str:
    from a0ctl.client import GatewayClient

    async with GatewayClient.for_user(settings, "a0-smoke") as client:
        conversation = await client.create_conversation("smoke")
        events = await client.send_and_collect(conversation, "compute 6*7", timeout=30)
    types = [event["type"] for event in events]
    if "tool.result" not in types or types[-1] != "message.completed":
        raise RuntimeError(f"unexpected events: {types}")
    answer = events[-1]["payload"]["content"]
    if "42" not in answer:
        raise RuntimeError(f"answer does not hold the tool result: {answer!r}")
    return f"{len(events)} events, tool call answered: {answer!r}"


async def run_smoke(
    settings: Settings, *, lag_threshold_s: float = 5.0, with_services: bool = True
) -> SmokeReport:
    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("kafka metadata", lambda: health.kafka_probe(settings)),
        ("topics", lambda: _topics(settings)),
        ("redis", lambda: health.redis_probe(settings)),
        ("postgres", lambda: health.postgres_probe(settings)),
        ("opa decides", lambda: _opa(settings)),
    ]
    if with_services:
        checks += [
            ("gateway", lambda: _gateway_ready(settings)),
            ("consumer lag", lambda: _lag(settings, lag_threshold_s)),
            ("end-to-end roundtrip", lambda: _roundtrip(settings)),
        ]
    results = []
    for name, check in checks:
        started = time.monotonic()
        try:
            detail = await asyncio.wait_for(check(), 45)
            ok = True
        except Exception as exc:  # a failed check is a report line, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:500]
        results.append(Check(name=name, ok=ok, detail=detail, seconds=round(time.monotonic() - started, 3)))
    return SmokeReport(ok=all(r.ok for r in results), checks=results)
