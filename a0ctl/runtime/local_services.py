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

from a0ctl.errors import StackError
from a0ctl.runtime import artifacts, health
from a0ctl.runtime.postgres import HBA, UPGRADE_HBA, hba_trusts, initdb_argv, provision, write_owned
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


@dataclass(frozen=True)
class StackDirs:
    """Where a local stack keeps its data and its run files (generated configs, sockets)."""

    data: Path
    run: Path

    @classmethod
    def under(cls, state: Path) -> StackDirs:
        return cls(data=state / "data", run=state / "run")


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
    dirs = StackDirs.under(state)
    services = [
        kafka_service(settings, dirs),
        redis_service(settings, dirs),
        postgres_service(settings, dirs),
        opa_service(settings, dirs),
        app_service("llm-sim", settings.llm_sim.port, health.llm_sim_probe),
        *consumer_replicas(settings, "tool-executor", scaled["tool-executor"]),
        *consumer_replicas(settings, "conversation-worker", scaled["conversation-worker"]),
        app_service("gateway", settings.gateway.port, health.gateway_probe),
    ]
    for service in services:
        base = next((b for b in START_ORDER if service.name == b or service.name.startswith(f"{b}-")), "")
        service.priority = 100 + 10 * START_ORDER.index(base) if base else 500
    return {service.name: service for service in services}


# --- Kafka ---------------------------------------------------------------------------


def kafka_service(settings: Settings, dirs: StackDirs) -> LocalService:
    """Apache Kafka, one broker and controller (KRaft); storage formatted on first start."""
    kafka_dir = dirs.data / "kafka"
    kafka_props = dirs.run / "kafka-server.properties"

    def prepare() -> None:
        if _dir_is_corrupt(kafka_dir, "meta.properties"):
            raise _corrupt("kafka", kafka_dir, "meta.properties")
        artifacts.ensure_kafka(settings)
        kafka_props.write_text(kafka_properties(settings, kafka_dir))
        if not (kafka_dir / "meta.properties").exists():
            kafka_dir.mkdir(parents=True, exist_ok=True)
            _run_checked(
                [
                    *kafka_java(settings),
                    "kafka.tools.StorageTool",
                    "format",
                    "--ignore-formatted",
                    "-t",
                    settings.kafka.cluster_id,
                    "-c",
                    str(kafka_props),
                ],
                "kafka",
                "formatting Kafka storage",
            )

    return LocalService(
        name="kafka",
        port=settings.kafka.port,
        extra_ports=(settings.kafka.controller_port,),
        probe=health.kafka_probe,
        prepare=prepare,
        command=lambda: [*kafka_java(settings), "kafka.Kafka", str(kafka_props)],
        # SIGTERM starts a controlled shutdown: leadership moved, logs flushed and
        # closed cleanly, so the next start needs no log recovery.
        stop_wait_s=60,
        start_s=10,
    )


def kafka_properties(settings: Settings, kafka_dir: Path) -> str:
    host, k = settings.stack.host, settings.kafka
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{k.controller_port}",
            f"listeners=PLAINTEXT://{host}:{k.port},CONTROLLER://{host}:{k.controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{k.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={kafka_dir}",
            "auto.create.topics.enable=false",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=6",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "",
        ]
    )


def kafka_java(settings: Settings) -> list[str]:
    java = shutil.which("java")
    if not java:
        raise StackError("java not found", service="kafka", hint="install a Java 17+ runtime")
    libs = artifacts.kafka_libs(settings)
    return [
        java,
        "-Xms256m",
        f"-Xmx{settings.kafka.heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={artifacts.KAFKA_LOG4J}",
        "-cp",
        f"{libs}/*",
    ]


# --- Redis ---------------------------------------------------------------------------


def redis_service(settings: Settings, dirs: StackDirs) -> LocalService:
    redis_dir = dirs.data / "redis"
    return LocalService(
        name="redis",
        port=settings.redis.port,
        probe=health.redis_probe,
        prepare=lambda: redis_dir.mkdir(parents=True, exist_ok=True),
        command=lambda: [
            artifacts.require_binary("redis-server", "redis", "apt-get install redis-server"),
            "--port",
            str(settings.redis.port),
            "--bind",
            settings.stack.host,
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
    )


# --- PostgreSQL ----------------------------------------------------------------------


def postgres_service(settings: Settings, dirs: StackDirs) -> LocalService:
    """PostgreSQL in a private data directory (initdb on first start) and socket dir; run
    as 'postgres' when a0ctl is root, and provisioned once it accepts connections."""
    pg_dir = dirs.data / "postgres"
    pg_sock = dirs.run / "postgres"
    pg_user = _non_root_user()

    def prepare() -> None:
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

    return LocalService(
        name="postgres",
        port=settings.postgres.port,
        probe=health.postgres_probe,
        prepare=prepare,
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
            f"listen_addresses={settings.stack.host}",
            "-c",
            "max_connections=300",
        ],
    )


# --- OPA -----------------------------------------------------------------------------


def opa_service(settings: Settings, dirs: StackDirs) -> LocalService:
    """The OPA server with a0's policies (stack/opa) and this stack's own policy data."""

    def local_data() -> Path:
        """This stack's simulator is the one loopback base URL a credential may use
        (data.a0_local.egress_allowed in stack/opa/authz.rego)."""
        port = settings.llm_sim.port
        names = [f"{name}:{port}" for name in (settings.stack.host, "127.0.0.1", "localhost")]
        path = dirs.run / "opa-local.json"
        path.write_text(json.dumps({"a0_local": {"egress_allowed": sorted(set(names))}}))
        return path

    return LocalService(
        name="opa",
        port=settings.opa.port,
        probe=health.opa_probe,
        command=lambda: [
            str(artifacts.ensure_opa(settings)),
            "run",
            "--server",
            "--addr",
            f"{settings.stack.host}:{settings.opa.port}",
            "--disable-telemetry",
            "--log-level",
            "error",
            "--ignore",
            "*_test.rego",
            str(artifacts.OPA_POLICY_DIR),
            str(local_data()),
        ],
    )


# --- a0's own services ---------------------------------------------------------------

APP_STOP_WAIT_S = 10  # a0's services stop within seconds


def app_service(name: str, port: int, probe: health.Probe, env: dict[str, str] | None = None) -> LocalService:
    """One of a0's own services, run as ``a0ctl run <name>``."""
    return LocalService(
        name=name,
        port=port,
        probe=probe,
        command=lambda: [python(), "-m", "a0ctl", "run", name],
        env=env or {},
        app=True,
        stop_wait_s=APP_STOP_WAIT_S,
    )


# The metrics port of each replica, and the variable that tells the replica.
_METRICS_PORTS: dict[str, tuple[Callable[..., int], str]] = {
    "conversation-worker": (worker_metrics_port, "A0_WORKER_METRICS_PORT"),
    "tool-executor": (tools_metrics_port, "A0_TOOLS_METRICS_PORT"),
}


def consumer_replicas(settings: Settings, service: str, count: int) -> list[LocalService]:
    """The replicas of a consumer service: one group, each on its own metrics port."""
    metrics_port, port_variable = _METRICS_PORTS[service]
    replicas = []
    for replica in range(count):
        port = metrics_port(settings, replica)
        app = app_service(
            service,
            port,
            health.metrics_probe(partial(metrics_port, replica=replica)),
            env={port_variable: str(port)},
        )
        app.name = replica_name(service, replica)
        replicas.append(app)
    return replicas
