"""The hostile tier: real turns through gateway → Kafka → worker → tool executor, with
tool code and input that try to get out. One stack for the tier, as in integration."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.common.settings import Settings
from tests.support.stack import settings, stack

__all__ = ["client", "settings", "stack"]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as http:
        yield http
