"""Health probes of every service, over each service's own protocol."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable

import httpx

from services.common.settings import Settings

Probe = Callable[[Settings], Awaitable[str]]


async def kafka_probe(settings: Settings) -> str:
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka import client_options

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=3000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return f"cluster {cluster['cluster_id']}, {len(cluster['brokers'])} broker(s)"
    finally:
        await admin.close()


async def kafka_node_probe(settings: Settings, *, port: int) -> str:
    """One node of a cluster: it answers on its own port, and counts itself a broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka import client_options

    options = {**client_options(settings), "bootstrap_servers": f"{settings.stack.host}:{port}"}
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=3000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = {broker["port"] for broker in cluster["brokers"]}
        if port not in brokers:
            raise RuntimeError(f"the node on port {port} is not among the cluster's brokers yet")
        return f"cluster {cluster['cluster_id']}, {len(brokers)} broker(s)"
    finally:
        await admin.close()


async def redis_probe(settings: Settings) -> str:
    import redis.asyncio as aioredis

    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        await client.ping()
        info = await client.info("server")
        return f"redis {info.get('redis_version', '?')}"
    finally:
        await client.aclose()


async def postgres_probe(settings: Settings) -> str:
    import psycopg

    # The maintenance database always exists, so health does not depend on migrations.
    async with await psycopg.AsyncConnection.connect(
        settings.postgres_dsn, dbname="postgres", connect_timeout=2
    ) as conn:
        row = await (await conn.execute("SHOW server_version")).fetchone()
        return f"postgres {row[0] if row else '?'}"


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every probe of the process: httpx would build one per client
    (20 ms of CPU each, for every probe of every watchdog tick)."""
    return httpx.create_ssl_context()


async def _http_ok(url: str) -> str:
    # No timeout of its own: :func:`check`'s bounds the whole probe.
    async with httpx.AsyncClient(timeout=None, verify=_tls()) as client:
        response = await client.get(url)
        response.raise_for_status()
        return f"HTTP {response.status_code}"


async def opa_probe(settings: Settings) -> str:
    return await _http_ok(f"{settings.opa_url}/health?bundles")


async def gateway_probe(settings: Settings) -> str:
    return await _http_ok(f"{settings.gateway_url}/health")


async def llm_sim_probe(settings: Settings) -> str:
    return await _http_ok(f"http://{settings.stack.host}:{settings.llm_sim.port}/health")


async def jaeger_probe(settings: Settings) -> str:
    return await _http_ok(f"{settings.telemetry.query_url(settings.stack.host)}/api/services")


async def prometheus_probe(settings: Settings) -> str:
    return await _http_ok(f"{settings.prometheus.base_url(settings.stack.host)}/-/ready")


def metrics_probe(port_of: Callable[[Settings], int]) -> Probe:
    async def probe(settings: Settings) -> str:
        return await _http_ok(f"http://{settings.stack.host}:{port_of(settings)}/metrics")

    return probe


async def check(probe: Probe, settings: Settings, timeout: float = 5.0) -> tuple[bool, str]:
    """Run one probe; never raises, returns (healthy, detail)."""
    try:
        return True, await asyncio.wait_for(probe(settings), timeout)
    except Exception as exc:  # a probe failure is a status, not an error
        return False, f"{type(exc).__name__}: {exc}"[:300]
