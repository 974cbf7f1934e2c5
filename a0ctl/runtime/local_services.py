"""The services of the local runtime: how each is prepared, started and probed.

Each :class:`LocalService` is a real server process: Apache Kafka (KRaft), redis-server,
PostgreSQL, OPA, and a0's own services. Nothing here is a stand-in.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from a0ctl.runtime import artifacts, health
from a0ctl.runtime.opa_data import write_egress_data
from a0ctl.runtime.postgres import HBA, UPGRADE_HBA, hba_trusts, initdb_argv, pg_bin, provision, write_owned
from a0ctl.runtime.service import (
    LocalService,
    StackDirs,
    allow_traversal,
    chown,
    chown_tree,
    corrupt_data_error,
    dir_is_corrupt,
    run_checked,
    service_user,
    tools_metrics_port,
    worker_metrics_port,
)
from a0ctl.runtime.telemetry_services import jaeger_service, prometheus_service
from services.common.settings import Settings

START_ORDER = (
    "kafka",
    "redis",
    "postgres",
    "opa",
    "jaeger",
    "llm-sim",
    "tool-executor",
    "conversation-worker",
    "gateway",
    "prometheus",
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
    # a0's services export their spans to the local Jaeger when it runs.
    endpoint = settings.telemetry.endpoint(settings.stack.host)
    traced = {"A0_OTEL_EXPORTER_OTLP_ENDPOINT": endpoint} if endpoint else {}
    from a0ctl.runtime.kafka_local import kafka_services

    services = [
        *kafka_services(settings, state),
        redis_service(settings, dirs),
        postgres_service(settings, dirs),
        opa_service(settings, dirs),
        *([jaeger_service(settings, dirs)] if settings.telemetry.jaeger else []),
        app_service("llm-sim", settings.llm_sim.port, health.llm_sim_probe),
        *consumer_replicas(settings, "tool-executor", scaled["tool-executor"], traced),
        *consumer_replicas(settings, "conversation-worker", scaled["conversation-worker"], traced),
        app_service(
            "gateway",
            settings.gateway.port,
            health.gateway_probe,
            env={**traced, **kafka_principal("gateway")},
        ),
        *([prometheus_service(settings, dirs, scaled)] if settings.prometheus.enabled else []),
    ]
    for service in services:
        base = next((b for b in START_ORDER if service.name == b or service.name.startswith(f"{b}-")), "")
        service.priority = 100 + 10 * START_ORDER.index(base) if base else 500
    return {service.name: service for service in services}


# --- Redis ---------------------------------------------------------------------------


def redis_service(settings: Settings, dirs: StackDirs) -> LocalService:
    """redis-server with a password (from a 0600 config file, never its command line) and,
    when a0ctl is root, as Debian's unprivileged 'redis' user."""
    redis_dir = dirs.data / "redis"
    conf = dirs.run / "redis" / "redis.conf"
    user = service_user("redis")

    def prepare() -> None:
        for path in (redis_dir, conf.parent):
            path.mkdir(parents=True, exist_ok=True)
            allow_traversal(path, user, "redis")
            chown_tree(path, user)
            os.chmod(path, 0o700)
        password = settings.redis.password.get_secret_value()
        write_owned(conf, f"requirepass {password}\n" if password else "", user)

    return LocalService(
        name="redis",
        port=settings.redis.port,
        probe=health.redis_probe,
        prepare=prepare,
        user=user,
        reaches=(redis_dir, conf.parent),
        command=lambda: [
            artifacts.require_binary("redis-server", "redis", "apt-get install redis-server"),
            str(conf),
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
            # Its background cron (expiring keys, closing idle clients, resizing tables) once
            # a second rather than ten times: an idle stack's Redis sleeps. a0 uses no
            # blocking command, whose timeouts the cron also checks, and a key past its
            # TTL is never read back (one read expires it at once).
            "--hz",
            "1",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
    )


# --- PostgreSQL ----------------------------------------------------------------------


# glibc moves its threshold for giving memory back up to the largest block freed so far:
# once a backend has freed an 8 MiB block, it keeps up to 16 MiB of free heap for good.
# Set, the thresholds stay put: a block of 128 KiB or more is mapped and unmapped on its
# own, and a free top of the heap past 128 KiB goes back at once.
POSTGRES_MALLOC_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072"
}


def postgres_service(settings: Settings, dirs: StackDirs) -> LocalService:
    """PostgreSQL in a private data directory (initdb on first start) and socket dir; run
    as 'postgres' when a0ctl is root, and provisioned once it accepts connections."""
    pg_dir = dirs.data / "postgres"
    pg_sock = dirs.run / "postgres"
    pg_user = service_user("postgres")

    def prepare() -> None:
        if dir_is_corrupt(pg_dir, "PG_VERSION"):
            raise corrupt_data_error("postgres", pg_dir, "PG_VERSION")
        for path in (pg_sock, pg_dir):
            path.mkdir(parents=True, exist_ok=True)
            allow_traversal(path, pg_user, "postgres")
            chown(path, pg_user)
        os.chmod(pg_dir, 0o700)
        os.chmod(pg_sock, 0o700)  # the socket is for a0ctl (root or the owner) and PostgreSQL
        if not (pg_dir / "PG_VERSION").exists():
            pwfile = pg_sock / "initdb-password"
            write_owned(pwfile, settings.postgres.admin_password.get_secret_value(), pg_user)
            try:
                argv = initdb_argv(pg_bin("initdb"), pg_dir, settings, pwfile)
                run_checked(argv, "postgres", "initdb", user=pg_user)
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
        reaches=(pg_sock, pg_dir),
        own_pidfile=pg_dir / "postmaster.pid",
        stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, exit cleanly
        stop_wait_s=30,
        env=POSTGRES_MALLOC_ENV,
        command=lambda: [
            pg_bin("postgres"),
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
            # The buffer cache: the pages a turn touches (the tails of the event and turn
            # tables, their indexes, the conversations being answered) fit many times over;
            # the rest is read through the kernel's page cache. The default 128 MB filled up
            # across load runs and counted in every backend's memory.
            "-c",
            "shared_buffers=32MB",
        ],
    )


# --- OPA -----------------------------------------------------------------------------


def opa_service(settings: Settings, dirs: StackDirs) -> LocalService:
    """The OPA server with a0's policies (stack/opa) and this stack's own policy data."""

    def local_data() -> Path:
        """The loopback and private base URLs a credential may use: this stack's simulator
        and the operator's A0_EGRESS_ALLOW (data.a0_local.egress_allowed)."""
        port = settings.llm_sim.port
        simulator = [f"{name}:{port}" for name in (settings.stack.host, "127.0.0.1", "localhost")]
        return write_egress_data(settings, dirs.run / "opa-local.json", simulator)

    return LocalService(
        name="opa",
        port=settings.opa.port,
        probe=health.opa_probe,
        # Its API answers only bearer tokens that stack/opa/system/authz.rego knows: a0's
        # services decide, a0ctl administers, nobody else reaches policy or data.
        env=opa_token_env(settings),
        command=lambda: [
            str(artifacts.ensure_opa(settings)),
            "run",
            "--server",
            "--addr",
            f"{settings.stack.host}:{settings.opa.port}",
            "--authentication=token",
            "--authorization=basic",
            "--disable-telemetry",
            "--log-level",
            "error",
            "--ignore",
            "*_test.rego",
            str(artifacts.OPA_POLICY_DIR),
            str(local_data()),
        ],
    )


def opa_token_env(settings: Settings) -> dict[str, str]:
    """The tokens OPA's system.authz policy reads from its environment."""
    return {
        "A0_OPA_TOKEN": settings.opa.token.get_secret_value(),
        "A0_OPA_ADMIN_TOKEN": settings.opa.admin_token.get_secret_value(),
    }


# --- a0's own services ---------------------------------------------------------------

APP_STOP_WAIT_S = 10  # a0's services stop within seconds


# jemalloc's options for a0's services (stack/Dockerfile sets the same): freed pages go
# back to the system a second after they are freed, by a thread of its own even while
# the process sleeps; two arenas, as a service allocates on one thread almost only.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2"


def allocator_env() -> dict[str, str]:
    """a0's Python services allocate through jemalloc (Debian's libjemalloc2, which Redis
    needs too) rather than Python's own arenas, when it is installed.

    Python keeps memory in 1 MiB arenas and gives one back only once nothing at all is
    left in it: after 2,000 sessions left, a gateway freed 425,000 objects and held just
    as much. Through jemalloc, what is freed goes back to the system page by page; the
    CPU a turn costs did not change (figures: docs/messaging.md)."""
    library = next(iter(sorted(Path("/usr/lib").glob("*/libjemalloc.so.2"))), None)
    if library is None:
        return {}
    return {"LD_PRELOAD": str(library), "PYTHONMALLOC": "malloc", "MALLOC_CONF": JEMALLOC_CONF}


def app_service(name: str, port: int, probe: health.Probe, env: dict[str, str] | None = None) -> LocalService:
    """One of a0's own services, run as ``a0ctl run <name>``, on jemalloc (:func:`allocator_env`)."""
    return LocalService(
        name=name,
        port=port,
        probe=probe,
        command=lambda: [python(), "-m", "a0ctl", "run", name],
        env={**allocator_env(), **(env or {})},
        app=True,
        stop_wait_s=APP_STOP_WAIT_S,
    )


def kafka_principal(service: str) -> dict[str, str]:
    """With SASL, a service that talks to Kafka connects as the principal of its own name
    (topics.yaml's principals)."""
    return {"A0_KAFKA_SASL_USERNAME": service}


# The metrics port of each replica, and the variable that tells the replica.
_METRICS_PORTS: dict[str, tuple[Callable[..., int], str]] = {
    "conversation-worker": (worker_metrics_port, "A0_WORKER_METRICS_PORT"),
    "tool-executor": (tools_metrics_port, "A0_TOOLS_METRICS_PORT"),
}


def consumer_replicas(
    settings: Settings, service: str, count: int, env: dict[str, str] | None = None
) -> list[LocalService]:
    """The replicas of a consumer service: one group, each on its own metrics port."""
    metrics_port, port_variable = _METRICS_PORTS[service]
    replicas = []
    for replica in range(count):
        port = metrics_port(settings, replica)
        app = app_service(
            service,
            port,
            health.metrics_probe(partial(metrics_port, replica=replica)),
            env={**(env or {}), port_variable: str(port), **kafka_principal(service)},
        )
        app.name = replica_name(service, replica)
        replicas.append(app)
    return replicas
