"""The ``local`` runtime: real server processes under supervisord, state under ``.a0/``
(``data/``, ``logs/``, ``run/`` with supervisord's config, socket and pid files).

``up`` prepares each service (Kafka's storage, ``initdb``), writes supervisord's config,
starts supervisord (or applies the changed config to the running one) and starts the
services in order, waiting for each one's health check. supervisord restarts what
crashes; the watchdog (:mod:`a0ctl.runtime.watchdog`) restarts what stays unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from a0ctl.errors import StackError
from a0ctl.runtime import health
from a0ctl.runtime.base import ProgressFn, ServiceStatus
from a0ctl.runtime.local_services import SCALABLE, build_services, python
from a0ctl.runtime.logfile import read_log
from a0ctl.runtime.processes import (
    command_line,
    listeners,
    make_private,
    own_pid,
    port_free,
    private_files,
    process_alive,
    process_start_time,
    stop_group,
    supervised_by,
    supervised_elsewhere,
)
from a0ctl.runtime.service import LocalService
from a0ctl.runtime.startup import StartupWaits
from a0ctl.runtime.supervisor import (
    ACTIVE_STATES,
    WATCHDOG,
    ProcessInfo,
    Program,
    SupervisorClient,
    SupervisorPaths,
    daemon_pid,
    render_config,
    signal_name,
    start_daemon,
)
from services.common.retry import WaitTimeout, wait_until
from services.common.settings import Settings
from services.tool_executor.cgroups import remove_stack_parents

RESTARTS_FILE = "restarts.json"
SCALE_FILE = "scale.json"


def _timestamp(seconds: int) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


class LocalRuntime:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = settings.stack.state_path
        self.paths = SupervisorPaths.under(self.state)
        self.supervisor = SupervisorClient(self.paths)
        self.services = build_services(settings, self.state, self.replicas())
        self.startup = StartupWaits(settings, self.supervisor, self.log_path)

    # --- files under the state directory ------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def _run_file(self, name: str) -> Path:
        return self.state / "run" / name

    def replicas(self) -> dict[str, int]:
        """Replica counts set with `a0ctl scale` for the running stack (forgotten on down)."""
        try:
            return {str(k): int(v) for k, v in json.loads(self._run_file(SCALE_FILE).read_text()).items()}
        except (OSError, ValueError):
            return {}

    def starts(self) -> dict[str, int]:
        """How often supervisord started each service since it started (kept by the watchdog)."""
        try:
            return {str(k): int(v) for k, v in json.loads(self._run_file(RESTARTS_FILE).read_text()).items()}
        except (OSError, ValueError):
            return {}

    def _pid_files(self) -> list[Path]:
        return [p for p in (self.state / "run").glob("*.pid") if p != self.paths.pidfile]

    def recorded_pid(self, name: str) -> int | None:
        """The pid in ``run/NAME.pid`` (how stacks were run before supervisord), if that
        process still runs."""
        try:
            pid_text, started = self._run_file(f"{name}.pid").read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return pid if process_start_time(pid) == started else None

    def record_pids(self, processes: dict[str, ProcessInfo]) -> None:
        """Keep ``run/NAME.pid`` of each running service: if supervisord is killed, its
        children run on, and the next ``up`` stops them by these (some services rewrite
        their environment, so :func:`supervised_by` cannot see every one)."""
        for name, info in processes.items():
            path = self._run_file(f"{name}.pid")
            started = process_start_time(info.pid) if info.pid else None
            if info.statename in ACTIVE_STATES and started:
                if self.recorded_pid(name) != info.pid:
                    path.write_text(f"{info.pid} {started}")
            else:
                path.unlink(missing_ok=True)

    # --- supervisord -----------------------------------------------------------------
    def _processes(self) -> dict[str, ProcessInfo]:
        return self.supervisor.processes() if self.supervisor.answers() else {}

    def pid(self, name: str) -> int | None:
        info = self._processes().get(name)
        return info.pid if info and info.statename in ACTIVE_STATES and info.pid else None

    def _programs(self) -> list[Program]:
        return [
            Program(
                name=service.name,
                command=service.command(),
                directory=self.settings.stack.home.resolve(),
                log=self.log_path(service.name),
                priority=service.priority,
                user=service.user,
                stop_signal=signal_name(service.stop_signal),
                stop_wait_s=service.stop_wait_s,
                start_s=service.start_s,
                start_retries=self.settings.stack.restart_retries,
                environment=service.env,
            )
            for service in self.services.values()
        ]

    def _ensure_supervisor(self) -> None:
        """Write supervisord's config; start supervisord, or apply the config to it."""
        stack = self.settings.stack
        text = render_config(
            self._programs(),
            self.paths,
            home=stack.home.resolve(),
            watchdog=[python(), "-m", "a0ctl.runtime.watchdog"],
            log_max_bytes=stack.log_max_bytes,
            log_backups=stack.log_backups,
        )
        with private_files():  # it holds OPA's tokens, in the environment it gives OPA
            self.paths.conf.write_text(text)
        os.chmod(self.paths.conf, 0o600)
        if self.supervisor.answers():
            self.supervisor.update()
            return
        self._run_file(RESTARTS_FILE).unlink(missing_ok=True)
        start_daemon(self.paths)

    def _require_supervisor(self) -> None:
        if not self.supervisor.answers():
            raise StackError("the local stack is not running", hint="start it with `a0ctl up`")

    # --- lifecycle -------------------------------------------------------------------
    def _check_ports(self, service: LocalService) -> None:
        host = self.settings.stack.host
        for port in (service.port, *service.extra_ports):
            # A process that was just stopped may hold its port a moment longer.
            try:
                wait_until(
                    functools.partial(port_free, host, port), timeout=5, describe=f"port {port} to be free"
                )
            except WaitTimeout:
                holders = [f"pid {pid} ({command_line(pid)[:120]})" for pid in listeners(port)]
                raise StackError(
                    f"port {port} needed by {service.name} is already in use by "
                    + (", ".join(holders) or "another process"),
                    service=service.name,
                    hint=f"stop that process (`ss -ltnp 'sport = :{port}'` shows it) or choose another port "
                    "in .env",
                ) from None

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
        with private_files():
            for directory in ("data", "logs", "run"):
                (self.state / directory).mkdir(parents=True, exist_ok=True)
            make_private(self.state, self.services.values())
            return self._up(names, progress)

    def _up(self, names: tuple[str, ...], progress: ProgressFn | None) -> list[ServiceStatus]:
        if not self.supervisor.answers():
            pid = daemon_pid(self.paths)
            if pid is not None:
                raise StackError(
                    f"supervisord (pid {pid}) runs but does not answer on {self.paths.socket}",
                    hint=f"see {self.paths.log}; `kill {pid}` stops it and its services",
                )
            # Processes of a supervisord that was killed, or of a stack started before
            # supervision: stopped gracefully, then run again under supervisord.
            self._stop_unsupervised()
        active = {n for n, info in self._processes().items() if info.statename in ACTIVE_STATES}
        for name in names:
            if name not in active:
                self._check_ports(self.services[name])
                self.services[name].prepare()
        self._ensure_supervisor()
        return self._start_stopped(names, progress)

    def _start_stopped(self, names: tuple[str, ...], progress: ProgressFn | None) -> list[ServiceStatus]:
        """Start those of ``names`` supervisord is not running, wait for their health."""
        processes = self.supervisor.processes()
        for name in names:
            if processes[name].statename not in ACTIVE_STATES:
                if progress:
                    progress(name, "starting")
                self.supervisor.start(name)
        self.startup.wait_all([self.services[n] for n in names], progress)
        self.record_pids(self.supervisor.processes())
        return [s for s in self.status() if s.name in names]

    def restart(self, service: str, progress: ProgressFn | None = None) -> list[ServiceStatus]:
        """Stop and start a service (each replica in turn, waiting for its health), also
        one supervisord gave up on."""
        names = self._known(service)
        self._require_supervisor()
        for name in names:
            if progress:
                progress(name, "restarting")
            self.supervisor.stop(name)
            self.supervisor.start(name)
            self.startup.wait_all([self.services[name]], progress)
        self.record_pids(self.supervisor.processes())
        return [s for s in self.status() if s.name in names]

    def scale(self, service: str, replicas: int, progress: ProgressFn | None = None) -> list[ServiceStatus]:
        """Run ``replicas`` processes of ``service`` on the running stack. New replicas join
        the consumer group, removed ones leave it on a graceful stop; the group rebalances."""
        if service not in SCALABLE:
            raise StackError(
                f"{service} cannot be scaled",
                hint="scalable: " + ", ".join(SCALABLE) + "; gateway processes: A0_GATEWAY_WORKERS",
            )
        if not 1 <= replicas <= 16:
            raise StackError(f"replicas must be between 1 and 16, not {replicas}")
        self._require_supervisor()
        self._run_file(SCALE_FILE).write_text(json.dumps({**self.replicas(), service: replicas}))
        self.services = build_services(self.settings, self.state, self.replicas())
        self._ensure_supervisor()
        if "prometheus" in self.services:
            self.services["prometheus"].prepare()  # scrape the new replicas too
        names = self._expand((service,))
        return self._start_stopped(names, progress)

    def _known(self, service: str) -> tuple[str, ...]:
        names = self._expand((service,))
        if not names:
            raise StackError(f"unknown service {service!r}", hint="one of: " + ", ".join(self.services))
        return names

    def _stop_unsupervised(self) -> list[str]:
        """Stop what runs of this stack without a supervisord: the children of one that was
        killed, and processes with a pid file from a stack started before supervision;
        each with its own stop signal, in reverse start order."""
        targets: dict[str, int] = {}
        for path in self._pid_files():
            pid = self.recorded_pid(path.stem)
            if pid is not None:
                targets[path.stem] = pid
            path.unlink(missing_ok=True)
        targets.update(supervised_by(self.paths.socket))
        for name, defined in self.services.items():
            pid = own_pid(defined.own_pidfile) if defined.own_pidfile else None
            if pid is not None:
                targets[name] = pid
        # One that none of these names (restarted after its pid was last recorded, say) is
        # still found by the port it listens on, if it runs the service's own command.
        for name, defined in self.services.items():
            if name not in targets:
                pid = self._listening_as(defined)
                if pid is not None:
                    targets[name] = pid
        # The watchdog would exit once it sees its supervisord gone, but a new one answers
        # on the same socket at once: stopped too, so it cannot restart what is stopped here.
        for name in sorted(targets, key=self._priority, reverse=True):
            service = self.services.get(name)
            stop_group(
                targets[name],
                service.stop_signal if service else signal.SIGTERM,
                service.stop_wait_s if service else 20,
            )
        return sorted(targets, key=self._priority)

    def _listening_as(self, service: LocalService) -> int | None:
        """The process-group leader (as supervisord starts each service) listening on one
        of ``service``'s ports with exactly its command line, if any, and not started by
        another stack's supervisord: a second stack on this host with the same ports (one
        brought up for a single service) must not stop the first one's services."""
        for port in (service.port, *service.extra_ports):
            for pid in listeners(port):
                try:
                    if os.getpgid(pid) != pid:
                        continue
                except OSError:  # gone meanwhile
                    continue
                if supervised_elsewhere(pid, self.paths.socket):
                    continue
                try:  # only now: a command may first fetch or build its program
                    command = " ".join(service.command())
                except StackError:  # not even installed: nothing of it runs
                    return None
                if command_line(pid) == command:
                    return pid
        return None

    def _priority(self, name: str) -> int:
        return self.services[name].priority if name in self.services else 0

    def down(self, *, purge: bool = False) -> list[str]:
        stopped: list[str] = []
        if self.supervisor.answers():
            stopped = [n for n, i in self.supervisor.processes().items() if i.statename in ACTIVE_STATES]
            pid = daemon_pid(self.paths)
            # The watchdog first, so it never restarts a service being stopped; then
            # supervisord stops the services in reverse start order, each with its own
            # signal and grace period, and exits.
            self.supervisor.stop(WATCHDOG)
            self.supervisor.shutdown()
            grace = sum(s.stop_wait_s for s in self.services.values()) + 30
            if pid is not None:  # what still runs after the grace period is stopped below
                with contextlib.suppress(WaitTimeout):
                    wait_until(lambda: not process_alive(pid), timeout=grace, describe="supervisord to exit")
        stopped += [n for n in self._stop_unsupervised() if n not in stopped]
        stopped.sort(key=self._priority)
        self._run_file(SCALE_FILE).unlink(missing_ok=True)
        if os.geteuid() == 0:
            # The executors' parent cgroups (made as root, which they no longer are at exit).
            remove_stack_parents(self.state)
        if purge:
            for directory in ("data", "logs", "run"):
                shutil.rmtree(self.state / directory, ignore_errors=True)
        return stopped

    def stop_service(self, name: str) -> bool:
        self._require_supervisor()
        was_running = self.pid(name) is not None
        self.supervisor.stop(name)
        return was_running

    def kill_service(self, name: str) -> int | None:
        """SIGKILL a service's process group at once (fault injection for tests and drills);
        supervisord starts it again."""
        pid = self.pid(name)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            with contextlib.suppress(WaitTimeout):  # supervisord restarts it either way
                wait_until(
                    lambda: not process_alive(pid), timeout=10, interval=0.05, describe=f"{pid} to die"
                )
        return pid

    def status(self) -> list[ServiceStatus]:
        async def probe_all() -> list[tuple[bool, str]]:
            return list(
                await asyncio.gather(
                    *(health.check(s.probe, self.settings, timeout=3) for s in self.services.values())
                )
            )

        results = asyncio.run(probe_all())
        processes = self._processes()
        starts = self.starts()
        statuses = []
        for service, (ok, detail) in zip(self.services.values(), results, strict=True):
            info = processes.get(service.name)
            state = info.statename if info else "STOPPED"
            pid = info.pid if info and info.statename in ACTIVE_STATES and info.pid else None
            since = None
            if info:
                since = _timestamp(info.start if state in ACTIVE_STATES else info.stop)
            if state == "FATAL":
                state, ok = "failed", False
                detail = (
                    f"gave up after {self.settings.stack.restart_retries + 1} quick exits; "
                    f"fix the cause (`a0ctl logs {service.name}`), then `a0ctl restart {service.name}`"
                )
            elif state == "BACKOFF" or (state == "STARTING" and not ok):
                state = "starting"
            elif state in ("RUNNING", "STARTING"):
                state = "running" if ok else "unhealthy"
            else:
                state, ok, detail = "stopped", False, "not running"
            statuses.append(
                ServiceStatus(
                    name=service.name,
                    runtime=self.name,
                    state=state,
                    healthy=ok,
                    endpoint=f"{self.settings.stack.host}:{service.port}",
                    pid=pid,
                    detail=detail,
                    restarts=max(0, starts.get(service.name, 0) - 1),
                    since=since,
                )
            )
        return statuses

    def logs(self, service: str, *, lines: int = 50, follow: bool = False) -> Iterator[str]:
        if service not in (*self.services, WATCHDOG, "supervisord"):
            raise StackError(f"unknown service {service!r}", hint="one of: " + ", ".join(self.services))
        path = self.log_path(service)
        if not path.exists():
            raise StackError(f"no log yet for {service} ({path})", hint="start the stack with `a0ctl up`")
        yield from read_log(path, lines=lines, follow=follow)
