"""A provider's name that resolves publicly when the egress policy checks it, then to
loopback: the worker's calls go to the address that was checked, never to the second
answer, and once it checks the name again the turn ends with llm_forbidden. No
connection reaches the loopback target."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from services.common.credentials import CredentialStore
from services.common.errors import PolicyDenied
from services.common.policy import PolicyClient
from services.common.settings import Settings
from services.conversation_worker.llm import LLMClients
from services.conversation_worker.llm_errors import LLMError, classify

pytestmark = pytest.mark.hostile

PUBLIC = "93.184.215.14"


class Rebinding:
    """A resolver that answers a public address until ``rebind()``, loopback after."""

    def __init__(self) -> None:
        self.answer = [PUBLIC]
        self.asked = 0

    def rebind(self) -> None:
        self.answer = ["127.0.0.1"]

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked += 1
        return list(self.answer)


class Listener:
    """The loopback target: counts every connection made to it."""

    def __init__(self) -> None:
        self.connections = 0

    async def accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[tuple[AsyncConnectionPool, Redis, PolicyClient]]:
    pool = AsyncConnectionPool(settings.postgres_dsn, min_size=1, max_size=2, open=False)
    await pool.open()
    redis = Redis.from_url(settings.redis_url)
    policy = PolicyClient(settings)
    try:
        yield pool, redis, policy
    finally:
        await policy.aclose()
        await redis.aclose()
        await pool.close()


async def _ignore(text: str, position: int) -> None:
    pass


async def test_a_name_rebound_to_loopback_after_the_check_is_never_connected_to(
    settings: Settings, stores: tuple[AsyncConnectionPool, Redis, PolicyClient]
) -> None:
    pool, redis, policy = stores
    listener = Listener()
    server = await asyncio.start_server(listener.accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # `localhost` really is loopback here: only a client that looks it up again reaches it.
    base_url = f"https://localhost:{port}/v1"
    resolver = Rebinding()
    store = CredentialStore(settings, pool, redis, policy)
    store.resolver = resolver
    await store.set(
        policy,
        actor="rhea",
        roles=["user"],
        owner_id="rhea",
        provider="openai",
        base_url=base_url,
        model="m",
        api_key="sk-rebind-0123456789",
        verify=False,
    )
    settings.worker.llm_first_content_s = 1.0
    settings.worker.llm_round_s = 2.0
    clients = LLMClients(settings, store)
    try:
        config = await clients.config_for("rhea")  # the worker's own check: public
        assert config.addresses == (PUBLIC,)
        resolver.rebind()
        with pytest.raises(LLMError) as info:
            await clients.stream_chat(
                config, [{"role": "user", "content": "hi"}], tools=None, on_text=_ignore, fallback_call_id=str
            )
        assert info.value.code in ("llm_unavailable", "llm_timeout")  # the public address: unreachable here
        assert listener.connections == 0

        # A worker that checks the name again (a restart, a changed credential) refuses it.
        again = CredentialStore(settings, pool, redis, policy)
        again.resolver = resolver
        with pytest.raises(PolicyDenied) as denied:
            await LLMClients(settings, again).config_for("rhea")
        refused = classify(denied.value)
        assert refused.code == "llm_forbidden" and "not allowed" in refused.message
        assert listener.connections == 0
    finally:
        await clients.aclose()
        await store.remove(policy, actor="rhea", roles=["user"], owner_id="rhea", provider="openai")
        server.close()
        await server.wait_closed()
