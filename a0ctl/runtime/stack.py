"""Bring the whole stack up in order: infrastructure, then topics and the database
schema, then a0's own services. ``a0ctl up`` and the test fixtures both call
:func:`bring_up`, so tests run the exact start-up path users do."""

from __future__ import annotations

import asyncio

from a0ctl.runtime import get_runtime
from a0ctl.runtime.base import APPS, INFRA, OBSERVABILITY, ProgressFn, Runtime, ServiceStatus
from services.common.secrets_env import (
    apply_generated_secrets,
    ensure_generated_secrets,
    ensure_kafka_passwords,
)
from services.common.settings import KAFKA_ADMIN, Settings


def bring_up(
    settings: Settings,
    *,
    runtime_name: str | None = None,
    progress: ProgressFn | None = None,
    with_apps: bool = True,
) -> tuple[Runtime, list[ServiceStatus]]:
    ensure_generated_secrets(settings.stack.conf_path)
    from a0ctl.topics.model import load_topics_file

    # A SCRAM password for a0ctl's principal and for each service's (topics.yaml).
    principals = [KAFKA_ADMIN, *load_topics_file(settings.stack.topics_file).principals]
    ensure_kafka_passwords(settings.stack.conf_path, principals)
    # Generated secrets (JWT key, simulator key) now exist: fill them into the settings.
    settings = apply_generated_secrets(settings)
    runtime = get_runtime(settings, runtime_name)
    runtime.up(progress, services=INFRA)
    if progress:
        progress("topics", "applying topics.yaml")
    from a0ctl.topics.apply import apply_topics_file

    apply_topics_file(settings)
    if progress:
        progress("postgres", "migrating the schema to head")
    from services.common.db import migrate

    asyncio.run(migrate(settings))
    if with_apps:
        # Jaeger first, so the services' first spans have somewhere to go.
        runtime.up(progress, services=(OBSERVABILITY[0], *APPS, *OBSERVABILITY[1:]))
    return runtime, runtime.status()
