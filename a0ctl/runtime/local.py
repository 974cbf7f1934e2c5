"""The ``local`` runtime: a0ctl starts real server processes, keeps their state under
``.a0/`` (``data/``, ``logs/``, ``run/`` with pid files) and stops them on ``down``."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from a0ctl.runtime import health
from a0ctl.runtime.base import ProgressFn, ServiceStatus
from a0ctl.runtime.local_services import LocalService, build_services, run_as
from services.common.errors import StackError
from services.common.settings import Settings

LOG_TAIL_LINES = 20


def process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) in parentheses: state is
    # field 3, starttime field 22. A zombie has exited: it only awaits its parent's wait().
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def process_alive(pid: int) -> bool:
    return process_start_time(pid) is not None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class LocalRuntime:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = settings.stack.state_path
        self.services = build_services(settings, self.state)

    # --- paths and pids ------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The pid of our running process for ``name``, checked against its start time."""
        path = self._pid_path(name)
        try:
            pid_text, started = path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if process_start_time(pid) != started:
            return None
        return pid

    def _endpoint(self, service: LocalService) -> str:
        return f"{self.settings.stack.host}:{service.port}"

    # --- lifecycle -------------------------------------------------------------
    def _start(self, service: LocalService) -> int:
        host = self.settings.stack.host
        for port in (service.port, *service.extra_ports):
            # A process that was just stopped may hold its port a moment longer.
            deadline = time.monotonic() + 5
            while port_in_use(host, port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if port_in_use(host, port):
                raise StackError(
                    f"port {port} needed by {service.name} is already in use by another process",
                    service=service.name,
                    hint=f"stop that process (`ss -ltnp 'sport = :{port}'` shows it) or choose another port "
                    "in .env",
                )
        service.prepare()
        argv = service.command()
        log = self.log_path(service.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n--- a0ctl starting {service.name} at {time.strftime('%FT%T%z')} ---\n".encode())
            out.flush()
            try:
                process = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.settings.stack.home,
                    env={**os.environ, **service.env},
                    start_new_session=True,  # its own process group: down stops it and its children
                    **run_as(service.user),
                )
            except FileNotFoundError as exc:
                raise StackError(f"{argv[0]} not found", service=service.name) from exc
        self._pid_path(service.name).write_text(f"{process.pid} {process_start_time(process.pid)}")
        return process.pid

    def _fail(self, service: LocalService, reason: str) -> StackError:
        log = self.log_path(service.name)
        tail = ""
        if log.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        return StackError(
            f"{service.name} {reason}\n--- last lines of {log} ---\n{tail}",
            service=service.name,
            hint=f"full log: {log}",
        )

    async def _after_start(self, service: LocalService, deadline: float) -> None:
        """The service's own set-up step, retried while it does not accept connections yet."""
        import psycopg

        if service.after_start is None:
            return
        while True:
            try:
                await service.after_start()
                return
            except (psycopg.OperationalError, OSError) as exc:
                if self.pid(service.name) is None:
                    raise self._fail(service, "exited during start-up") from None
                if time.monotonic() > deadline:
                    raise self._fail(service, f"could not be set up in time ({exc})") from None
                await asyncio.sleep(0.25)

    async def _wait_healthy(
        self, service: LocalService, deadline: float, progress: ProgressFn | None
    ) -> None:
        await self._after_start(service, deadline)
        while True:
            ok, detail = await health.check(service.probe, self.settings, timeout=3)
            if ok:
                if progress:
                    progress(service.name, "healthy")
                return
            if self.pid(service.name) is None:
                raise self._fail(service, "exited during start-up")
            if time.monotonic() > deadline:
                raise self._fail(service, f"did not become healthy in time ({detail})")
            await asyncio.sleep(0.25)

    def _expand(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """A service name also stands for its replicas (``conversation-worker-2`` ...)."""
        return tuple(
            known
            for name in names
            for known in self.services
            if known == name or known.startswith(f"{name}-")
        )

    def up(
        self, progress: ProgressFn | None = None, *, services: tuple[str, ...] | None = None
    ) -> list[ServiceStatus]:
        names = self._expand(services) if services else tuple(self.services)
        for directory in ("data", "logs", "run"):
            (self.state / directory).mkdir(parents=True, exist_ok=True)
        started: list[LocalService] = []
        for name in names:
            service = self.services[name]
            if self.pid(name) is None:
                if progress:
                    progress(name, "starting")
                self._start(service)
            started.append(service)
        deadline = time.monotonic() + self.settings.stack.startup_timeout_s

        async def wait_all() -> None:
            await asyncio.gather(*(self._wait_healthy(s, deadline, progress) for s in started))

        asyncio.run(wait_all())
        return [s for s in self.status() if s.name in names]

    def _stop(self, name: str, timeout: float = 20.0) -> bool:
        pid = self.pid(name)
        if pid is None:
            self._pid_path(name).unlink(missing_ok=True)
            return False
        service = self.services.get(name)
        try:
            os.killpg(pid, service.stop_signal if service else signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process_start_time(pid) is not None:
            _reap(pid)
            time.sleep(0.1)
        if process_start_time(pid) is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
        self._pid_path(name).unlink(missing_ok=True)
        return True

    def down(self, *, purge: bool = False) -> list[str]:
        # Everything with a pid file, including services the settings no longer name
        # (fewer worker replicas than when it started): nothing of ours keeps running.
        recorded = sorted(path.stem for path in (self.state / "run").glob("*.pid"))
        extra = [name for name in recorded if name not in self.services]
        stopped = [name for name in [*reversed(list(self.services)), *extra] if self._stop(name)]
        if purge:
            for directory in ("data", "logs", "run"):
                shutil.rmtree(self.state / directory, ignore_errors=True)
        return stopped

    def stop_service(self, name: str) -> bool:
        return self._stop(name)

    def kill_service(self, name: str) -> int | None:
        """SIGKILL a service's process group at once (fault-injection for tests and drills)."""
        pid = self.pid(name)
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while process_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
        return pid

    def status(self) -> list[ServiceStatus]:
        async def probe_all() -> list[tuple[bool, str]]:
            return list(
                await asyncio.gather(
                    *(health.check(s.probe, self.settings, timeout=3) for s in self.services.values())
                )
            )

        results = asyncio.run(probe_all())
        statuses = []
        for service, (ok, detail) in zip(self.services.values(), results, strict=True):
            pid = self.pid(service.name)
            if pid is None:
                state = "stopped"
                ok = False
                detail = "not running"
            else:
                state = "running" if ok else "unhealthy"
            statuses.append(
                ServiceStatus(
                    name=service.name,
                    runtime=self.name,
                    state=state,
                    healthy=ok,
                    endpoint=self._endpoint(service),
                    pid=pid,
                    detail=detail,
                )
            )
        return statuses

    def logs(self, service: str, *, lines: int = 50, follow: bool = False) -> Iterator[str]:
        if service not in self.services:
            raise StackError(f"unknown service {service!r}", hint="one of: " + ", ".join(self.services))
        path = self.log_path(service)
        if not path.exists():
            raise StackError(f"no log yet for {service} ({path})", hint="start the stack with `a0ctl up`")
        with open(path, errors="replace") as handle:
            yield from handle.readlines()[-lines:] if lines > 0 else []
            while follow:
                line = handle.readline()
                if line:
                    yield line
                else:
                    time.sleep(0.2)


def _reap(pid: int) -> None:
    """Collect a child's exit status so it does not linger as a zombie in this process."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
