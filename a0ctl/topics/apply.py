"""The operations behind ``a0ctl topics plan`` and ``apply``: load, resolve, compare, apply."""

from __future__ import annotations

import asyncio
from pathlib import Path

from a0ctl.topics.admin import admin_client, apply_plan, live_topics
from a0ctl.topics.model import load_topics_file, resolve
from a0ctl.topics.plan import TopicPlan, compute_plan
from services.common.settings import Settings


async def plan_topics(
    settings: Settings,
    file: Path | None = None,
    env: str | None = None,
    *,
    allow_delete: bool = False,
    allow_repartition: bool = False,
    apply: bool = False,
) -> TopicPlan:
    environment = env or settings.stack.env
    desired = resolve(load_topics_file(file or settings.stack.topics_file), environment)
    async with admin_client(settings.kafka_bootstrap) as admin:
        plan = compute_plan(
            desired,
            await live_topics(admin),
            environment,
            allow_delete=allow_delete,
            allow_repartition=allow_repartition,
        )
        if apply and plan.has_changes:
            await apply_plan(admin, plan, desired)
    return plan


def apply_topics_file(settings: Settings) -> TopicPlan:
    """What ``a0ctl up`` runs once Kafka is healthy: apply topics.yaml, refusing what loses data."""
    return asyncio.run(plan_topics(settings, apply=True))
