"""Reads the stack for the account of a load run (:mod:`a0ctl.load.account`).

Sources, each read the cheapest honest way:

- CPU: ``/proc`` of each supervised process tree (:mod:`a0ctl.load.processes`), exited
  children included; the load client is this process, less the account's own readings.
- Memory: each process tree's PSS (``/proc/PID/smaps_rollup``, summed over the tree) as
  the run starts and after the settle time: what the run left the stack holding.
- PostgreSQL: transactions committed, backends started (each a new connection: a fork,
  a SCRAM handshake, caches filled again) and rows written (``pg_stat_database``, every
  database), WAL records, writes and fsyncs (``pg_stat_wal``), HOT updates
  (``pg_stat_user_tables``), over one connection kept for the run.
- Kafka: records per topic (end offsets of every partition, internal topics and
  transaction markers included), and requests per kind as the broker counts them
  (:mod:`a0ctl.load.kafka_requests`).
- Redis: commands (``INFO commandstats``); OPA: decisions (its ``/metrics``, the
  decision route's requests); LLM requests (the workers' ``a0_llm_call_seconds``);
  spans (traces stored in Jaeger in each window, through its query API).

What a source could not give is named in ``unavailable`` rather than guessed. The
readings cost the stack a few requests each (counted in the figures: a handful against
hundreds of turns) and this process the CPU given as ``probe_cpu_ms``.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import AsyncExitStack
from typing import Any

import httpx

from a0ctl.load import processes
from a0ctl.load.account import Reading
from a0ctl.load.kafka_requests import read_request_counts
from services.common.settings import Settings

# PostgreSQL backends flush their statistics at most every second while busy, and within
# 10 s once idle (PGSTAT_IDLE_INTERVAL): the last reading waits that long after the run.
SETTLE_S = 11.0
IDLE_S = 15.0
READ_TIMEOUT_S = 10.0
# The request kinds the table shows apart; the rest are summed as "other".
KAFKA_REQUEST_KINDS = ("Produce", "Fetch", "OffsetCommit", "Heartbeat", "Metadata")
# Subsets of Fetch the broker also counts apart: not "other" requests.
KAFKA_FETCH_KINDS = ("FetchConsumer", "FetchFollower")
PROMETHEUS_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def _metric_sum(text: str, name: str, label_filter: str = "") -> float:
    """The sum of every sample of ``name`` (whose labels contain ``label_filter``) in a
    Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        match = PROMETHEUS_SAMPLE.match(line)
        if match and match.group(1) == name and label_filter in (match.group(2) or ""):
            total += float(match.group(3))
    return total


class AccountProbe:
    """Reads the stack for the account, over clients opened once for the whole run."""

    def __init__(self, settings: Settings, runtime: Any | None) -> None:
        self.settings = settings
        self.runtime = runtime  # a LocalRuntime: its processes and run directory; else None
        self.unavailable: dict[str, str] = {}
        self.probe_cpu_s = 0.0
        self._exit = AsyncExitStack()
        self._postgres: Any = None
        self._redis: Any = None
        self._kafka: Any = None
        self._partitions: list[Any] = []
        self._http: httpx.AsyncClient | None = None

    async def open(self) -> AccountProbe:
        started = time.process_time()
        self._http = await self._exit.enter_async_context(httpx.AsyncClient(timeout=READ_TIMEOUT_S))
        try:
            import psycopg

            self._postgres = await psycopg.AsyncConnection.connect(
                self.settings.postgres_dsn, autocommit=True, connect_timeout=5
            )
            self._exit.push_async_callback(self._postgres.close)
        except Exception as exc:
            self._gone("postgres", exc)
        try:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(self.settings.redis_url, socket_connect_timeout=5)
            self._exit.push_async_callback(self._redis.aclose)
        except Exception as exc:
            self._gone("redis", exc)
        try:
            from aiokafka import AIOKafkaConsumer, TopicPartition

            from a0ctl.topics.admin import admin_client
            from services.common.kafka import client_options

            # Every topic, the internal ones (consumer offsets, transactions) too.
            async with admin_client(self.settings) as admin:
                described = await admin.describe_topics()
            self._partitions = [
                TopicPartition(topic["topic"], partition["partition"])
                for topic in described
                for partition in topic["partitions"]
            ]
            consumer = AIOKafkaConsumer(**client_options(self.settings), enable_auto_commit=False)
            await consumer.start()
            self._exit.push_async_callback(consumer.stop)
            self._kafka = consumer
        except Exception as exc:
            self._gone("kafka records", exc)
        self.probe_cpu_s += time.process_time() - started
        return self

    async def close(self) -> None:
        await self._exit.aclose()

    async def __aenter__(self) -> AccountProbe:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _gone(self, source: str, exc: BaseException) -> None:
        self.unavailable.setdefault(source, f"{type(exc).__name__}: {exc}"[:200])

    # --- one reading -------------------------------------------------------------------
    async def read(self, *, memory: bool = False) -> Reading:
        """The stack now; with ``memory``, each process tree's PSS too."""
        started = time.process_time()
        cpu, pss = await asyncio.to_thread(self._cpu, memory)
        counters: dict[str, float] = {}
        for part in await asyncio.gather(
            self._postgres_counters(),
            self._kafka_records(),
            asyncio.to_thread(self._kafka_requests),
            self._redis_commands(),
            self._opa_decisions(),
            self._llm_requests(),
        ):
            counters.update(part)
        self.probe_cpu_s += time.process_time() - started
        return Reading(
            at=time.monotonic(),
            wall=time.time(),
            cpu_s=cpu,
            counters=counters,
            client_cpu_s=processes.own_cpu_s() - self.probe_cpu_s,
            pss_mib=pss,
        )

    def _cpu(self, memory: bool) -> tuple[dict[str, float], dict[str, float]]:
        """CPU seconds and (with ``memory``) PSS of each process tree."""
        if self.runtime is None:
            self.unavailable.setdefault("cpu", "the stack's processes are not on this host's /proc")
            return {}, {}
        from a0ctl.runtime.supervisor import daemon_pid

        try:
            infos = self.runtime.supervisor.processes()
        except Exception as exc:
            self._gone("cpu", exc)
            return {}, {}
        pids = {name: info.pid for name, info in infos.items() if info.pid}
        reading = processes.read_trees(pids, daemon_pid(self.runtime.paths), memory=memory)
        return reading.cpu_s, reading.pss_mib

    async def _postgres_counters(self) -> dict[str, float]:
        if self._postgres is None:
            return {}
        try:
            cursor = await self._postgres.execute(
                "SELECT db.*,"
                " (SELECT coalesce(sum(n_tup_hot_upd), 0) FROM pg_stat_user_tables),"
                " wal.wal_records, wal.wal_write, wal.wal_sync"
                " FROM (SELECT sum(xact_commit), sum(sessions), sum(tup_inserted),"
                " sum(tup_updated), sum(tup_deleted) FROM pg_stat_database) AS db,"
                " pg_stat_wal AS wal"
            )
            row = await cursor.fetchone()
        except Exception as exc:
            self._gone("postgres", exc)
            return {}
        names = (
            "commits",
            "backends started",
            "rows inserted",
            "rows updated",
            "rows deleted",
            "HOT updates",
            "WAL records",
            "WAL writes",
            "WAL fsyncs",
        )
        return {f"postgres:{name}": float(value or 0) for name, value in zip(names, row or (), strict=False)}

    async def _kafka_records(self) -> dict[str, float]:
        if self._kafka is None:
            return {}
        try:
            ends = await asyncio.wait_for(self._kafka.end_offsets(self._partitions), READ_TIMEOUT_S)
        except Exception as exc:
            self._gone("kafka records", exc)
            return {}
        counters: dict[str, float] = {}
        for tp, offset in ends.items():
            key = f"kafka records:{tp.topic}"
            counters[key] = counters.get(key, 0.0) + offset
        return counters

    def _kafka_requests(self) -> dict[str, float]:
        if self.runtime is None:
            self.unavailable.setdefault("kafka requests", "the broker is not a process of this host")
            return {}
        try:
            pid = self.runtime.pid("kafka")
            if pid is None:
                raise RuntimeError("the broker is not running")
            counts = read_request_counts(pid, self.runtime.state / "run")
        except Exception as exc:
            self._gone("kafka requests", exc)
            return {}
        shown = {f"kafka requests:{kind}": float(counts.get(kind, 0)) for kind in KAFKA_REQUEST_KINDS}
        shown["kafka requests:other"] = float(
            sum(
                count
                for kind, count in counts.items()
                if kind not in KAFKA_REQUEST_KINDS and kind not in KAFKA_FETCH_KINDS
            )
        )
        return shown

    async def _redis_commands(self) -> dict[str, float]:
        if self._redis is None:
            return {}
        try:
            stats = await asyncio.wait_for(self._redis.info("commandstats"), READ_TIMEOUT_S)
        except Exception as exc:
            self._gone("redis", exc)
            return {}
        return {"redis:commands": float(sum(int(entry.get("calls", 0)) for entry in stats.values()))}

    async def _opa_decisions(self) -> dict[str, float]:
        assert self._http is not None
        token = self.settings.opa.admin_token.get_secret_value()
        try:
            response = await self._http.get(
                f"{self.settings.opa_url}/metrics",
                headers={"Authorization": f"Bearer {token}"} if token else {},
            )
            response.raise_for_status()
        except Exception as exc:
            self._gone("opa", exc)
            return {}
        # Every query of a policy: the data API's POSTs (each one decision).
        return {
            "opa:decisions": _metric_sum(
                response.text, "http_request_duration_seconds_count", 'handler="v1/data"'
            )
        }

    async def _llm_requests(self) -> dict[str, float]:
        assert self._http is not None
        if self.runtime is None:
            return {}
        from a0ctl.runtime.local_services import worker_metrics_port

        host, total = self.settings.stack.host, 0.0
        replicas = self.runtime.replicas().get("conversation-worker", self.settings.worker.replicas)
        try:
            for replica in range(replicas):
                response = await self._http.get(
                    f"http://{host}:{worker_metrics_port(self.settings, replica)}/metrics"
                )
                response.raise_for_status()
                total += _metric_sum(response.text, "a0_llm_call_seconds_count")
        except Exception as exc:
            self._gone("llm", exc)
            return {}
        return {"llm:requests": total}

    async def spans(self, since_wall: float, until_wall: float) -> tuple[int, int] | None:
        """(traces, spans) stored in Jaeger that started between the two times, or None."""
        assert self._http is not None
        started = time.process_time()
        telemetry = self.settings.telemetry
        if not (telemetry.jaeger or telemetry.jaeger_url):
            self.unavailable.setdefault("spans", "no Jaeger to count them in (A0_OTEL_JAEGER=false)")
            return None
        base = telemetry.query_url(self.settings.stack.host)
        spans_by_trace: dict[str, int] = {}
        try:
            services = (await self._http.get(f"{base}/api/services")).json().get("data") or []
            for service in services:
                response = await self._http.get(
                    f"{base}/api/traces",
                    params={
                        "service": service,
                        "start": str(int(since_wall * 1e6)),
                        "end": str(int(until_wall * 1e6)),
                        # Jaeger's search goes no deeper than the traces it keeps.
                        "limit": str(max(1, telemetry.jaeger_max_traces - 1)),
                    },
                )
                response.raise_for_status()
                for trace in response.json().get("data") or ():
                    spans_by_trace[trace["traceID"]] = len(trace.get("spans") or ())
        except Exception as exc:
            self._gone("spans", exc)
            return None
        finally:
            self.probe_cpu_s += time.process_time() - started
        return len(spans_by_trace), sum(spans_by_trace.values())
