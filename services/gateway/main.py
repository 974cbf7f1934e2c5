"""The gateway app: ``create_app(settings)`` builds it, ``serve(settings)`` runs it.

The lifespan opens every client (PostgreSQL pool, Redis, Kafka producer, OPA) and the
outbound consumer, and closes them all in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

from services.common.auth import check_sign_in
from services.common.credentials import CredentialStore
from services.common.db import migrate, open_pool
from services.common.kafka import make_producer
from services.common.logging import register_secret, setup_logging
from services.common.policy import PolicyClient
from services.common.settings import Settings, load_settings
from services.common.telemetry import setup_tracing
from services.gateway import routes_conversations, routes_credentials, routes_ops, routes_stream
from services.gateway.deps import GatewayState
from services.gateway.errors import NotFound, install_error_handlers
from services.gateway.fanout import Hub, OutboundConsumer
from services.gateway.middleware import GatewayMiddleware
from services.gateway.ratelimit import OpenTurns, reconcile_open_turns

log = logging.getLogger("a0.gateway")

STATIC_DIR = Path(__file__).resolve().parent / "static"
KAFKA_START_ATTEMPTS = 30


async def _start_producer(settings: Settings) -> AIOKafkaProducer:
    """Start the producer, waiting for Kafka a little while if it is still coming up."""
    for attempt in range(1, KAFKA_START_ATTEMPTS + 1):
        producer = make_producer(settings, f"gateway-{settings.gateway.replica}")
        try:
            await producer.start()
            return producer
        except Exception as exc:  # KafkaConnectionError and friends: retry, then give up loudly
            await producer.stop()
            if attempt == KAFKA_START_ATTEMPTS:
                raise
            log.warning("Kafka at %s not reachable yet (%s); retrying", settings.kafka_bootstrap, exc)
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    register_secret(settings.gateway.jwt_secret.get_secret_value())
    await migrate(settings)
    # Opened up front: a pool grows one connection at a time, too slowly for a burst.
    pool = await open_pool(settings, min_size=16, max_size=60)
    redis = aioredis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=5)
    policy = PolicyClient(settings)
    producer: AIOKafkaProducer | None = None
    consumer_task: asyncio.Task[None] | None = None
    reconciler: asyncio.Task[None] | None = None
    try:
        producer = await _start_producer(settings)
        hub = Hub()
        outbound = OutboundConsumer(settings, hub, producer)
        consumer_task = asyncio.create_task(outbound.run(), name="outbound-consumer")
        reconciler = asyncio.create_task(reconcile_open_turns(redis, pool), name="open-turns")
        app.state.gateway = GatewayState(
            settings=settings,
            pool=pool,
            redis=redis,
            producer=producer,
            policy=policy,
            hub=hub,
            outbound=outbound,
            credentials=CredentialStore(settings, pool, redis),
            open_turns=OpenTurns(redis),
        )
        log.info("gateway %s listening on %s", settings.gateway.replica, settings.gateway_url)
        yield
    finally:
        app.state.gateway = None
        if reconciler is not None:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
        if consumer_task is not None:
            consumer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer_task
        if producer is not None:
            await producer.stop()
        await policy.aclose()
        await redis.aclose()
        await pool.close()


def create_app(settings: Settings) -> FastAPI:
    """The gateway app; raises ConfigError for a sign-in set-up it must not run with."""
    check_sign_in(settings)
    app = FastAPI(
        title="a0 gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        strict_content_type=False,  # a JSON body without a Content-Type header is still JSON
        # A span per request, not per dependency and serializer: those cost more than the
        # request's own work under load.
        telemetry={"operation_spans": False},
    )
    app.state.settings = settings
    app.state.gateway = None
    install_error_handlers(app)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.gateway.max_body_bytes,
        max_pending_writes=settings.gateway.max_pending_writes,
    )
    app.include_router(routes_ops.router)
    app.include_router(routes_conversations.router)
    app.include_router(routes_stream.router)
    app.include_router(routes_credentials.router)

    # The chat UI: checked per request, so the files may appear after the app is built.
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise NotFound("the chat UI is not installed (services/gateway/static/index.html)")
        return FileResponse(page)

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


def app_from_environment() -> FastAPI:
    """The app of one worker process when the gateway runs several (uvicorn's factory)."""
    setup_logging("gateway")
    settings = load_settings()
    setup_tracing(settings, "gateway")
    return create_app(settings)


def serve(settings: Settings) -> None:
    """Run the gateway with uvicorn on ``stack.host:gateway.port`` until interrupted.

    With ``A0_GATEWAY_WORKERS`` > 1, uvicorn runs that many processes on the one port;
    each has its own outbound consumer, so any of them can stream any conversation."""
    setup_logging("gateway")
    setup_tracing(settings, "gateway")
    workers = settings.gateway.workers
    # No access log: request lines are noise under load, and SSE URLs may carry a token.
    uvicorn.run(
        "services.gateway.main:app_from_environment" if workers > 1 else create_app(settings),
        factory=workers > 1,
        workers=workers if workers > 1 else None,
        host=settings.stack.host,
        port=settings.gateway.port,
        access_log=False,
        log_config=None,
        # Longer than clients' idle pools keep connections, so a reused connection is not
        # closed under a request in flight.
        timeout_keep_alive=75,
        backlog=4096,
        # Past the body limit the handler answers with a clear error and keeps the socket;
        # only frames far past it are cut off by the protocol (close 1009).
        ws_max_size=max(settings.gateway.max_body_bytes * 4, 65536),
    )
