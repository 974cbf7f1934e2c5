"""The test stack of the tiers that need one: brought up by the same code as ``a0ctl up``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from a0ctl.runtime.local import LocalRuntime
from a0ctl.runtime.stack import bring_up
from services.common.settings import load_settings


@contextmanager
def running_test_stack() -> Iterator[LocalRuntime]:
    """The local runtime on the test ports and state dir, all healthy; purged at the end."""
    runtime, statuses = bring_up(load_settings(), runtime_name="local")
    try:
        unhealthy = [s for s in statuses if s.state != "stopped" and not s.healthy]
        assert not unhealthy, f"stack did not come up healthy: {unhealthy}"
        assert isinstance(runtime, LocalRuntime)
        yield runtime
    finally:
        runtime.down(purge=True)
