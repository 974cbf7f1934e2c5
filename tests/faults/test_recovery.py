"""What supervision does without anyone typing a command: the watchdog restarts a hung
service, supervisord gives up on one that keeps exiting (and ``a0ctl restart`` brings
it back), and data outlives every process — ``down``/``up``, and ``up`` after every
process, supervisord included, was SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import uuid

import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from a0ctl.errors import StackError
from a0ctl.runtime.local import LocalRuntime
from a0ctl.runtime.processes import port_in_use, process_alive
from a0ctl.runtime.stack import bring_up
from a0ctl.runtime.supervisor import daemon_pid
from services.common.kafka import client_options
from services.common.settings import Settings, load_settings
from tests.support.cli import a0ctl
from tests.support.waiting import holds_for, wait_until

pytestmark = pytest.mark.faults


def status_of(name: str) -> dict:
    result = a0ctl("status", "--json")
    return next(s for s in json.loads(result.stdout)["services"] if s["name"] == name)


def test_a_hung_service_is_restarted_by_the_watchdog_with_the_reason(
    settings: Settings, stack: LocalRuntime
) -> None:
    before = status_of("llm-sim")
    os.kill(before["pid"], signal.SIGSTOP)  # alive, but answers nothing
    try:
        limit = settings.stack.watchdog_unhealthy_s
        # Failing for the limit, seen at a 5 s tick, then a stop with its grace period.
        took = wait_until(
            lambda: (s := status_of("llm-sim"))["pid"] not in (None, before["pid"]) and s["healthy"],
            limit + 10 + 20 + 30,
            "llm-sim restarted by the watchdog",
        )
    finally:
        if process_alive(before["pid"]):
            os.kill(before["pid"], signal.SIGCONT)
    after = status_of("llm-sim")
    assert after["restarts"] == before["restarts"] + 1 and after["state"] == "running"
    log = (stack.state / "logs" / "watchdog.log").read_text()
    assert f"restarting llm-sim (pid {before['pid']}): health check failing" in log
    print(f"watchdog: hung llm-sim running again after {took:.1f} s (limit {limit} s)")


def test_the_watchdog_checks_postgres_over_one_connection_it_keeps(
    settings: Settings, stack: LocalRuntime
) -> None:
    """An idle stack sleeps: the watchdog's PostgreSQL check (on the maintenance
    database) reuses one backend from check to check, where each used to be a new
    backend and a SCRAM handshake."""

    def watchdog_backends() -> set[tuple[int, str]]:
        with psycopg.connect(settings.postgres_dsn) as conn:
            rows = conn.execute(
                "SELECT pid, backend_start::text FROM pg_stat_activity"
                " WHERE datname = 'postgres' AND pid <> pg_backend_pid()"
            ).fetchall()
        return {(int(pid), str(started)) for pid, started in rows}

    # Some check has run and kept its connection (one every A0_WATCHDOG_PROBE_S).
    wait_until(watchdog_backends, 60, "the watchdog's PostgreSQL connection")
    first = watchdog_backends()
    # Through at least two more checks, the same backend serves them.
    holds_for(
        lambda: first & watchdog_backends(),
        2 * load_settings().stack.watchdog_probe_s + 5,
        "the watchdog's PostgreSQL backend kept from check to check",
    )


def test_a_service_that_keeps_exiting_is_given_up_then_restarted(stack: LocalRuntime) -> None:
    settings = load_settings()
    stack.stop_service("opa")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind((settings.stack.host, settings.opa.port))
    holder.listen()
    try:
        with pytest.raises(StackError) as info:
            stack.restart("opa")  # every start fails: the port is taken
        assert "gave up" in info.value.message
        failed = a0ctl("status", "--json")
        assert failed.returncode == 1
        opa = next(s for s in json.loads(failed.stdout)["services"] if s["name"] == "opa")
        assert opa["state"] == "failed" and not opa["healthy"] and "a0ctl restart opa" in opa["detail"]
        # Across more than a watchdog tick (5 s): a given-up service stays down.
        holds_for(lambda: status_of("opa")["state"] == "failed", 6, "opa stays given up")
    finally:
        holder.close()
    restarted = a0ctl("restart", "opa")
    assert restarted.returncode == 0, restarted.stderr
    assert status_of("opa")["state"] == "running"


KEY = f"a0:fault-probe:{uuid.uuid4()}"


async def write_probe(settings: Settings) -> tuple[int, int]:
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait("tool.requests", KEY.encode(), key=KEY.encode())
    finally:
        await producer.stop()
    redis.from_url(settings.redis_url).set(KEY, "kept")
    with psycopg.connect(settings.postgres_dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fault_probe (key text PRIMARY KEY)")
        conn.execute("INSERT INTO fault_probe VALUES (%s)", (KEY,))
    return meta.partition, meta.offset


async def probe_is_kept(settings: Settings, partition: int, offset: int) -> None:
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition("tool.requests", partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
        assert batch[tp][0].value == KEY.encode()
    finally:
        await consumer.stop()
    assert redis.from_url(settings.redis_url).get(KEY) == b"kept"
    with psycopg.connect(settings.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM fault_probe WHERE key = %s", (KEY,)).fetchone() == (1,)


def test_data_outlives_down_and_a_sigkill_of_every_process(settings: Settings, stack: LocalRuntime) -> None:
    partition, offset = asyncio.run(write_probe(settings))

    # down and up: every service stopped with its own signal; data kept.
    assert a0ctl("down").returncode == 0
    bring_up(load_settings(), runtime_name="local")
    asyncio.run(probe_is_kept(settings, partition, offset))

    # Everything SIGKILLed at once, supervisord included: stale pid files and socket.
    supervisord = daemon_pid(stack.paths)
    assert supervisord is not None
    pids = [s.pid for s in stack.status() if s.pid]
    os.kill(supervisord, signal.SIGKILL)
    for pid in pids:
        os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not any(process_alive(p) for p in [supervisord, *pids]), 20, "every process gone")
    assert stack.paths.socket.exists()
    started = time.monotonic()
    _, statuses = bring_up(load_settings(), runtime_name="local")
    took = time.monotonic() - started
    assert all(s.healthy for s in statuses), statuses
    asyncio.run(probe_is_kept(settings, partition, offset))
    print(f"up after SIGKILL of every process: all healthy in {took:.1f} s")


def test_up_takes_over_services_a_killed_supervisord_left_running(stack: LocalRuntime) -> None:
    settings = load_settings()
    supervisord = daemon_pid(stack.paths)
    assert supervisord is not None
    os.kill(supervisord, signal.SIGKILL)
    wait_until(lambda: not process_alive(supervisord), 10, "supervisord gone")
    assert port_in_use(settings.stack.host, settings.postgres.port)  # orphaned, still serving
    _, statuses = bring_up(settings, runtime_name="local")
    assert all(s.healthy and s.state == "running" for s in statuses), statuses
    assert daemon_pid(stack.paths) not in (None, supervisord)


def test_up_takes_over_a_service_no_record_names_by_its_port_and_command(stack: LocalRuntime) -> None:
    # A service process that neither a pid file nor a supervisord's environment names:
    # started by hand with the stack's own command, while the stack is down.
    settings = load_settings()
    a0ctl("down")
    service = stack.services["llm-sim"]
    stray = subprocess.Popen(
        service.command(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(
            lambda: port_in_use(settings.stack.host, service.port), 30, "the stray simulator listening"
        )
        _, statuses = bring_up(settings, runtime_name="local")
        assert all(s.healthy and s.state == "running" for s in statuses), statuses
        assert stray.wait(timeout=5) is not None  # stopped by up, which runs its own
        assert stack.pid("llm-sim") not in (None, stray.pid)
    finally:
        if stray.poll() is None:
            os.killpg(stray.pid, signal.SIGKILL)
            stray.wait()
