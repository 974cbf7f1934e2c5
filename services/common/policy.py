"""The OPA client: every service asks the same decision with the same input contract
(see stack/opa/authz.rego): ``POST /v1/data/a0/authz/decision``.

Decisions are priced for load: keep-alive connections sized by ``A0_OPA_CONNECTIONS``,
and a short-lived cache keyed on the whole input (``A0_OPA_DECISION_CACHE_S``, 30 s by
default), so a user's requests on one conversation ask OPA about once per lifetime. The
cache's staleness is bounded by its lifetime: a policy or data change applies within it
(for comparison, a signed-in token stays valid for hours).
Only answers are cached; when OPA cannot be asked, callers fail closed.
"""

from __future__ import annotations

import time
import zlib
from types import TracebackType

import httpx
import orjson
from pydantic import BaseModel

from services.common.errors import PolicyUnavailable
from services.common.settings import Settings

DECISION_PATH = "/v1/data/a0/authz/decision"
CACHE_MAX_ENTRIES = 50_000
POOL_SHARDS = 4


class Decision(BaseModel):
    allow: bool
    reason: str


class PolicyClient:
    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        opa = settings.opa
        self._url = settings.opa_url + DECISION_PATH
        # Several small pools rather than one large one: httpx's pool scans its
        # connections on every request, which under a burst cost more than the decisions.
        per_shard = max(1, opa.connections // POOL_SHARDS)
        self._clients = (
            [client]
            if client is not None
            else [
                httpx.AsyncClient(
                    timeout=httpx.Timeout(opa.timeout_s),
                    limits=httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard),
                )
                for _ in range(POOL_SHARDS)
            ]
        )
        self._owned = client is None
        self._ttl_s = opa.decision_cache_s
        self._cache: dict[bytes, tuple[float, Decision]] = {}

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            for client in self._clients:
                await client.aclose()

    async def decide(
        self,
        action: str,
        user_id: str,
        *,
        roles: list[str] | None = None,
        owner_id: str | None = None,
        conversation_id: str | None = None,
        tool: str | None = None,
        provider: str | None = None,
        url: dict[str, str | int] | None = None,
        addresses: list[str] | None = None,
    ) -> Decision:
        resource = {
            key: value
            for key, value in {
                "owner_id": owner_id,
                "conversation_id": conversation_id,
                "tool": tool,
                "provider": provider,
                "url": url,
                "addresses": addresses,
            }.items()
            if value is not None
        }
        body = {
            "input": {
                "action": action,
                "subject": {"user_id": user_id, "roles": roles or ["user"]},
                "resource": resource,
            }
        }
        content = orjson.dumps(body)
        now = time.monotonic()
        cached = self._cache.get(content)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            client = self._clients[zlib.crc32(content) % len(self._clients)]
            response = await client.post(
                self._url, content=content, headers={"Content-Type": "application/json"}
            )
            response.raise_for_status()
            result = orjson.loads(response.content).get("result")
        except (httpx.HTTPError, ValueError) as exc:
            raise PolicyUnavailable(f"OPA at {self._url} did not decide: {type(exc).__name__}") from exc
        if not isinstance(result, dict):
            raise PolicyUnavailable("OPA returned no decision; is stack/opa loaded?")
        decision = Decision.model_validate(result)
        if self._ttl_s > 0:
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_MAX_ENTRIES:
                    self._cache.clear()
            self._cache[content] = (now + self._ttl_s, decision)
        return decision
