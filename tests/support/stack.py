"""The session-scoped stack of the tiers that need one (integration, faults): brought up
by the same code as ``a0ctl up`` (local runtime, real Kafka, Redis, PostgreSQL, OPA and
a0's services under supervisord), purged at the end, and a client of its gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from a0ctl.runtime.local import LocalRuntime
from a0ctl.runtime.stack import bring_up
from services.common.settings import Settings, load_settings


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalRuntime]:
    runtime, statuses = bring_up(load_settings(), runtime_name="local")
    unhealthy = [s for s in statuses if s.state != "stopped" and not s.healthy]
    assert not unhealthy, f"stack did not come up healthy: {unhealthy}"
    assert isinstance(runtime, LocalRuntime)
    yield runtime
    runtime.down(purge=True)


@pytest.fixture
def settings(stack: LocalRuntime) -> Settings:
    return load_settings()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the stack's gateway."""
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as http:
        yield http
