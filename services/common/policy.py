"""The OPA client: every service asks the same decision with the same input contract
(see stack/opa/authz.rego): ``POST /v1/data/a0/authz/decision``.

Decisions are priced for load: keep-alive connections sized by ``A0_OPA_CONNECTIONS``
through aiohttp (a decision costs about a tenth of the client CPU it costs through
httpx, measured on this path), and a short-lived cache keyed on the whole input (``A0_OPA_DECISION_CACHE_S``, 30 s by
default), so a user's requests on one conversation ask OPA about once per lifetime. The
cache's staleness is bounded by its lifetime: a policy or data change applies within it
(for comparison, a signed-in token stays valid for hours).
Only answers are cached; when OPA cannot be asked, callers fail closed.
"""

from __future__ import annotations

import time
from types import TracebackType

import aiohttp
import orjson
from pydantic import BaseModel

from services.common.errors import PolicyUnavailable, http_call_failures
from services.common.http import LazySession
from services.common.logging import register_secret
from services.common.settings import Settings

DECISION_PATH = "/v1/data/a0/authz/decision"
CACHE_MAX_ENTRIES = 50_000
JSON_HEADERS = {"Content-Type": "application/json"}


class Decision(BaseModel):
    allow: bool
    reason: str


class PolicyClient:
    def __init__(self, settings: Settings) -> None:
        opa = settings.opa
        self._url = settings.opa_url + DECISION_PATH
        token = opa.token.get_secret_value()
        register_secret(token)
        # OPA answers only a0's services (its system.authz policy, stack/opa/system).
        self._headers = {**JSON_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
        self._http = LazySession(
            connections=opa.connections, timeout=aiohttp.ClientTimeout(total=opa.timeout_s)
        )
        self._ttl_s = opa.decision_cache_s
        self._cache: dict[str, tuple[float, Decision]] = {}
        # Expired decisions are dropped at most once per TTL: the cache holds about one
        # TTL's worth of distinct questions, not every one asked until it is full.
        self._sweep_at = time.monotonic() + self._ttl_s

    async def __aenter__(self) -> PolicyClient:
        return self

    @property
    def cached(self) -> int:
        """Decisions held in the cache, expired ones not yet swept included."""
        return len(self._cache)

    def forget_decisions(self) -> None:
        """Drop every cached decision, expired or not: the next question of each kind asks
        OPA again. Called once a busy spell is over (ServiceStack.release_when_quiet)."""
        self._cache = {}
        self._sweep_at = time.monotonic() + self._ttl_s

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

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
        # The cache's key is the request as text: orjson's bytes sit in a 4 KiB block
        # whatever their length, 20 times what a decision's key needs.
        key = content.decode()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            async with self._http.get().post(self._url, data=content, headers=self._headers) as response:
                response.raise_for_status()
                result = orjson.loads(await response.read()).get("result")
        except http_call_failures() as exc:
            raise PolicyUnavailable(f"OPA at {self._url} did not decide: {type(exc).__name__}") from exc
        except ValueError as exc:  # not JSON
            raise PolicyUnavailable(f"OPA at {self._url} did not decide: {type(exc).__name__}") from exc
        if not isinstance(result, dict):
            raise PolicyUnavailable("OPA returned no decision; is stack/opa loaded?")
        decision = Decision.model_validate(result)
        if self._ttl_s > 0:
            if now >= self._sweep_at or len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                self._sweep_at = now + self._ttl_s
                if len(self._cache) >= CACHE_MAX_ENTRIES:
                    self._cache.clear()
            self._cache[key] = (now + self._ttl_s, decision)
        return decision
