"""The integration tier: one session-scoped stack, brought up by the same code as
``a0ctl up`` (local runtime, real Kafka, Redis, PostgreSQL, OPA and a0's services)."""

from __future__ import annotations

from collections.abc import Iterator

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
