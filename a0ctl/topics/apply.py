"""The operations behind ``a0ctl topics plan`` and ``apply``: load, resolve, compare, apply."""

from __future__ import annotations

import asyncio
from pathlib import Path

from a0ctl.errors import StackError
from a0ctl.topics.acl_admin import acl_admin, apply_acl_changes, live_acls, set_scram_credentials
from a0ctl.topics.acls import AclChange, compute_acl_changes, desired_acls
from a0ctl.topics.admin import admin_client, apply_plan, live_topics
from a0ctl.topics.model import TopicsFile, load_topics_file, resolve
from a0ctl.topics.plan import TopicPlan, compute_plan
from services.common.secrets_env import kafka_password_key, read_generated_secret
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
    environment = env or settings.stack.topics_env
    spec = load_topics_file(file or settings.stack.topics_file)
    desired = resolve(spec, environment)
    async with admin_client(settings) as admin:
        plan = compute_plan(
            desired,
            await live_topics(admin),
            environment,
            allow_delete=allow_delete,
            allow_repartition=allow_repartition,
        )
        if plan.refused and apply:
            await apply_plan(admin, plan, desired)  # raises: nothing is changed
        if settings.kafka.security_protocol == "SASL_PLAINTEXT":
            plan.acls_enforced = True
            plan.acls, plan.unmanaged_acls = await asyncio.to_thread(_acl_changes, settings, spec, apply)
        if apply and plan.changes:
            await apply_plan(admin, plan, desired)
    return plan


def _acl_changes(settings: Settings, spec: TopicsFile, apply: bool) -> tuple[list[AclChange], list[str]]:
    with acl_admin(settings) as admin:
        changes, unmanaged = compute_acl_changes(desired_acls(spec), live_acls(admin), list(spec.principals))
        if apply and changes:
            apply_acl_changes(admin, changes)
    return changes, unmanaged


def set_service_credentials(settings: Settings) -> None:
    """Each principal of topics.yaml gets its generated password (conf/env) as its SCRAM
    credential; run by ``a0ctl up``, so a rotated password takes effect on the next up."""
    if settings.kafka.security_protocol != "SASL_PLAINTEXT":
        return
    spec = load_topics_file(settings.stack.topics_file)
    conf = settings.stack.conf_path
    passwords = {
        name: read_generated_secret(conf, kafka_password_key(name)) or "" for name in spec.principals
    }
    missing = [name for name, password in passwords.items() if not password]
    if missing:
        raise StackError(
            f"no generated Kafka password for {', '.join(missing)}", service="kafka", hint="run `a0ctl up`"
        )
    with acl_admin(settings) as admin:
        set_scram_credentials(admin, settings, passwords)


def apply_topics_file(settings: Settings) -> TopicPlan:
    """What ``a0ctl up`` runs once Kafka is healthy: the services' credentials, then
    topics.yaml's topics and ACLs, refusing what loses data."""
    set_service_credentials(settings)
    return asyncio.run(plan_topics(settings, apply=True))
