"""The gateway app: ``create_app(settings)`` builds it, ``serve(settings)`` runs it.

The lifespan opens every client (PostgreSQL pool, Redis, Kafka producer, OPA) and the
outbound consumer on a :class:`~services.common.bootstrap.ServiceStack`, which closes
them all again, also when the start fails half-way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.middleware import Middleware
from starlette.staticfiles import StaticFiles

from services.common import http_server, metrics, open_turns
from services.common.auth import check_sign_in
from services.common.bootstrap import ServiceStack
from services.common.credentials import CredentialStore
from services.common.db import migrate
from services.common.logging import register_secret, setup_logging
from services.common.settings import Settings, load_settings
from services.common.telemetry import setup_tracing
from services.gateway import (
    protocol,
    routes_console,
    routes_conversations,
    routes_credentials,
    routes_ops,
    routes_stream,
)
from services.gateway.console import Console
from services.gateway.deps import GatewayState
from services.gateway.errors import NotFound, install_error_handlers
from services.gateway.fanout import Hub, outbound_tail, table_loader
from services.gateway.hosts import TrustedHosts, allowed_hosts
from services.gateway.middleware import middleware
from services.gateway.ratelimit import OpenTurns

log = logging.getLogger("a0.gateway")

STATIC_DIR = Path(__file__).resolve().parent / "static"
KAFKA_START_ATTEMPTS = 30
# PostgreSQL connections of the gateway, shared by its processes (A0_GATEWAY_WORKERS).
POOL_CONNECTIONS = 40


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    register_secret(settings.gateway.jwt_secret.get_secret_value())
    await migrate(settings)
    async with ServiceStack(settings) as stack:
        # Opened at full size, and no larger: a pool grows too slowly for a burst, and
        # more connections let the gateway take on more than its cores serve (figures:
        # docs/runbook.md, "Why the pools are opened at full size").
        size = max(8, POOL_CONNECTIONS // settings.gateway.workers)
        pool = await stack.pool("gateway", min_size=size, max_size=size)
        redis = stack.redis(socket_connect_timeout=3, socket_timeout=5)
        policy = stack.policy()
        producer = await stack.producer(f"gateway-{settings.gateway.replica}", attempts=KAFKA_START_ATTEMPTS)
        hub = Hub()
        outbound = outbound_tail(settings, hub, producer)
        await stack.started(outbound.start, outbound.stop)
        stack.background(open_turns.reconcile(redis, pool), name="open-turns")
        app.state.console = stack.closing(Console(settings))
        app.state.gateway = GatewayState(
            settings=settings,
            pool=pool,
            redis=redis,
            producer=producer,
            policy=policy,
            hub=hub,
            outbound=outbound,
            history=table_loader(pool),
            credentials=CredentialStore(settings, pool, redis),
            open_turns=OpenTurns(redis, turn_s=settings.gateway.shed_turn_s),
        )
        stack.release_when_quiet.append(app.state.gateway.owners.clear)
        log.info("gateway %s listening on %s", settings.gateway.replica, settings.gateway_url)
        try:
            yield
        finally:
            app.state.gateway = None
            app.state.console = None


def _untraced_path(scope: Any) -> bool:
    return scope.get("path") in ("/metrics", "/health", "/ready")


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
        # Scrapes and probes are not traced. Metrics are Prometheus' (services.common.metrics)
        # and logs go to the log file, so FastAPI's OpenTelemetry metrics and logs are off.
        telemetry={"operation_spans": False, "metrics": False, "logs": False, "exclude": _untraced_path},
    )
    app.state.settings = settings
    app.state.gateway = None
    app.state.console = None
    install_error_handlers(app)
    # One middleware per concern; the Host check inside them, so a refused Host still
    # gets a request id and is counted.
    app.user_middleware[:0] = middleware(settings, Middleware(TrustedHosts, allowed=allowed_hosts(settings)))
    app.include_router(routes_ops.router)
    app.include_router(routes_conversations.router)
    app.include_router(routes_stream.router)
    app.include_router(routes_credentials.router)
    app.include_router(routes_console.router)

    # The chat UI: checked per request, so the files may appear after the app is built.
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
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
    protocol.configure(settings.gateway)  # this process's connections, from here on
    app = create_app(settings)
    metrics.tune_gc()
    return app


def serve(settings: Settings) -> None:
    """Run the gateway with uvicorn on ``stack.host:gateway.port`` until interrupted.

    With ``A0_GATEWAY_WORKERS`` > 1, uvicorn runs that many processes on the one port;
    each has its own outbound consumer, so any of them can stream any conversation."""
    setup_logging("gateway")
    setup_tracing(settings, "gateway")
    workers = settings.gateway.workers
    # No access log: request lines are noise under load, and SSE URLs may carry a token.
    options: dict[str, Any] = dict(
        host=settings.stack.host,
        port=settings.gateway.port,
        access_log=False,
        log_config=None,
        # uvicorn's httptools protocol, refusing request heads past the header limits (431).
        http=protocol.configure(settings.gateway),
        # Longer than clients' idle pools keep connections, so a reused connection is not
        # closed under a request in flight.
        timeout_keep_alive=75,
        # Not uvloop: it accepts one connection per turn of its busy loop; asyncio's takes
        # all that are waiting (docs/messaging.md).
        loop="asyncio",
        backlog=4096,
        # Past the body limit the handler answers with a clear error and keeps the socket;
        # only frames far past it are cut off by the protocol (close 1009).
        ws_max_size=max(settings.gateway.max_body_bytes * 4, 65536),
    )
    if workers > 1:
        uvicorn.run("services.gateway.main:app_from_environment", factory=True, workers=workers, **options)
    else:
        # One process: a server loop that sleeps while the gateway is idle.
        http_server.run(create_app(settings), **options)
