"""The services of the local runtime: how each is prepared, started and probed.

Each :class:`LocalService` is a real server process: Apache Kafka (KRaft), redis-server,
PostgreSQL, OPA, and a0's own services. Nothing here is a stand-in.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from a0ctl.runtime import artifacts, health
from a0ctl.runtime.postgres import HBA, UPGRADE_HBA, hba_trusts, initdb_argv, provision, write_owned
from services.common.errors import StackError
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


def _run_checked(argv: list[str], service: str, what: str, user: str | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, **run_as(user))
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
        raise StackError(f"{what} failed:\n{tail}", service=service)


def run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop to ``user`` entirely: its uid, its group, and none of
    root's groups — with root's group kept, a 0750 root directory would still be closed."""
    if not user:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def _non_root_user() -> str | None:
    """PostgreSQL refuses to run as root; when we are root, run it as 'postgres'."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackError(
            "running as root but there is no 'postgres' user to run PostgreSQL as",
            service="postgres",
            hint="install Debian's postgresql package (scripts/bootstrap.sh does)",
        ) from exc
    return "postgres"


def _chown(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _allow_traversal(path: Path, user: str | None) -> None:
    """Let ``user`` reach ``path``: PostgreSQL runs as its own user, and a checkout under a
    private directory (``mktemp -d`` is 0700) would hide its data directory from it. Adds
    only search permission (o+x, no listing) to the ancestors that lack it."""
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
                    f"PostgreSQL runs as {user!r}, which cannot reach {path}: {ancestor} is private",
                    service="postgres",
                    hint=f"allow others to traverse {ancestor} (chmod o+x) or set A0_STATE_DIR elsewhere",
                ) from exc


def _dir_is_corrupt(path: Path, marker: str) -> bool:
    return path.exists() and any(path.iterdir()) and not (path / marker).exists()


def _corrupt(service: str, path: Path, marker: str) -> StackError:
    return StackError(
        f"the {service} data directory {path} is corrupt (no {marker})",
        service=service,
        hint="remove it with `a0ctl down --purge` (this deletes the stack's data) and run `a0ctl up` again",
    )


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise StackError(
        f"{name} not found", service="postgres", hint="apt-get install postgresql (scripts/bootstrap.sh does)"
    )


START_ORDER = (
    "kafka",
    "redis",
    "postgres",
    "opa",
    "llm-sim",
    "tool-executor",
    "conversation-worker",
    "gateway",
)
# Services that run as several replicas in one consumer group (`a0ctl scale`).
SCALABLE = ("conversation-worker", "tool-executor")


def replica_name(service: str, replica: int) -> str:
    """Replicas share one consumer group; the first keeps the plain name."""
    return service if replica == 0 else f"{service}-{replica + 1}"


def python() -> str:
    """This interpreter under one name, whichever started a0ctl (``python`` or
    ``python3``), so that the generated supervisord config does not change with it."""
    plain = Path(sys.executable).with_name("python")
    try:
        return str(plain) if plain.samefile(sys.executable) else sys.executable
    except OSError:
        return sys.executable


def worker_metrics_port(settings: Settings, replica: int) -> int:
    return settings.worker.metrics_port + 10 * replica


def tools_metrics_port(settings: Settings, replica: int) -> int:
    return settings.tools.metrics_port + 10 * replica


def build_services(
    settings: Settings, state: Path, replicas: dict[str, int] | None = None
) -> dict[str, LocalService]:
    """Every service of the local runtime, in start order. ``replicas`` (from `a0ctl
    scale`) overrides the settings' replica counts."""
    scaled = {
        "conversation-worker": settings.worker.replicas,
        "tool-executor": settings.tools.replicas,
        **(replicas or {}),
    }
    host = settings.stack.host
    data = state / "data"
    run = state / "run"

    from a0ctl.runtime.kafka_local import kafka_services

    # --- PostgreSQL ----------------------------------------------------------
    pg_dir = data / "postgres"
    pg_sock = run / "postgres"
    pg_user = _non_root_user()

    def pg_prepare() -> None:
        if _dir_is_corrupt(pg_dir, "PG_VERSION"):
            raise _corrupt("postgres", pg_dir, "PG_VERSION")
        for path in (pg_sock, pg_dir):
            path.mkdir(parents=True, exist_ok=True)
            _allow_traversal(path, pg_user)
            _chown(path, pg_user)
        os.chmod(pg_dir, 0o700)
        os.chmod(pg_sock, 0o700)  # the socket is for a0ctl (root or the owner) and PostgreSQL
        if not (pg_dir / "PG_VERSION").exists():
            pwfile = pg_sock / "initdb-password"
            write_owned(pwfile, settings.postgres.admin_password.get_secret_value(), pg_user)
            try:
                argv = initdb_argv(_pg_bin("initdb"), pg_dir, settings, pwfile)
                _run_checked(argv, "postgres", "initdb", user=pg_user)
            finally:
                pwfile.unlink(missing_ok=True)
        if hba_trusts(pg_dir):
            # Made with trust by an older a0ctl: provision() upgrades it once it runs.
            write_owned(pg_dir / "pg_hba.conf", UPGRADE_HBA, pg_user)
        else:
            write_owned(pg_dir / "pg_hba.conf", HBA, pg_user)

    # --- OPA ---------------------------------------------------------------------
    def opa_local_data() -> Path:
        """This stack's own policy data: its simulator is the one loopback base URL a
        credential may use (data.a0_local.egress_allowed in stack/opa/authz.rego)."""
        port = settings.llm_sim.port
        names = [f"{name}:{port}" for name in (host, "127.0.0.1", "localhost")]
        path = run / "opa-local.json"
        path.write_text(json.dumps({"a0_local": {"egress_allowed": sorted(set(names))}}))
        return path

    # --- the services ----------------------------------------------------------
    def app_command(name: str) -> Callable[[], list[str]]:
        return lambda: [python(), "-m", "a0ctl", "run", name]

    def consumer_replicas(
        service: str, metrics_port: Callable[..., int], port_variable: str
    ) -> list[LocalService]:
        """The replicas of a consumer service: one group, each on its own metrics port."""
        return [
            LocalService(
                name=replica_name(service, replica),
                port=metrics_port(settings, replica),
                probe=health.metrics_probe(partial(metrics_port, replica=replica)),
                command=app_command(service),
                env={port_variable: str(metrics_port(settings, replica)), "A0_KAFKA_SASL_USERNAME": service},
                app=True,
            )
            for replica in range(scaled[service])
        ]

    services = [
        *kafka_services(settings, state),
        LocalService(
            name="redis",
            port=settings.redis.port,
            probe=health.redis_probe,
            prepare=lambda: (data / "redis").mkdir(parents=True, exist_ok=True),
            command=lambda: [
                artifacts.require_binary("redis-server", "redis", "apt-get install redis-server"),
                "--port",
                str(settings.redis.port),
                "--bind",
                host,
                "--dir",
                str(data / "redis"),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ],
        ),
        LocalService(
            name="postgres",
            port=settings.postgres.port,
            probe=health.postgres_probe,
            prepare=pg_prepare,
            after_start=lambda: provision(settings, pg_sock, pg_dir, pg_user),
            user=pg_user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, exit cleanly
            stop_wait_s=30,
            command=lambda: [
                _pg_bin("postgres"),
                "-D",
                str(pg_dir),
                "-p",
                str(settings.postgres.port),
                "-k",
                str(pg_sock),
                "-c",
                f"listen_addresses={host}",
                "-c",
                "max_connections=300",
            ],
        ),
        LocalService(
            name="opa",
            port=settings.opa.port,
            probe=health.opa_probe,
            command=lambda: [
                str(artifacts.ensure_opa(settings)),
                "run",
                "--server",
                "--addr",
                f"{host}:{settings.opa.port}",
                "--disable-telemetry",
                "--log-level",
                "error",
                "--ignore",
                "*_test.rego",
                str(artifacts.OPA_POLICY_DIR),
                str(opa_local_data()),
            ],
        ),
        LocalService(
            name="llm-sim",
            port=settings.llm_sim.port,
            probe=health.llm_sim_probe,
            command=app_command("llm-sim"),
            app=True,
        ),
        *consumer_replicas("tool-executor", tools_metrics_port, "A0_TOOLS_METRICS_PORT"),
        *consumer_replicas("conversation-worker", worker_metrics_port, "A0_WORKER_METRICS_PORT"),
        LocalService(
            name="gateway",
            port=settings.gateway.port,
            probe=health.gateway_probe,
            command=app_command("gateway"),
            env={"A0_KAFKA_SASL_USERNAME": "gateway"},
            app=True,
        ),
    ]
    for service in services:
        if service.app:
            service.stop_wait_s = 10
        base = next((b for b in START_ORDER if service.name == b or service.name.startswith(f"{b}-")), "")
        service.priority = 100 + 10 * START_ORDER.index(base) if base else 500
    return {service.name: service for service in services}
