"""The upstream LLM: which provider, key and model a user's turn uses, and a cached
``openai`` client per (base URL, key).

The configuration comes from the user's stored credential when there is one (see
:mod:`services.common.credentials`), else from the settings; when neither names a
provider, the local simulator (llm_sim) with its generated key.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import httpx2
import openai
from openai import AsyncOpenAI

from services.common.credentials import LLMConfig
from services.common.errors import CredentialError, PolicyDenied
from services.common.logging import register_secret
from services.common.settings import Settings


class CredentialLookup(Protocol):
    async def llm_config_for(self, user_id: str) -> LLMConfig | None: ...


class LLMError(Exception):
    """An upstream failure, phrased for the user; ``code`` goes into the error event."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


def settings_config(settings: Settings) -> LLMConfig:
    key = settings.llm.api_key.get_secret_value() if settings.llm.api_key else ""
    if not key and not settings.llm.base_url:
        key = settings.llm_sim.api_key.get_secret_value()
    return LLMConfig(base_url=settings.llm_base_url, api_key=key, model=settings.llm.model, source="settings")


# Hundreds of concurrent streams are spread over several small connection pools: a pool
# scans its connections on every request, so one large pool costs more CPU than the calls.
HTTP_SHARDS = 8
CONNECTIONS_PER_SHARD = 128


class LLMClients:
    def __init__(self, settings: Settings, credentials: CredentialLookup | None = None) -> None:
        self.settings = settings
        self.credentials = credentials
        self._clients: dict[tuple[str, str, int], AsyncOpenAI] = {}
        self._http = [
            openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(
                    max_connections=CONNECTIONS_PER_SHARD, max_keepalive_connections=CONNECTIONS_PER_SHARD
                ),
                timeout=httpx2.Timeout(settings.worker.llm_timeout_s, connect=5.0),
            )
            for _ in range(HTTP_SHARDS)
        ]

    async def config_for(self, user_id: str) -> LLMConfig:
        if self.credentials is not None:
            stored = await self.credentials.llm_config_for(user_id)
            if stored is not None:
                return stored
        return settings_config(self.settings)

    def client(self, config: LLMConfig, conversation_id: str) -> AsyncOpenAI:
        shard = zlib.crc32(conversation_id.encode()) % HTTP_SHARDS
        key = (config.base_url, config.api_key, shard)
        client = self._clients.get(key)
        if client is None:
            register_secret(config.api_key)
            client = AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.api_key or "none",
                max_retries=0,
                http_client=self._http[shard],
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        for http in self._http:
            await http.aclose()


def classify(exc: Exception) -> LLMError:
    """Turn an openai SDK error into words for the user; never echo the provider's text,
    which may quote the key."""
    if isinstance(exc, PolicyDenied):
        return LLMError("llm_forbidden", f"Using the stored LLM key is not allowed ({exc.message}).")
    if isinstance(exc, CredentialError):
        return LLMError("llm_credential", "The stored LLM key cannot be read; save it again in Settings.")
    if isinstance(exc, openai.AuthenticationError):
        return LLMError("llm_auth", "The LLM provider rejected the API key. Update it in Settings.")
    if isinstance(exc, openai.PermissionDeniedError):
        return LLMError("llm_forbidden", "The LLM provider refused this request for this key.")
    if isinstance(exc, openai.NotFoundError):
        return LLMError(
            "llm_model", "The LLM provider does not know this model. Check the model in Settings."
        )
    if isinstance(exc, openai.RateLimitError):
        return LLMError(
            "llm_rate_limited", "The LLM provider is rate limiting; try again shortly.", retryable=True
        )
    if isinstance(exc, openai.APIConnectionError | openai.APITimeoutError | openai.InternalServerError):
        return LLMError("llm_unavailable", "The LLM provider could not be reached.", retryable=True)
    if isinstance(exc, openai.BadRequestError):
        return LLMError("llm_bad_request", "The LLM provider rejected the request.")
    return LLMError("llm_error", f"The LLM call failed ({type(exc).__name__}).")
