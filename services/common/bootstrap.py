"""How a service opens what it holds, so that what it opened is closed again — after a
signal, and just as well when its start fails half-way.

:class:`ServiceStack` is an :class:`~contextlib.AsyncExitStack` with one method per kind
of client a0's services open (PostgreSQL pool, Redis, Kafka producer, OPA client,
background tasks); each registers its own close as it opens. :func:`run_consumer_service`
is the whole life of a consumer service (the conversation worker, the tool executor):
migrate, open, consume until SIGTERM or SIGINT, close in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from services.common import metrics
from services.common.consumer import ConsumerLoop
from services.common.db import migrate, open_pool, renew_when_idle
from services.common.kafka import make_producer
from services.common.logging import register_secret
from services.common.policy import PolicyClient
from services.common.retry import backoff
from services.common.settings import Settings

log = logging.getLogger(__name__)


class _Closable(Protocol):
    async def aclose(self) -> None: ...


Closable = TypeVar("Closable", bound=_Closable)


class ServiceStack(AsyncExitStack):
    """Open a service's clients; leaving the stack closes them, last opened first."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        # Called when the process goes quiet after a busy spell (metrics.collect_when_quiet).
        self.release_when_quiet: list[Callable[[], object]] = []

    async def __aenter__(self) -> ServiceStack:
        await super().__aenter__()
        self.background(metrics.watch_loop_lag(), name="event-loop-lag")
        self.background(
            metrics.collect_when_quiet(release=self.release_when_quiet), name="collect-when-quiet"
        )
        return self

    async def pool(self, name: str, *, min_size: int = 2, max_size: int = 20) -> AsyncConnectionPool:
        """The service's PostgreSQL pool (see :func:`open_pool`), its use in ``a0_db_pool_*``,
        its connections renewed when the process goes quiet (:func:`renew_when_idle`)."""
        pool = await open_pool(self.settings, name=name, min_size=min_size, max_size=max_size)
        self.push_async_callback(pool.close)
        self.callback(metrics.watch_pool(pool))
        self.release_when_quiet.append(partial(renew_when_idle, pool))
        return pool

    def redis(self, **options: Any) -> aioredis.Redis:
        register_secret(self.settings.redis.password.get_secret_value())
        client = aioredis.from_url(self.settings.redis_url, **options)
        self.push_async_callback(client.aclose)
        return client

    def policy(self) -> PolicyClient:
        """An OPA client whose cached decisions go when the process goes quiet."""
        client = self.closing(PolicyClient(self.settings))
        self.release_when_quiet.append(client.forget_decisions)
        return client

    def closing(self, client: Closable) -> Closable:
        """Close ``client`` (anything with ``aclose()``) when the stack is left."""
        self.push_async_callback(client.aclose)
        return client

    async def producer(self, client_id: str, *, attempts: int = 1) -> AIOKafkaProducer:
        """A started producer. With ``attempts`` > 1 it waits for a broker that is still
        coming up, backing off between attempts, then gives up loudly."""
        for attempt in range(1, attempts + 1):
            producer = make_producer(self.settings, client_id)
            try:
                await producer.start()
            except Exception as exc:  # KafkaConnectionError and friends
                await producer.stop()
                if attempt == attempts:
                    raise
                log.warning(
                    "Kafka at %s not reachable yet (%s); retrying", self.settings.kafka_bootstrap, exc
                )
                await asyncio.sleep(backoff(attempt, base=0.5, cap=2.0))
            else:
                self.push_async_callback(producer.stop)
                return producer
        raise AssertionError("unreachable")

    async def started(
        self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``start``; ``stop`` when the stack is left (only if ``start`` succeeded)."""
        await start()
        self.push_async_callback(stop)

    def background(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``work`` as a task, cancelled (and awaited) when the stack is left."""
        task = asyncio.create_task(work, name=name)

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.push_async_callback(cancel)
        return task


async def run_consumer_service(
    settings: Settings, build: Callable[[ServiceStack], Awaitable[ConsumerLoop]]
) -> None:
    """Migrate the schema, open what ``build`` opens on the stack and consume with the
    loop it returns until SIGTERM or SIGINT; then close everything, in reverse order.
    A ``build`` that fails closes what it had opened."""
    await migrate(settings)
    async with ServiceStack(settings) as stack:
        loop = await build(stack)
        await loop.run_until_signalled()
