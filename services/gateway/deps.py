"""The gateway's runtime state and its FastAPI dependencies, as ``Annotated`` aliases
(``State``, ``CurrentUser``, ``StreamUser``, ``Db``) so routes stay short."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Principal, verify_token_async
from services.common.policy import PolicyClient
from services.common.settings import Settings
from services.gateway.errors import Unauthorized, Unavailable
from services.gateway.owners import Owners

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

    from services.common.credentials import CredentialStore
    from services.common.tail import PartitionTail
    from services.gateway.fanout import EventLoader, Hub
    from services.gateway.ratelimit import OpenTurns


@dataclass
class GatewayState:
    """Every client the gateway holds, opened and closed by the app's lifespan."""

    settings: Settings
    pool: AsyncConnectionPool
    redis: Redis
    producer: AIOKafkaProducer
    policy: PolicyClient
    hub: Hub
    outbound: PartitionTail
    history: EventLoader  # the events table, for subscriptions
    credentials: CredentialStore
    open_turns: OpenTurns
    owners: Owners = field(default_factory=Owners)  # conversation → owner, for messages


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_state(request: Request) -> GatewayState:
    state: GatewayState | None = getattr(request.app.state, "gateway", None)
    if state is None:
        raise Unavailable("the gateway is starting; try again")
    return state


SettingsDep = Annotated[Settings, Depends(get_settings)]
State = Annotated[GatewayState, Depends(get_state)]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(settings: Settings, token: str | None) -> Principal:
    if not token:
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    return await verify_token_async(settings, token)


async def current_user(request: Request, settings: SettingsDep) -> Principal:
    return await authenticate(settings, bearer_token(request.headers.get("authorization")))


URL_TOKEN_PARAMS = ("access_token", "token")
URL_TOKEN_REFUSED = (
    "a token in the URL is not accepted (URLs are kept by proxies, logs and traces); "
    "send it as Authorization: Bearer <token>"
)


def refuse_url_token(query: Mapping[str, str]) -> None:
    """A long-lived token never rides in a URL: refused before anything else, so a client
    that still sends one learns why instead of being signed in."""
    if any(name in query for name in URL_TOKEN_PARAMS):
        raise Unauthorized(URL_TOKEN_REFUSED)


async def stream_user(request: Request, settings: SettingsDep) -> Principal:
    refuse_url_token(request.query_params)
    return await current_user(request, settings)


CurrentUser = Annotated[Principal, Depends(current_user)]
StreamUser = Annotated[Principal, Depends(stream_user)]


async def db_connection(state: State) -> AsyncIterator[AsyncConnection]:
    async with state.pool.connection(timeout=10) as conn:
        yield conn


Db = Annotated[AsyncConnection, Depends(db_connection)]
