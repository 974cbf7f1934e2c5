"""How a stack is started: ``local`` (supervised processes under ``.a0/``) or ``compose``."""

from __future__ import annotations

import shutil

from a0ctl import subprocesses
from a0ctl.errors import StackError
from a0ctl.runtime.base import Runtime, ServiceStatus
from services.common.settings import Settings

__all__ = ["Runtime", "ServiceStatus", "docker_engine_answers", "get_runtime"]


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) answers."""
    if not shutil.which("docker"):
        return False
    try:
        result = subprocesses.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], what="docker info", check=False, timeout=10
        )
    except subprocesses.CommandError:
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def get_runtime(settings: Settings, name: str | None = None) -> Runtime:
    choice = name or settings.stack.runtime
    if choice == "auto":
        choice = "compose" if docker_engine_answers() else "local"
    if choice == "local":
        from a0ctl.runtime.local import LocalRuntime

        return LocalRuntime(settings)
    if choice == "compose":
        from a0ctl.runtime.compose import ComposeRuntime

        return ComposeRuntime(settings)
    raise StackError(f"unknown runtime {choice!r}", hint="use --runtime local or --runtime compose")
