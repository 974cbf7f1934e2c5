"""The work behind ``a0ctl creds``: the same credential store the gateway uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from services.common.credentials import CredentialStore, CredentialView
from services.common.db import open_pool
from services.common.policy import PolicyClient
from services.common.settings import Settings

CLI_ROLES = ["user"]


@asynccontextmanager
async def credential_store(settings: Settings) -> AsyncIterator[tuple[CredentialStore, PolicyClient]]:
    pool = await open_pool(settings, name="cli", min_size=1, max_size=2)
    redis = aioredis.from_url(settings.redis_url)
    policy = PolicyClient(settings)
    try:
        yield CredentialStore(settings, pool, redis), policy
    finally:
        await policy.aclose()
        await redis.aclose()
        await pool.close()


async def set_credential(
    settings: Settings, *, user: str, provider: str, base_url: str, model: str, api_key: str, verify: bool
) -> CredentialView:
    async with credential_store(settings) as (store, policy):
        return await store.set(
            policy,
            actor=user,
            roles=CLI_ROLES,
            owner_id=user,
            provider=provider,
            base_url=base_url,
            model=model,
            api_key=api_key,
            verify=verify,
        )


async def list_credentials(settings: Settings, *, user: str) -> list[CredentialView]:
    async with credential_store(settings) as (store, policy):
        return await store.list_for(policy, actor=user, roles=CLI_ROLES, owner_id=user)


async def remove_credential(settings: Settings, *, user: str, provider: str) -> bool:
    async with credential_store(settings) as (store, policy):
        return await store.remove(policy, actor=user, roles=CLI_ROLES, owner_id=user, provider=provider)


async def rotate_key(settings: Settings) -> int:
    async with credential_store(settings) as (store, _):
        return await store.rotate_kek()
