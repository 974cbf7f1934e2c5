"""The ``compose`` runtime: ``stack/docker-compose.yaml`` driven through python-on-whales,
for machines with a Docker engine. Same env contract, health checks and topics.yaml."""

from __future__ import annotations

from collections.abc import Iterator

from a0ctl.errors import StackError
from a0ctl.runtime.artifacts import REPO_ROOT
from a0ctl.runtime.base import ProgressFn, ServiceStatus
from services.common.secrets_env import secrets_path
from services.common.settings import Settings

COMPOSE_FILE = REPO_ROOT / "stack" / "docker-compose.yaml"


class ComposeRuntime:
    name = "compose"

    def __init__(self, settings: Settings) -> None:
        from a0ctl.runtime import docker_engine_answers

        if not docker_engine_answers():
            raise StackError(
                "the compose runtime needs a Docker engine, and none answers here "
                "(`docker info` fails: only the client is installed, or the daemon is down)",
                hint="start Docker, or use the local runtime: `a0ctl up --runtime local`",
            )
        from python_on_whales import DockerClient

        self.settings = settings
        # The generated secrets (passwords, tokens, Kafka's SCRAM passwords) fill the compose file's
        # ${A0_...} variables; the file is 0600 and never copied.
        secrets = secrets_path(settings.stack.conf_path)
        self.docker = DockerClient(
            compose_files=[COMPOSE_FILE],
            compose_project_name="a0",
            compose_env_files=[secrets] if secrets.exists() else [],
        )

    def up(
        self, progress: ProgressFn | None = None, *, services: tuple[str, ...] | None = None
    ) -> list[ServiceStatus]:
        self.docker.compose.up(services=list(services) if services else None, detach=True, wait=True)
        return self.status()

    def down(self, *, purge: bool = False) -> list[str]:
        running = [c.name for c in self.docker.compose.ps()]
        self.docker.compose.down(volumes=purge)
        return running

    def restart(self, service: str, progress: ProgressFn | None = None) -> list[ServiceStatus]:
        self.docker.compose.restart(services=[service])
        return [s for s in self.status() if s.name == service]

    def scale(self, service: str, replicas: int, progress: ProgressFn | None = None) -> list[ServiceStatus]:
        self.docker.compose.up(services=[service], scales={service: replicas}, detach=True, wait=True)
        return [s for s in self.status() if s.name == service]

    def status(self) -> list[ServiceStatus]:
        statuses = []
        for container in self.docker.compose.ps():
            state = container.state
            health = state.health.status if state.health else None
            ports = container.network_settings.ports or {}
            endpoint = next(
                (
                    f"{b['HostIp']}:{b['HostPort']}"
                    for bindings in ports.values()
                    if bindings
                    for b in bindings
                ),
                "",
            )
            statuses.append(
                ServiceStatus(
                    name=(container.config.labels or {}).get("com.docker.compose.service", container.name),
                    runtime=self.name,
                    state="running" if state.running else "stopped",
                    healthy=health == "healthy",
                    endpoint=endpoint,
                    pid=state.pid or None,
                    detail=health or state.status or "",
                    restarts=container.restart_count or 0,
                    since=state.started_at if state.running else state.finished_at,
                )
            )
        return statuses

    def logs(self, service: str, *, lines: int = 50, follow: bool = False) -> Iterator[str]:
        output = self.docker.compose.logs(services=[service], tail=str(lines), follow=follow, stream=True)
        for _source, chunk in output:
            yield chunk.decode(errors="replace")
