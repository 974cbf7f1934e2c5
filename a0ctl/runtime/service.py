"""What the local runtime knows of one service (:class:`LocalService`), and what
preparing any of them needs: running a program as the service's own user, giving that user
its directories, and telling a corrupt data directory."""

from __future__ import annotations

import os
import pwd
import signal
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a0ctl import subprocesses
from a0ctl.errors import StackError
from a0ctl.runtime import health
from services.common.settings import Settings


@dataclass
class LocalService:
    name: str
    port: int
    probe: health.Probe
    command: Callable[[], list[str]]
    prepare: Callable[[], None] = lambda: None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    # Grace period after the stop signal before the process group is killed.
    stop_wait_s: int = 20
    # How long a start must last to count as started; a process that exits sooner is
    # retried with a growing back-off, then given up on (FATAL).
    start_s: int = 3
    extra_ports: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    app: bool = False  # a0's own service: stops within seconds
    # supervisord starts lower priorities first and stops them last; replicas share one,
    # so scaling never changes another service's definition.
    priority: int = 500
    # Run (and retried while the server still refuses connections) before health counts.
    after_start: Callable[[], Awaitable[None]] | None = None
    # Directories ``user`` must reach under the private state directory (see allow_traversal).
    reaches: tuple[Path, ...] = ()
    # The pid file the server itself keeps current (PostgreSQL's postmaster.pid): how a
    # server is found after supervisord died when it rewrites its environment, which
    # hides it from supervised_by, and supervisord restarted it since a0ctl recorded it.
    own_pidfile: Path | None = None


@dataclass(frozen=True)
class StackDirs:
    """Where a local stack keeps its data and its run files (generated configs, sockets)."""

    data: Path
    run: Path

    @classmethod
    def under(cls, state: Path) -> StackDirs:
        return cls(data=state / "data", run=state / "run")


def worker_metrics_port(settings: Settings, replica: int) -> int:
    return settings.worker.metrics_port + 10 * replica


def tools_metrics_port(settings: Settings, replica: int) -> int:
    return settings.tools.metrics_port + 10 * replica


def run_checked(argv: list[str], service: str, what: str, user: str | None = None) -> None:
    subprocesses.run(argv, what=what, service=service, **run_as(user))


def run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop to ``user`` entirely: its uid, its group, and none of
    root's groups — with root's group kept, a 0750 root directory would still be closed."""
    if not user:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def service_user(name: str) -> str | None:
    """The unprivileged user a server runs as when a0ctl is root (PostgreSQL refuses to
    run as root; Redis need not be root): Debian's package creates it."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError as exc:
        raise StackError(
            f"running as root but there is no {name!r} user to run {name} as",
            service=name,
            hint="install its Debian package (scripts/bootstrap.sh does)",
        ) from exc
    return name


def chown(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def chown_tree(path: Path, user: str | None) -> None:
    """``path`` and everything under it owned by ``user`` (a stack made before the server
    ran as its own user holds root's files)."""
    if not user:
        return
    chown(path, user)
    for child in path.rglob("*"):
        chown(child, user)


def allow_traversal(path: Path, user: str | None, service: str) -> None:
    """Let ``user`` reach ``path``: a server that runs as its own user must reach its
    directory under the state directory, which is private (0700), as is a checkout under
    ``mktemp -d``. Adds only search permission (o+x, no listing) to the ancestors that
    lack it."""
    if not user:
        return
    uid = pwd.getpwnam(user).pw_uid
    for ancestor in reversed(path.resolve().parents):
        mode = ancestor.stat()
        if mode.st_uid != uid and not mode.st_mode & stat.S_IXOTH:
            try:
                os.chmod(ancestor, stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)
            except OSError as exc:
                raise StackError(
                    f"{service} runs as {user!r}, which cannot reach {path}: {ancestor} is private",
                    service=service,
                    hint=f"allow others to traverse {ancestor} (chmod o+x) or set A0_STATE_DIR elsewhere",
                ) from exc


def dir_is_corrupt(path: Path, marker: str) -> bool:
    return path.exists() and any(path.iterdir()) and not (path / marker).exists()


def corrupt_data_error(service: str, path: Path, marker: str) -> StackError:
    return StackError(
        f"the {service} data directory {path} is corrupt (no {marker})",
        service=service,
        hint="remove it with `a0ctl down --purge` (this deletes the stack's data) and run `a0ctl up` again",
    )
