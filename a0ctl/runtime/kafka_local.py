"""Kafka in the local runtime: Apache Kafka's broker, KRaft, one node or (with
``A0_PROFILE=cluster``) three, each a process of its own (``kafka``, ``kafka-2``,
``kafka-3``) acting as broker and controller, with its own ports and data directory.

With SASL (the default), clients authenticate with SCRAM as their own principal and the
StandardAuthorizer enforces topics.yaml's ACLs; ``a0-admin`` (a0ctl's principal, and
the brokers' own between themselves) is the one super user. The controller listener
takes the same principal over PLAIN, as KRaft controllers cannot read SCRAM
credentials before they have the metadata that holds them.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

from a0ctl.errors import StackError
from a0ctl.runtime import artifacts, health
from a0ctl.runtime.postgres import write_owned
from a0ctl.runtime.service import LocalService, corrupt_data_error, dir_is_corrupt, run_checked
from services.common.secrets_env import kafka_password_key, read_generated_secret
from services.common.settings import KAFKA_ADMIN, Settings

# In a node's data dir: formatted with the admin's SCRAM credential.
SASL_MARKER = ".a0-sasl"


def node_name(node_id: int) -> str:
    return "kafka" if node_id == 1 else f"kafka-{node_id}"


def kafka_java(settings: Settings) -> list[str]:
    java = shutil.which("java")
    if not java:
        raise StackError("java not found", service="kafka", hint="install a Java 17+ runtime")
    libs = artifacts.kafka_libs(settings)
    return [
        java,
        # Memory: a small heap that grows only as the broker needs it, collected by the
        # serial collector. A single broker's live set is tens of MiB; G1 with 256 MiB to
        # start and 768 MiB to grow to held 413-445 MiB PSS after 2,000 sessions, its regions
        # all touched, plus its remembered sets and a GC thread per core. On a host this
        # small the serial collector's young pauses are a few milliseconds, and it spends
        # less CPU than G1's concurrent threads and write barriers.
        "-Xms32m",
        f"-Xmx{settings.kafka.heap}",
        "-XX:+UseSerialGC",
        # Heap given back after a collection that leaves it mostly free.
        "-XX:MinHeapFreeRatio=10",
        "-XX:MaxHeapFreeRatio=30",
        # The client compiler only: a broker fresh from `a0ctl up` spent its first minute
        # of load compiling with C2 (8.6 ms of CPU per turn against 6.4 with C1 alone, and a
        # p99 of 3.1 s against 1.4 s at 500 sessions), and once warm it is no faster for it
        # (2.76 against 2.79 ms per turn at saturation): its work is mostly I/O.
        "-XX:TieredStopAtLevel=1",
        # No hsperfdata: its sampler ticks every 50 ms, for tools (jps, jstat) a0 does not
        # use; `a0ctl load` reads the broker through its attach socket, which needs none.
        "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={artifacts.KAFKA_LOG4J}",
        "-cp",
        f"{libs}/*",
    ]


def io_threads() -> int:
    """The request handler threads of the broker and of the controller (each has a pool):
    one per two cores of this host, from 1 up to 8."""
    return max(1, min(8, (os.cpu_count() or 1) // 2))


def listener_lines(settings: Settings, port: int, controller_port: int, admin_password: str) -> list[str]:
    k, host = settings.kafka, settings.stack.host
    if k.security_protocol == "PLAINTEXT":
        return [
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
        ]
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    login = f'username="{KAFKA_ADMIN}" password="{admin_password}"'
    return [
        f"listeners=BROKER://{host}:{port},CONTROLLER://{host}:{controller_port}",
        f"advertised.listeners=BROKER://{host}:{port}",
        "listener.security.protocol.map=BROKER:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        "inter.broker.listener.name=BROKER",
        f"listener.name.broker.sasl.enabled.mechanisms={k.sasl_mechanism}",
        f"sasl.mechanism.inter.broker.protocol={k.sasl_mechanism}",
        f"listener.name.broker.{k.sasl_mechanism.lower()}.sasl.jaas.config={scram} required {login};",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "sasl.mechanism.controller.protocol=PLAIN",
        f'listener.name.controller.plain.sasl.jaas.config={plain} required {login} user_{KAFKA_ADMIN}="{admin_password}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{KAFKA_ADMIN}",
        "allow.everyone.if.no.acl.found=false",
    ]


def admin_password_for(settings: Settings, name: str, data_dir: Path) -> str:
    """The Kafka admin principal's generated password ("" without SASL), refusing data
    formatted without SASL when SASL is on: it has no admin principal."""
    sasl = settings.kafka.security_protocol == "SASL_PLAINTEXT"
    admin_password = read_generated_secret(settings.stack.conf_path, kafka_password_key(KAFKA_ADMIN)) or ""
    if sasl and not admin_password:
        raise StackError(
            "no generated password for Kafka's admin principal", service=name, hint="run `a0ctl up`"
        )
    formatted = (data_dir / "meta.properties").exists()
    if sasl and formatted and not (data_dir / SASL_MARKER).exists():
        raise StackError(
            f"the Kafka data in {data_dir} was made without SASL, so it has no admin principal",
            service=name,
            hint="keep it with A0_KAFKA_SECURITY_PROTOCOL=PLAINTEXT, or start afresh with `a0ctl down --purge` "
            "(deletes the stack's data)",
        )
    return admin_password


def server_properties(
    settings: Settings, node_id: int, port: int, controller_port: int, data_dir: Path, admin_password: str
) -> list[str]:
    """One KRaft node's server.properties lines."""
    nodes = settings.kafka_nodes
    host = settings.stack.host
    voters = ",".join(f"{node}@{host}:{controller}" for node, _, controller in nodes)
    # Internal topics as replicated as the cluster allows; writes need two in sync on three nodes.
    replication = min(3, len(nodes))
    min_isr = 2 if len(nodes) >= 3 else 1
    return [
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters}",
        *listener_lines(settings, port, controller_port, admin_password),
        "controller.listener.names=CONTROLLER",
        f"log.dirs={data_dir}",
        "auto.create.topics.enable=false",
        "num.partitions=1",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replication}",
        "offsets.topic.num.partitions=6",
        f"transaction.state.log.replication.factor={replication}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replication}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        "group.initial.rebalance.delay.ms=0",
        # The active controller appends a no-op record to the metadata log whenever it
        # has written nothing for this long (default 500 ms: a write and its follow-up
        # work twice a second on an idle stack); metadata changes are written at once.
        "metadata.max.idle.interval.ms=5000",
        # Request handler threads, a pool for the broker and one for the controller: each
        # thread wakes about three times a second when idle (0.25 ms of CPU a second), and
        # a request never waits in one (a fetch or an acks=all produce waits in purgatory).
        # The rest of the stack shares the cores, and each request handed between two
        # threads costs a wake-up on each: on two cores, one handler and one network
        # thread took Kafka from 12.2-12.5 to 10.9-11.0 ms of CPU per turn at a trickle
        # (30 sessions, think 5). Kafka's default, 8, from sixteen cores up.
        f"num.io.threads={io_threads()}",
        # Threads that each wake several times a second with nothing to do, sized for
        # brokers with many cores and clients: one group coordinator thread (default 4)
        # serves a0's two consumer groups, one network thread (default 3) its dozen
        # connections, and one the controller's listener (the brokers' heartbeats and,
        # in a cluster, the quorum's fetches).
        "group.coordinator.threads=1",
        "num.network.threads=1",
        "listener.name.controller.num.network.threads=1",
        # The high watermarks are checkpointed (a file written and fsynced) every 5 s by
        # default, whether or not they moved. A leader with no follower recovers its high
        # watermark from its log on restart, and a follower truncates by leader epoch, so
        # an older checkpoint costs nothing after a crash.
        "replica.high.watermark.checkpoint.interval.ms=30000",
        *single_node_lines(len(nodes)),
        # The log cleaner (it compacts __consumer_offsets and __transaction_state) holds
        # its key map in one heap array of this size, allocated at start and touched
        # whole: 128 MiB by default, half the broker's memory. 16 MiB maps some 600,000
        # keys a pass, far more than a0's compacted topics hold; more just takes two passes.
        "log.cleaner.dedupe.buffer.size=16777216",
        "",
    ]


def single_node_lines(node_count: int) -> list[str]:
    """A lone node heartbeats to its own controller: every 2 s by default, a request (and a
    metadata check) for nothing, since if it stopped there is no one left to fence it. In a
    cluster the default stays: a dead broker is fenced, and its partitions move, once its
    session (9 s) lapses. The session grows with it: Kafka wants the heartbeat at most
    half of it."""
    if node_count > 1:
        return []
    return ["broker.heartbeat.interval.ms=5000", "broker.session.timeout.ms=15000"]


def format_storage(settings: Settings, name: str, data_dir: Path, props: Path, admin_password: str) -> None:
    """Format a new node's storage; with SASL, the admin's SCRAM credential is written with
    the cluster's first metadata (the services' own are added by `a0ctl up` once the
    brokers run)."""
    k = settings.kafka
    sasl = k.security_protocol == "SASL_PLAINTEXT"
    data_dir.mkdir(parents=True, exist_ok=True)
    scram = (
        ["--add-scram", f"{k.sasl_mechanism}=[name={KAFKA_ADMIN},password={admin_password}]"] if sasl else []
    )
    run_checked(
        [*kafka_java(settings), "kafka.tools.StorageTool", "format", "--ignore-formatted", "-t", k.cluster_id]
        + ["-c", str(props), *scram],
        name,
        "formatting Kafka storage",
    )
    if sasl:
        (data_dir / SASL_MARKER).write_text("")


def prepare_node(settings: Settings, state: Path, node_id: int, port: int, controller_port: int) -> None:
    name = node_name(node_id)
    data_dir = state / "data" / name
    props = state / "run" / f"{name}-server.properties"
    if dir_is_corrupt(data_dir, "meta.properties"):
        raise corrupt_data_error(name, data_dir, "meta.properties")
    artifacts.ensure_kafka(settings)
    admin_password = admin_password_for(settings, name, data_dir)
    lines = server_properties(settings, node_id, port, controller_port, data_dir, admin_password)
    # Mode 0600: it holds the admin's password.
    write_owned(props, "\n".join(lines), None)
    if not (data_dir / "meta.properties").exists():
        format_storage(settings, name, data_dir, props, admin_password)


def kafka_services(settings: Settings, state: Path) -> list[LocalService]:
    """One service per KRaft node, in node order."""
    nodes = settings.kafka_nodes

    return [
        LocalService(
            name=node_name(node_id),
            port=port,
            extra_ports=(controller_port,),
            probe=health.kafka_probe if len(nodes) == 1 else partial(health.kafka_node_probe, port=port),
            prepare=partial(prepare_node, settings, state, node_id, port, controller_port),
            command=partial(
                lambda name: [
                    *kafka_java(settings),
                    "kafka.Kafka",
                    str(state / "run" / f"{name}-server.properties"),
                ],
                node_name(node_id),
            ),
            # glibc gives each thread that allocates natively its own arena, up to eight
            # per core; the broker's ninety threads held 29 MiB in 17 of them after a
            # load run. Two arenas are enough for what the JVM allocates outside its heap.
            env={"MALLOC_ARENA_MAX": "2"},
            # SIGTERM starts a controlled shutdown: leadership moved, logs flushed and
            # closed cleanly, so the next start needs no log recovery.
            stop_wait_s=60,
            start_s=10,
        )
        for node_id, port, controller_port in nodes
    ]
