"""The stack runtime on real services: what `a0ctl up/status/down` promise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid

import psycopg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from a0ctl.runtime.base import INFRA
from a0ctl.runtime.local import LocalRuntime
from a0ctl.runtime.processes import port_in_use, process_alive, process_start_time
from a0ctl.runtime.stack import bring_up
from services.common import metrics
from services.common.bootstrap import ServiceStack
from services.common.kafka import client_options
from services.common.policy import PolicyClient
from services.common.settings import Settings, load_settings
from tests.support.cli import a0ctl, a0ctl_json

pytestmark = pytest.mark.integration


def test_status_json_shows_infrastructure_healthy_with_endpoints(stack: LocalRuntime) -> None:
    services = {s["name"]: s for s in a0ctl_json("status")["services"]}
    for name in INFRA:
        assert services[name]["healthy"] is True, services[name]
        assert services[name]["state"] == "running"
        assert services[name]["endpoint"].startswith("127.0.0.1:")
        assert isinstance(services[name]["pid"], int)
        assert services[name]["runtime"] == "local"
        assert services[name]["restarts"] >= 0 and services[name]["since"].startswith("20")


def test_tables_printed_into_a_pipe_keep_every_value_whole(stack: LocalRuntime, settings: Settings) -> None:
    # As in a CI log: stdout is a pipe and no COLUMNS is set.
    status = a0ctl("status", env={"COLUMNS": ""})
    assert status.returncode == 0, status.stderr
    assert "…" not in status.stdout
    for port in (settings.kafka.port, settings.redis.port, settings.postgres.port, settings.opa.port):
        assert f"{settings.stack.host}:{port}" in status.stdout
    lag = a0ctl("topics", "lag", env={"COLUMNS": ""})
    assert lag.returncode == 0, lag.stderr
    assert "…" not in lag.stdout
    described = a0ctl("topics", "describe", "conversation.outbound", env={"COLUMNS": ""})
    assert described.returncode == 0, described.stderr
    assert "conversation.outbound" in described.stdout and "…" not in described.stdout


async def test_kafka_produces_and_consumes_a_record(settings: Settings) -> None:
    topic = "tool.requests"
    key = f"probe-{uuid.uuid4()}".encode()
    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"hello", key=key)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
        record = batch[tp][0]
        assert (record.key, record.value) == (key, b"hello")
    finally:
        await consumer.stop()


async def test_redis_set_get(settings: Settings) -> None:
    client = aioredis.from_url(settings.redis_url)
    try:
        await client.set("a0:test", "value", ex=60)
        assert await client.get("a0:test") == b"value"
    finally:
        await client.aclose()


async def test_postgres_answers_a_query(settings: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        row = await (await conn.execute("SELECT current_database(), 6 * 7")).fetchone()
    assert row == (settings.postgres.database, 42)


async def test_opa_decides_from_the_real_policy(settings: Settings) -> None:
    async with PolicyClient(settings) as policy:
        owner = await policy.decide("conversation.read", "alice", owner_id="alice", conversation_id="c1")
        other = await policy.decide("conversation.read", "bob", owner_id="alice", conversation_id="c1")
        tool = await policy.decide("tool.call", "alice", tool="shell")
    assert owner.allow and not other.allow and not tool.allow
    assert "bob" in other.reason and "shell" in tool.reason


async def test_the_decision_cache_drops_expired_decisions_instead_of_growing(settings: Settings) -> None:
    short = settings.model_copy(update={"opa": settings.opa.model_copy(update={"decision_cache_s": 0.5})})
    async with PolicyClient(short) as policy:
        for index in range(20):
            await policy.decide("conversation.read", "alice", owner_id="alice", conversation_id=f"c{index}")
        assert policy.cached == 20
        await asyncio.sleep(0.6)
        await policy.decide("conversation.read", "alice", owner_id="alice", conversation_id="c-last")
        assert policy.cached == 1  # the 20 expired ones swept out, not kept until the cache is full


async def test_a_services_cached_decisions_go_when_it_goes_quiet(settings: Settings) -> None:
    # Decisions cached during a busy spell would otherwise stay until they expire and a
    # later request sweeps them, holding the heap they were made in.
    async with ServiceStack(settings) as stack:
        policy = stack.policy()
        for index in range(20):
            await policy.decide("conversation.read", "alice", owner_id="alice", conversation_id=f"q{index}")
        assert policy.cached == 20
        await metrics.let_go(stack.release_when_quiet)  # what collect_when_quiet calls
        assert policy.cached == 0
        again = await policy.decide("conversation.read", "bob", owner_id="alice", conversation_id="q1")
        assert not again.allow and policy.cached == 1  # asked OPA again


async def _backends(pool: AsyncConnectionPool, count: int) -> set[int]:
    """The backend pids behind ``count`` of ``pool``'s connections, taken at once."""
    async with contextlib.AsyncExitStack() as held:
        conns = [await held.enter_async_context(pool.connection(timeout=10)) for _ in range(count)]
        return {conn.info.backend_pid for conn in conns}


async def test_a_services_postgres_backends_are_renewed_when_it_goes_quiet(settings: Settings) -> None:
    # A backend keeps the caches and heap a busy spell grew in it for as long as its
    # connection lives; a quiet service trades each for a new one, and its pool stays full.
    async with ServiceStack(settings) as stack:
        pool = await stack.pool("renew-test", min_size=3, max_size=3)
        before = await _backends(pool, 3)
        async with pool.connection():  # one lent out: the pool is left as it is
            await metrics.let_go(stack.release_when_quiet)  # what collect_when_quiet calls
        assert await _backends(pool, 3) == before
        await metrics.let_go(stack.release_when_quiet)
        after = await _backends(pool, 3)
        assert len(after) == 3 and not after & before, (before, after)
        assert pool.get_stats()["pool_size"] == 3
        async with pool.connection() as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


async def test_a_pool_lends_the_connection_returned_last_so_a_trickle_keeps_to_one_backend(
    settings: Settings,
) -> None:
    # psycopg_pool's own order is a round robin: eight requests one after another would
    # each wake another of the four backends.
    async with ServiceStack(settings) as stack:
        pool = await stack.pool("lifo-test", min_size=4, max_size=4)
        one_at_a_time = set()
        for _ in range(8):
            async with pool.connection() as conn:
                one_at_a_time.add(conn.info.backend_pid)
        assert len(one_at_a_time) == 1, one_at_a_time
        assert len(await _backends(pool, 4)) == 4  # all four still lent when all are asked for


async def test_a_cached_decision_holds_under_a_kibibyte(settings: Settings) -> None:
    # Every request a gateway authorizes leaves a decision in the cache for its TTL: with
    # thousands of sessions, what each one holds is what the cache weighs.
    async with PolicyClient(settings) as policy:
        await policy.decide("conversation.read", "alice", owner_id="alice", conversation_id="warm-up")
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for index in range(300):
                await policy.decide(
                    "conversation.read", "alice", owner_id="alice", conversation_id=f"m{index}"
                )
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert policy.cached == 301
    assert held / 300 < 1024, f"{held / 300:.0f} bytes per cached decision"


def _environ(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as environ:
        return environ.read().split(b"\0")


def _anonymous_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no Anonymous line for {pid}")


async def test_a_postgres_backend_gives_back_what_a_large_query_used(settings: Settings) -> None:
    """A sort of some 20 MiB, three times on one connection: glibc's moving thresholds
    would keep that memory in the backend for good (23 MiB held after the second, measured
    without the stack's malloc settings); with them each backend is back where it started."""
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None
        before = _anonymous_mib(row[0])
        await conn.execute("SET work_mem = '64MB'")
        held = []
        for _ in range(3):
            await conn.execute(
                "SELECT count(*) FROM (SELECT md5(g::text) FROM generate_series(1, 300000) g ORDER BY 1) s"
            )
            held.append(_anonymous_mib(row[0]))
    assert max(held) < before + 6, f"the backend held {held} MiB after each sort, from {before:.1f}"


def test_a0s_services_allocate_through_jemalloc_and_their_tools_do_not(stack: LocalRuntime) -> None:
    """a0's Python services run on jemalloc (freed memory goes back to the system); the
    processes the tool executor starts get none of it in their environment."""
    for name in ("gateway", "conversation-worker", "tool-executor", "llm-sim"):
        pid = stack.pid(name)
        assert pid is not None, name
        with open(f"/proc/{pid}/maps") as maps:
            assert "/libjemalloc.so.2" in maps.read(), f"{name} is not on jemalloc"
        assert b"PYTHONMALLOC=malloc" in _environ(pid), name
    executor = stack.pid("tool-executor")
    children = subprocess.run(["pgrep", "-P", str(executor)], capture_output=True, text=True).stdout.split()
    assert children, "the tool executor runs its MCP servers"
    for child in children:
        assert not any(line.startswith(b"LD_PRELOAD=") for line in _environ(int(child))), child


def test_second_up_is_a_no_op(stack: LocalRuntime) -> None:
    before = {s.name: s.pid for s in stack.status()}
    started = time.monotonic()
    result = a0ctl("up")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    after = {s.name: s.pid for s in stack.status()}
    assert before == after
    assert "kafka" in result.stdout and "healthy" in result.stdout
    assert elapsed < 30


def test_down_stops_every_process_and_frees_ports_then_up_restores(stack: LocalRuntime) -> None:
    settings = load_settings()
    pids = {s.name: s.pid for s in stack.status() if s.pid}
    ports = [
        settings.kafka.port,
        settings.kafka.controller_port,
        settings.redis.port,
        settings.postgres.port,
        settings.opa.port,
    ]
    result = a0ctl("down")
    assert result.returncode == 0, result.stderr
    for name, pid in pids.items():
        assert not process_alive(pid), f"{name} (pid {pid}) still running"
    assert not [port for port in ports if port_in_use("127.0.0.1", port)]
    _, statuses = bring_up(settings, runtime_name="local")
    assert all(s.healthy for s in statuses)


def test_logs_prints_the_tail_of_a_service_log(stack: LocalRuntime) -> None:
    result = a0ctl("logs", "kafka", "-n", "5")
    assert result.returncode == 0
    assert 0 < len(result.stdout.splitlines()) <= 5
    unknown = a0ctl("logs", "nope")
    assert unknown.returncode == 1 and "unknown service" in unknown.stderr


def test_down_also_stops_replicas_the_settings_no_longer_name(stack: LocalRuntime) -> None:
    # A process a0ctl started earlier under a name the current settings do not have.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    (stack.state / "run" / "conversation-worker-9.pid").write_text(
        f"{orphan.pid} {process_start_time(orphan.pid)}"
    )
    try:
        result = a0ctl("down")
        assert result.returncode == 0 and "conversation-worker-9" in result.stdout
        orphan.wait(timeout=20)
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, signal.SIGKILL)
        bring_up(load_settings(), runtime_name="local")
