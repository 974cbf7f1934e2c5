"""Health probes of every service, over each service's own protocol.

A probe opens its own connection and closes it, unless it runs inside
:func:`kept_connections` (the watchdog, which probes every few seconds): there the
connections to Kafka, PostgreSQL and Redis and the HTTP client are opened once and kept,
because a new connection each time is most of a probe's cost — to PostgreSQL a new
backend and a SCRAM handshake, to Kafka a SCRAM handshake and a metadata fetch. A probe
whose kept connection fails drops it and tries once over a new one, so "unhealthy" still
means that a new connection fails too, as it does without kept connections.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx

from services.common.settings import Settings

Probe = Callable[[Settings], Awaitable[str]]
T = TypeVar("T")


class KeptConnections:
    """Connections the probes keep from one run to the next, by service."""

    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        self.closers: dict[str, Callable[[], Awaitable[object]]] = {}
        self.closing: set[asyncio.Future[object]] = set()  # connections of probes that timed out

    async def drop(self, name: str) -> None:
        self.clients.pop(name, None)
        closer = self.closers.pop(name, None)
        if closer is not None:
            try:
                await asyncio.wait_for(closer(), 2)
            except Exception:  # a connection already broken: nothing left to close cleanly
                pass

    async def aclose(self) -> None:
        for name in list(self.clients):
            await self.drop(name)


_kept: contextvars.ContextVar[KeptConnections | None] = contextvars.ContextVar("kept", default=None)


@asynccontextmanager
async def kept_connections(kept: KeptConnections) -> AsyncIterator[KeptConnections]:
    """Probes run in this context keep their connections in ``kept``."""
    token = _kept.set(kept)
    try:
        yield kept
    finally:
        _kept.reset(token)


async def _over_kept(
    name: str,
    open_client: Callable[[], Awaitable[tuple[Any, Callable[[], Awaitable[object]]]]],
    use: Callable[[Any], Awaitable[T]],
) -> T:
    """``use`` a client: a kept one when the probe runs in :func:`kept_connections` (a
    failure drops it and tries once over a new one), else a new one closed after."""
    kept = _kept.get()
    if kept is not None and name in kept.clients:
        try:
            return await use(kept.clients[name])
        except Exception:
            await kept.drop(name)
        except asyncio.CancelledError:  # timed out (a hung service): not kept for the next probe
            kept.clients.pop(name, None)
            closer = kept.closers.pop(name, None)
            if closer is not None:
                closing = asyncio.ensure_future(closer())
                kept.closing.add(closing)
                closing.add_done_callback(kept.closing.discard)
            raise
    client, close = await open_client()
    if kept is None:
        try:
            return await use(client)
        finally:
            await close()
    try:
        result = await use(client)
    except BaseException:
        await close()
        raise
    kept.clients[name], kept.closers[name] = client, close
    return result


async def kafka_probe(settings: Settings) -> str:
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka import client_options

    async def open_admin() -> tuple[Any, Callable[[], Awaitable[object]]]:
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=3000)
        try:
            await admin.start()
        except BaseException:
            await admin.close()
            raise
        return admin, admin.close

    async def describe(admin: Any) -> str:
        cluster = await admin.describe_cluster()
        return f"cluster {cluster['cluster_id']}, {len(cluster['brokers'])} broker(s)"

    return await _over_kept("kafka", open_admin, describe)


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

    async def open_client() -> tuple[Any, Callable[[], Awaitable[object]]]:
        client = aioredis.from_url(settings.redis_url, socket_connect_timeout=2)
        return client, client.aclose

    async def ping(client: Any) -> str:
        await client.ping()
        info = await client.info("server")
        return f"redis {info.get('redis_version', '?')}"

    return await _over_kept("redis", open_client, ping)


async def postgres_probe(settings: Settings) -> str:
    import psycopg

    async def connect() -> tuple[Any, Callable[[], Awaitable[object]]]:
        # The maintenance database always exists, so health does not depend on migrations.
        conn = await psycopg.AsyncConnection.connect(
            settings.postgres_dsn, dbname="postgres", connect_timeout=2, autocommit=True
        )
        return conn, conn.close

    async def version(conn: Any) -> str:
        row = await (await conn.execute("SHOW server_version")).fetchone()
        return f"postgres {row[0] if row else '?'}"

    return await _over_kept("postgres", connect, version)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every probe of the process: httpx would build one per client
    (20 ms of CPU each, for every probe of every watchdog tick)."""
    return httpx.create_ssl_context()


async def _http_ok(url: str) -> str:
    async def open_client() -> tuple[Any, Callable[[], Awaitable[object]]]:
        # No timeout of its own: :func:`check`'s bounds the whole probe.
        client = httpx.AsyncClient(timeout=None, verify=_tls())
        return client, client.aclose

    async def get(client: httpx.AsyncClient) -> str:
        response = await client.get(url)
        response.raise_for_status()
        return f"HTTP {response.status_code}"

    # One kept client per address: a failing service drops only its own connections.
    return await _over_kept(f"http {httpx.URL(url).netloc.decode()}", open_client, get)


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
