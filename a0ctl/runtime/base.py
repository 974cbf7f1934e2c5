"""What every runtime offers, and the status record it reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from pydantic import BaseModel

INFRA = ("kafka", "redis", "postgres", "opa")
APPS = ("llm-sim", "tool-executor", "conversation-worker", "gateway")


class ServiceStatus(BaseModel):
    name: str
    runtime: str
    state: str  # running | stopped | unhealthy | failed
    healthy: bool
    endpoint: str
    pid: int | None = None
    detail: str = ""


ProgressFn = Callable[[str, str], None]


class Runtime(Protocol):
    name: str

    def up(
        self, progress: ProgressFn | None = None, *, services: tuple[str, ...] | None = None
    ) -> list[ServiceStatus]: ...

    def down(self, *, purge: bool = False) -> list[str]: ...

    def status(self) -> list[ServiceStatus]: ...

    def logs(self, service: str, *, lines: int = 50, follow: bool = False) -> Iterator[str]: ...
