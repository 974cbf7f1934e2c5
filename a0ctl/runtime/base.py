"""What every runtime offers, and the status record it reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel

INFRA = ("kafka", "redis", "postgres", "opa")
APPS = ("llm-sim", "tool-executor", "conversation-worker", "gateway")
# Traces and metrics of the local runtime (A0_OTEL_JAEGER, A0_PROMETHEUS_ENABLED).
OBSERVABILITY = ("jaeger", "prometheus")


class ServiceStatus(BaseModel):
    name: str
    runtime: str
    state: str  # running | starting | unhealthy | failed (given up) | stopped
    healthy: bool
    endpoint: str
    pid: int | None = None
    detail: str = ""
    restarts: int = 0  # times started again since the stack came up (crash, watchdog, restart)
    since: datetime | None = None  # when it entered its current state


ProgressFn = Callable[[str, str], None]


class Runtime(Protocol):
    name: str

    def up(
        self, progress: ProgressFn | None = None, *, services: tuple[str, ...] | None = None
    ) -> list[ServiceStatus]: ...

    def down(self, *, purge: bool = False) -> list[str]: ...

    def status(self) -> list[ServiceStatus]: ...

    def restart(self, service: str, progress: ProgressFn | None = None) -> list[ServiceStatus]: ...

    def scale(
        self, service: str, replicas: int, progress: ProgressFn | None = None
    ) -> list[ServiceStatus]: ...

    def logs(self, service: str, *, lines: int = 50, follow: bool = False) -> Iterator[str]: ...
