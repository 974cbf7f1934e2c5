"""The upstream LLM: which provider, key and model a user's turn uses, and one streaming
chat call over the OpenAI HTTP protocol.

The configuration comes from the user's stored credential when there is one (see
:mod:`services.common.credentials`), else from the settings; when neither names a
provider, the local simulator (llm_sim) with its generated key.

The call is plain aiohttp plus a0's SSE parser: the request body is built once as JSON
and each ``chat.completion.chunk`` is decoded with orjson, with no per-call model
transform of the whole history (the openai SDK re-walked every message on every call,
which was half of the worker's CPU under load; httpx's connection pool and stream layers
cost about three times aiohttp's client CPU per streamed call). Status codes map to a0's errors the way the SDK
maps them to its exception classes: 401, 403, 404, 400, 429 (retried after
``Retry-After``), 5xx and transport errors (retried with backoff).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from services.common import metrics, telemetry
from services.common.credentials import LLMConfig
from services.common.errors import A0Error, CredentialError, PolicyDenied
from services.common.http import LazySession
from services.common.logging import register_secret
from services.common.settings import Settings
from services.common.sse import SseParser

ATTEMPTS = 4


class CredentialLookup(Protocol):
    async def llm_config_for(self, user_id: str) -> LLMConfig | None: ...


class LLMError(A0Error):
    """An upstream failure, phrased for the user; ``code`` goes into the error event.
    ``retriable`` ones are retried within the call; a turn fails on any that is left."""

    def __init__(
        self, code: str, message: str, *, retriable: bool = False, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable
        self.retry_after_s = retry_after_s


def settings_config(settings: Settings) -> LLMConfig:
    key = settings.llm.api_key.get_secret_value() if settings.llm.api_key else ""
    if not key and not settings.llm.base_url:
        key = settings.llm_sim.api_key.get_secret_value()
    return LLMConfig(base_url=settings.llm_base_url, api_key=key, model=settings.llm.model, source="settings")


@dataclass
class Completion:
    """One assistant answer, accumulated from its stream: text and tool calls."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class StreamAccumulator:
    """Folds ``chat.completion.chunk`` deltas into a :class:`Completion`: text pieces in
    order, tool calls by index (id and name from their first chunk, arguments appended)."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}
        self.length = 0  # characters of text so far

    def feed(self, chunk: dict[str, Any]) -> str:
        """Take one chunk; returns the text it adds (may be empty)."""
        choices = chunk.get("choices")
        if not choices:
            return ""
        delta = choices[0].get("delta") or {}
        for call in delta.get("tool_calls") or ():
            slot = self._calls.setdefault(int(call.get("index", 0)), {"id": "", "name": "", "arguments": ""})
            if call.get("id"):
                slot["id"] = call["id"]
            function = call.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["arguments"] += function.get("arguments") or ""
        text = delta.get("content") or ""
        if text:
            self._pieces.append(text)
            self.length += len(text)
        return text

    def completion(self, fallback_id: Callable[[int], str]) -> Completion:
        calls = [
            {
                "id": slot["id"] or fallback_id(index),
                "type": "function",
                "function": {"name": slot["name"], "arguments": slot["arguments"] or "{}"},
            }
            for index, slot in sorted(self._calls.items())
        ]
        return Completion("".join(self._pieces), calls)


# Enough keep-alive connections for every turn in flight; a stream's lines may be long
# (a tool call's arguments arrive in one chunk), hence the larger read buffer.
MAX_CONNECTIONS = 1024
READ_BUFFER = 1 << 20

# Text as it arrives, with its character offset in the answer.
TextSink = Callable[[str, int], Awaitable[None]]


class _FirstToken:
    """Time to first token of one call: a span event and a histogram, once."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.started = time.monotonic()
        self.pending = True

    def seen(self) -> None:
        self.pending = False
        seconds = time.monotonic() - self.started
        metrics.TTFT_SECONDS.observe(seconds)
        if self.span.is_recording():
            self.span.add_event("first token", {"a0.ttft_ms": round(seconds * 1000, 1)})


class LLMClients:
    def __init__(self, settings: Settings, credentials: CredentialLookup | None = None) -> None:
        self.settings = settings
        self.credentials = credentials
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=5.0, sock_read=settings.worker.llm_timeout_s
        )
        self._http = LazySession(connections=MAX_CONNECTIONS, timeout=self._timeout, read_bufsize=READ_BUFFER)
        # HTTP(S)_PROXY and NO_PROXY are read once per base URL, not on every call (aiohttp's
        # trust_env reads the environment and ~/.netrc in a thread for each request).
        self._environment_proxies = urllib.request.getproxies()
        self._proxies: dict[str, str | None] = {}

    def _proxy_for(self, base_url: str) -> str | None:
        if base_url not in self._proxies:
            parts = urlsplit(base_url)
            bypass = urllib.request.proxy_bypass(parts.hostname or "")
            self._proxies[base_url] = None if bypass else self._environment_proxies.get(parts.scheme)
        return self._proxies[base_url]

    async def config_for(self, user_id: str) -> LLMConfig:
        if self.credentials is not None:
            stored = await self.credentials.llm_config_for(user_id)
            if stored is not None:
                return stored
        return settings_config(self.settings)

    async def stream_chat(
        self,
        config: LLMConfig,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        on_text: TextSink,
        fallback_call_id: Callable[[int], str],
    ) -> Completion:
        """One streamed chat completion, retried on transient failures. ``on_text`` gets
        each text piece as it arrives with its offset; a retried call starts again from
        offset 0, so the caller skips by offset what it already passed on."""
        register_secret(config.api_key)
        body: dict[str, Any] = {"model": config.model, "messages": messages, "stream": True}
        if tools:
            body["tools"] = tools
        payload = orjson.dumps(body)
        http = self._http.get()
        # One span per call (its retries included), never one per streamed piece.
        attributes = {"gen_ai.request.model": config.model, "a0.llm.source": config.source}
        with telemetry.span("llm call", attributes) as span:
            for attempt in range(ATTEMPTS):
                try:
                    completion = await self._stream_once(
                        http, config, payload, on_text, fallback_call_id, _FirstToken(span)
                    )
                    if span.is_recording():
                        span.set_attribute("a0.llm.tool_calls", len(completion.tool_calls))
                        telemetry.set_outcome(span, "tool_calls" if completion.tool_calls else "answer")
                    return completion
                except LLMError as error:
                    if not error.retriable or attempt == ATTEMPTS - 1:
                        telemetry.set_outcome(span, error.code, error=True)
                        raise
                    delay = error.retry_after_s if error.retry_after_s is not None else 0.5 * 2**attempt
                    span.add_event("retry", {"a0.llm.error": error.code, "a0.llm.attempt": attempt + 1})
                    await asyncio.sleep(min(delay, 30.0))
        raise LLMError("llm_unavailable", "The LLM provider could not be reached.")  # not reached

    async def _stream_once(
        self,
        http: aiohttp.ClientSession,
        config: LLMConfig,
        payload: bytes,
        on_text: TextSink,
        fallback_call_id: Callable[[int], str],
        first_token: _FirstToken,
    ) -> Completion:
        headers = {
            "Authorization": f"Bearer {config.api_key or 'none'}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        url = config.base_url.rstrip("/") + "/chat/completions"
        proxy = self._proxy_for(config.base_url)
        accumulator = StreamAccumulator()
        try:
            async with http.post(url, data=payload, headers=headers, proxy=proxy) as response:
                if response.status >= 400:
                    await response.read()
                    raise status_error(response.status, response.headers.get("Retry-After"))
                if response.content_type != "text/event-stream":
                    raise LLMError(
                        "llm_unavailable", "The LLM provider did not answer with a stream.", retriable=True
                    )
                parser = SseParser()
                async for raw in response.content:
                    event = parser.feed(raw.decode().rstrip("\r\n"))
                    if event is None or not event["data"]:
                        continue
                    if event["data"] == "[DONE]":
                        break
                    chunk = orjson.loads(event["data"])
                    if first_token.pending:
                        first_token.seen()
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise LLMError("llm_error", "The LLM provider ended the answer with an error.")
                    position = accumulator.length
                    text = accumulator.feed(chunk)
                    if text:
                        await on_text(text, position)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            # ValueError: a line that is not UTF-8 or JSON, or longer than the read buffer.
            raise LLMError(
                "llm_unavailable", "The LLM provider could not be reached.", retriable=True
            ) from None
        return accumulator.completion(fallback_call_id)

    async def aclose(self) -> None:
        await self._http.aclose()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def status_error(status: int, retry_after: str | None = None) -> LLMError:
    """An HTTP error status from the provider, in words for the user. The provider's own
    text is never echoed: it may quote the key."""
    if status == 401:
        return LLMError("llm_auth", "The LLM provider rejected the API key. Update it in Settings.")
    if status == 403:
        return LLMError("llm_forbidden", "The LLM provider refused this request for this key.")
    if status == 404:
        return LLMError(
            "llm_model", "The LLM provider does not know this model. Check the model in Settings."
        )
    if status == 429:
        return LLMError(
            "llm_rate_limited",
            "The LLM provider is rate limiting; try again shortly.",
            retriable=True,
            retry_after_s=_retry_after(retry_after),
        )
    if status >= 500 or status in (408, 409):
        return LLMError("llm_unavailable", "The LLM provider could not be reached.", retriable=True)
    if status in (400, 422):
        return LLMError("llm_bad_request", "The LLM provider rejected the request.")
    return LLMError("llm_error", f"The LLM call failed (HTTP {status}).")


def classify(exc: Exception) -> LLMError:
    """An error met while preparing a call (the stored key, the policy), for the user."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, PolicyDenied):
        return LLMError("llm_forbidden", f"Using the stored LLM key is not allowed ({exc.message}).")
    if isinstance(exc, CredentialError):
        return LLMError("llm_credential", "The stored LLM key cannot be read; save it again in Settings.")
    return LLMError("llm_error", f"The LLM call failed ({type(exc).__name__}).")
