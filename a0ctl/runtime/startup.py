"""Waiting for the services ``up``, ``restart`` and ``scale`` started: each one's own
set-up step, then its health check, all before the stack's start-up deadline. A service
supervisord gave up on fails at once, with the last lines of its log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from a0ctl.errors import StackError
from a0ctl.runtime import health
from a0ctl.runtime.base import ProgressFn
from a0ctl.runtime.service import LocalService
from a0ctl.runtime.supervisor import SupervisorClient
from services.common.retry import WaitTimeout, wait_until_async
from services.common.settings import Settings

LOG_TAIL_LINES = 20


class StartupWaits:
    """The start-up waits of one stack: its settings, its supervisord, its logs."""

    def __init__(
        self, settings: Settings, supervisor: SupervisorClient, log_path: Callable[[str], Path]
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.log_path = log_path

    def fail(self, service: LocalService, reason: str) -> StackError:
        log = self.log_path(service.name)
        tail = ""
        if log.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        return StackError(
            f"{service.name} {reason}\n--- last lines of {log} ---\n{tail}",
            service=service.name,
            hint=f"full log: {log}; after fixing the cause: `a0ctl restart {service.name}`",
        )

    async def _after_start(self, service: LocalService, deadline: float) -> None:
        """The service's own set-up step, retried while it does not accept connections yet."""
        import psycopg

        after_start = service.after_start
        if after_start is None:
            return
        last_error: Exception | None = None

        async def set_up() -> bool:
            nonlocal last_error
            try:
                await after_start()
                return True
            except (psycopg.OperationalError, OSError) as exc:
                # Not up yet, or restarted by supervisord: only its giving up is final.
                last_error = exc
            await self._raise_if_given_up(service, "gave up before it could be set up")
            return False

        await self._wait(service, deadline, set_up, lambda: f"could not be set up in time ({last_error})")

    async def _wait(
        self,
        service: LocalService,
        deadline: float,
        ready: Callable[[], Awaitable[bool]],
        why: Callable[[], str],
    ) -> None:
        """Ask ``ready`` until it holds or ``deadline`` passes; then fail with ``why()``."""
        try:
            await wait_until_async(
                ready, timeout=deadline - time.monotonic(), interval=0.25, describe=f"{service.name} to start"
            )
        except WaitTimeout:
            raise self.fail(service, why()) from None

    async def _raise_if_given_up(self, service: LocalService, reason: str) -> None:
        info = await asyncio.to_thread(self.supervisor.process, service.name)
        if info.statename == "FATAL":
            raise self.fail(service, reason)

    async def _wait_healthy(
        self, service: LocalService, deadline: float, progress: ProgressFn | None
    ) -> None:
        await self._after_start(service, deadline)
        detail = ""

        async def healthy() -> bool:
            nonlocal detail
            ok, detail = await health.check(service.probe, self.settings, timeout=3)
            if not ok:
                retries = self.settings.stack.restart_retries
                await self._raise_if_given_up(service, f"gave up: exited too quickly, {retries + 1} times")
            return ok

        await self._wait(service, deadline, healthy, lambda: f"did not become healthy in time ({detail})")
        if progress:
            progress(service.name, "healthy")

    def wait_all(self, services: list[LocalService], progress: ProgressFn | None) -> None:
        """Wait for each of ``services`` to be set up and healthy, together, within the
        stack's start-up timeout."""
        deadline = time.monotonic() + self.settings.stack.startup_timeout_s

        async def wait_all() -> None:
            await asyncio.gather(*(self._wait_healthy(service, deadline, progress) for service in services))

        asyncio.run(wait_all())
