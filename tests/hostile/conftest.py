"""The hostile tier: real turns through gateway → Kafka → worker → tool executor, with
tool code and input that try to get out. One stack for the tier, as in integration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from a0ctl.runtime.local import LocalRuntime
from services.common.settings import Settings, load_settings
from tests.support.stack import running_test_stack


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalRuntime]:
    with running_test_stack() as runtime:
        yield runtime


@pytest.fixture
def settings(stack: LocalRuntime) -> Settings:
    return load_settings()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as http:
        yield http
