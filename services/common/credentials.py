"""The credential store: LLM provider keys, encrypted at rest in PostgreSQL (sealed under
the KEK of ``conf/env/``: :mod:`services.common.keyring`), shown only masked, verified
against the provider before they are saved, each use decided by OPA and audited in
``credential_audit``; a change is announced on Redis so workers use the new key without a
restart. The whole contract: docs/credentials.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import httpx
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel
from redis.asyncio import Redis

from services.common.egress import Resolver, check_base_url, pinned, resolve
from services.common.errors import CredentialError, PolicyDenied, is_transient
from services.common.keyring import KEK_KEY, PREVIOUS_KEK_KEY, Keyring
from services.common.logging import register_secret
from services.common.policy import PolicyClient
from services.common.secrets_env import read_generated_secret, write_generated_secrets
from services.common.settings import Settings

log = logging.getLogger(__name__)
CHANNEL = "a0:credentials:changed"
# (user, provider) pairs a worker keeps decrypted keys (or their absence) for.
CACHE_ENTRIES = 10_000


def mask(secret: str) -> str:
    if len(secret) <= 10:
        return "*" * len(secret)
    return f"{secret[:3]}…{secret[-4:]}"


@dataclass(frozen=True)
class LLMConfig:
    """Where a turn's upstream calls go, with which key and model."""

    base_url: str
    api_key: str
    model: str
    source: str  # "credential" | "settings"
    # The addresses the egress policy checked the base URL's host with: calls connect to
    # these, not to a new DNS answer. Empty for the operator's own settings.
    addresses: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never print the key
        return f"LLMConfig(base_url={self.base_url!r}, model={self.model!r}, source={self.source!r})"


class CredentialView(BaseModel):
    provider: str
    base_url: str
    model: str
    key_masked: str
    updated_at: datetime


class CredentialStore:
    def __init__(
        self, settings: Settings, pool: AsyncConnectionPool, redis: Redis, policy: PolicyClient | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.policy = policy  # asked before a stored key is used (the worker's side)
        self.resolver: Resolver = resolve  # how base URLs' hosts are looked up for the policy
        self.keyring = Keyring(settings)
        # By (user, provider), least recently used first; ``None``: the user has no key.
        self._cache: OrderedDict[tuple[str, str], LLMConfig | None] = OrderedDict()
        # Moves with every change notice: a lookup that overlapped one is not cached.
        self._changes = 0
        # Set while the subscription to change notices is down: a notice sent meanwhile is
        # lost, so no cached key is used (or kept) until it is made again.
        self._deaf = False
        self._listener: asyncio.Task[None] | None = None

    # --- operator and API actions -------------------------------------------------
    async def _authorize(
        self,
        policy: PolicyClient,
        action: str,
        actor: str,
        roles: list[str],
        owner_id: str,
        provider: str | None,
    ) -> None:
        decision = await policy.decide(action, actor, roles=roles, owner_id=owner_id, provider=provider)
        if not decision.allow:
            await self._audit(actor, owner_id, provider or "*", action, "denied", decision.reason)
            raise PolicyDenied(decision.reason)

    async def verify_with_provider(
        self, base_url: str, api_key: str, addresses: list[str] | None = None
    ) -> list[str]:
        """The ids of the provider's ``/models`` list, fetched with ``api_key``; raises
        CredentialError (never naming the key) when the provider refuses it."""
        url = base_url.rstrip("/") + "/models"
        # One message for "nothing there" and "something else there": the answer must not
        # tell a caller whether a port is open.
        unverified = CredentialError(f"no OpenAI-compatible API answered at {url}; check the base URL")
        try:
            headers = {"Authorization": f"Bearer {api_key}"}
            target, extensions = url, dict[str, str]()
            if addresses:  # connect to the address the policy checked, not a new lookup
                target, host_header, extensions = pinned(url, addresses[0])
                headers |= host_header
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
                response = await client.get(target, headers=headers, extensions=extensions)
        except httpx.HTTPError:
            raise unverified from None
        if response.status_code in (401, 403):
            raise CredentialError(f"the provider at {base_url} refused this API key ({response.status_code})")
        if response.status_code >= 300:
            raise unverified
        try:
            listed = response.json().get("data")
        except ValueError:
            raise unverified from None
        if not isinstance(listed, list):
            raise unverified
        ids = {str(m["id"]) for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)}
        return sorted(ids)

    async def test(
        self,
        policy: PolicyClient,
        *,
        actor: str,
        roles: list[str],
        owner_id: str,
        provider: str,
        base_url: str,
        api_key: str,
    ) -> list[str]:
        """Try ``api_key`` at ``base_url`` as saving it would, store nothing; the models the
        provider lists. The same policy decisions as a save (who, and where to)."""
        register_secret(api_key)
        await self._authorize(policy, "credentials.set", actor, roles, owner_id, provider)
        addresses = await check_base_url(policy, actor, roles, base_url, resolver=self.resolver)
        return await self.verify_with_provider(base_url, api_key, addresses)

    async def set(
        self,
        policy: PolicyClient,
        *,
        actor: str,
        roles: list[str],
        owner_id: str,
        provider: str,
        base_url: str,
        model: str,
        api_key: str,
        verify: bool = True,
    ) -> CredentialView:
        register_secret(api_key)
        await self._authorize(policy, "credentials.set", actor, roles, owner_id, provider)
        try:
            addresses = await check_base_url(policy, actor, roles, base_url, resolver=self.resolver)
        except CredentialError as exc:
            await self._audit(actor, owner_id, provider, "set", "denied", exc.message)
            raise
        if verify:
            try:
                await self.verify_with_provider(base_url, api_key, addresses)
            except CredentialError as exc:
                await self._audit(actor, owner_id, provider, "set", "rejected", exc.message)
                raise
        # Seal with the KEK the file holds now: `a0ctl creds rotate-key` (another process)
        # may have replaced the one loaded at start, and drops the old one once it is done.
        self.keyring = Keyring(self.settings)
        nonce, ciphertext, key_id = self.keyring.encrypt(owner_id, provider, api_key)
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "INSERT INTO credentials (owner_id, provider, base_url, model, key_masked, nonce, ciphertext, "
                    "kek_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (owner_id, provider) DO UPDATE SET base_url = EXCLUDED.base_url, "
                    "model = EXCLUDED.model, key_masked = EXCLUDED.key_masked, nonce = EXCLUDED.nonce, "
                    "ciphertext = EXCLUDED.ciphertext, kek_id = EXCLUDED.kek_id, updated_at = now() "
                    "RETURNING updated_at",
                    (owner_id, provider, base_url, model, mask(api_key), nonce, ciphertext, key_id),
                )
            ).fetchone()
        await self._audit(actor, owner_id, provider, "set", "ok", f"base_url={base_url} model={model}")
        await self._announce(owner_id, provider)
        assert row is not None
        return CredentialView(
            provider=provider, base_url=base_url, model=model, key_masked=mask(api_key), updated_at=row[0]
        )

    async def list_for(
        self, policy: PolicyClient, *, actor: str, roles: list[str], owner_id: str
    ) -> list[CredentialView]:
        await self._authorize(policy, "credentials.read", actor, roles, owner_id, None)
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT provider, base_url, model, key_masked, updated_at FROM credentials "
                    "WHERE owner_id = %s ORDER BY provider",
                    (owner_id,),
                )
            ).fetchall()
        return [
            CredentialView(provider=r[0], base_url=r[1], model=r[2], key_masked=r[3], updated_at=r[4])
            for r in rows
        ]

    async def remove(
        self, policy: PolicyClient, *, actor: str, roles: list[str], owner_id: str, provider: str
    ) -> bool:
        await self._authorize(policy, "credentials.delete", actor, roles, owner_id, provider)
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM credentials WHERE owner_id = %s AND provider = %s", (owner_id, provider)
            )
        removed = cursor.rowcount > 0
        await self._audit(actor, owner_id, provider, "remove", "ok" if removed else "absent")
        await self._announce(owner_id, provider)
        return removed

    async def rotate_kek(self) -> int:
        """Re-encrypt every credential under a new KEK in one transaction.

        The new key is written first, with the old one kept as previous, so a crash at any
        point leaves every row readable; the previous key is dropped after the commit. A
        rotation that did not finish (a previous key is still there) is finished first: a
        fresh key written over it would push out the key its rows are still sealed with."""
        conf = self.settings.stack.conf_path
        if read_generated_secret(conf, PREVIOUS_KEK_KEY):
            await self._reseal()
        old_value = read_generated_secret(conf, KEK_KEY)
        new_value = base64.urlsafe_b64encode(os.urandom(32)).decode()
        write_generated_secrets(conf, {KEK_KEY: new_value, PREVIOUS_KEK_KEY: old_value or ""})
        rows = await self._reseal()
        await self._audit("a0ctl", "*", "*", "rotate-key", "ok", f"{len(rows)} credential(s) re-encrypted")
        for owner_id, provider in rows:
            await self._announce(owner_id, provider)
        return len(rows)

    async def _reseal(self) -> list[tuple[str, str]]:
        """Every row under the current KEK in one transaction, then forget the previous key."""
        self.keyring = Keyring(self.settings)
        async with self.pool.connection() as conn, conn.transaction():
            rows = await (
                await conn.execute(
                    "SELECT owner_id, provider, nonce, ciphertext, kek_id FROM credentials FOR UPDATE"
                )
            ).fetchall()
            for owner_id, provider, nonce, ciphertext, key_id in rows:
                secret = self.keyring.decrypt(owner_id, provider, nonce, ciphertext, key_id)
                new_nonce, new_ciphertext, new_id = self.keyring.encrypt(owner_id, provider, secret)
                await conn.execute(
                    "UPDATE credentials SET nonce = %s, ciphertext = %s, kek_id = %s "
                    "WHERE owner_id = %s AND provider = %s",
                    (new_nonce, new_ciphertext, new_id, owner_id, provider),
                )
        write_generated_secrets(self.settings.stack.conf_path, {PREVIOUS_KEK_KEY: ""})
        self.keyring = Keyring(self.settings)
        return [(owner_id, provider) for owner_id, provider, *_ in rows]

    # --- the worker's side: use, with a cache invalidated by change notices ---------------
    async def llm_config_for(self, user_id: str, provider: str = "openai") -> LLMConfig | None:
        key = (user_id, provider)
        if key in self._cache and not self._deaf:
            self._cache.move_to_end(key)
            cached = self._cache[key]
        else:
            changes = self._changes
            async with self.pool.connection() as conn:
                row = await (
                    await conn.execute(
                        "SELECT base_url, model, nonce, ciphertext, kek_id FROM credentials "
                        "WHERE owner_id = %s AND provider = %s",
                        (user_id, provider),
                    )
                ).fetchone()
            if row is None:
                cached = None
            else:
                addresses: list[str] = []
                if self.policy is not None:
                    await self._authorize(
                        self.policy, "credentials.use", user_id, ["user"], user_id, provider
                    )
                    # Checked again on use: a row stored before the policy (or edited
                    # behind the API) must not turn the worker into a proxy either.
                    try:
                        addresses = await check_base_url(
                            self.policy, user_id, ["user"], row[0], resolver=self.resolver
                        )
                    except CredentialError as exc:
                        await self._audit(
                            "conversation-worker", user_id, provider, "use", "denied", exc.message
                        )
                        raise PolicyDenied(exc.message) from None
                secret = self._decrypt(user_id, provider, row[2], row[3], row[4])
                register_secret(secret)
                cached = LLMConfig(
                    base_url=row[0],
                    api_key=secret,
                    model=row[1],
                    source="credential",
                    addresses=tuple(addresses),
                )
            if changes == self._changes and not self._deaf:
                self._cache[key] = cached
                if len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        if cached is not None:
            await self._audit("conversation-worker", user_id, provider, "use", "ok")
        return cached

    def _decrypt(self, owner_id: str, provider: str, nonce: bytes, ciphertext: bytes, key_id: str) -> str:
        if key_id not in self.keyring.keys:
            # The KEK was rotated by another process since this one loaded it: reload it.
            self.keyring = Keyring(self.settings)
        return self.keyring.decrypt(owner_id, provider, nonce, ciphertext, key_id)

    def _forget(self, owner_id: str | None = None, provider: str = "") -> None:
        """Drop one cached entry, or (no owner) all of them."""
        self._changes += 1
        if owner_id is None:
            self._cache.clear()
        else:
            self._cache.pop((owner_id, provider), None)

    async def start_listening(self) -> None:
        """Follow change notices (subscribed when this returns). Notices sent while the
        subscription is down (Redis restarting) are lost: from the moment it is found down
        until it is made again no cached key is used, and then the whole cache is forgotten."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(CHANNEL)
        assert pubsub.connection is not None
        # Called after redis-py subscribes the connection again, on every reconnection.
        pubsub.connection.register_connect_callback(self._notices_resumed)

        async def listen() -> None:
            try:
                while True:
                    try:
                        async for message in pubsub.listen():
                            if message.get("type") == "message":
                                owner, _, provider = message["data"].decode().rpartition(":")
                                self._forget(owner, provider)
                    except Exception as exc:
                        if not is_transient(exc):
                            raise
                        self._deaf = True
                        self._changes += 1  # a lookup under way keeps what it read to itself
                        log.warning("credential change notices interrupted (%s); listening again", exc)
                    await asyncio.sleep(1)
            finally:
                await pubsub.aclose()

        self._listener = asyncio.create_task(listen(), name="credential-notices")

    async def _notices_resumed(self, connection: object) -> None:
        log.info("credential change notices followed again; cached keys forgotten")
        self._forget()
        self._deaf = False

    async def stop_listening(self) -> None:
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener

    async def _announce(self, owner_id: str, provider: str) -> None:
        self._forget(owner_id, provider)
        await self.redis.publish(CHANNEL, f"{owner_id}:{provider}")

    async def _audit(
        self, actor: str, owner_id: str, provider: str, action: str, outcome: str, detail: str = ""
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO credential_audit (actor, owner_id, provider, action, outcome, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (actor, owner_id, provider, action, outcome, detail),
            )
