"""The OPA client: every service asks the same decision with the same input contract
(see stack/opa/authz.rego): ``POST /v1/data/a0/authz/decision``."""

from __future__ import annotations

from types import TracebackType

import httpx
from pydantic import BaseModel

from services.common.settings import Settings

DECISION_PATH = "/v1/data/a0/authz/decision"


class Decision(BaseModel):
    allow: bool
    reason: str


class PolicyUnavailable(Exception):
    """OPA could not be asked; callers fail closed."""


class PolicyClient:
    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self._url = settings.opa_url + DECISION_PATH
        self._client = client or httpx.AsyncClient(timeout=5)
        self._owned = client is None

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

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
        try:
            response = await self._client.post(self._url, json=body)
            response.raise_for_status()
            result = response.json().get("result")
        except (httpx.HTTPError, ValueError) as exc:
            raise PolicyUnavailable(f"OPA at {self._url} did not decide: {type(exc).__name__}") from exc
        if not isinstance(result, dict):
            raise PolicyUnavailable("OPA returned no decision; is stack/opa loaded?")
        return Decision.model_validate(result)
