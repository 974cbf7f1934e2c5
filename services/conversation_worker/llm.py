"""The upstream LLM: which provider, key and model a user's turn uses, and one streaming
chat call over the OpenAI HTTP protocol.

The configuration comes from the user's stored credential when there is one (see
:mod:`services.common.credentials`), else from the settings; when neither names a
provider, the local simulator (llm_sim) with its generated key.

The call is plain aiohttp plus a0's SSE parser: the request body is built once as JSON
and each ``chat.completion.chunk`` is decoded with orjson, with no per-call model
transform of the whole history (the openai SDK re-walked every message on every call,
which was half of the worker's CPU under load; httpx's connection pool and stream layers
cost about three times aiohttp's client CPU per streamed call). What a stream may look
like is :mod:`services.conversation_worker.stream`'s concern.

Transient failures (429 after ``Retry-After``, 5xx and transport errors, mapped to a0's
errors in :mod:`.llm_errors`) are retried with backoff, but only until any of the answer
has arrived: an answer is never spliced from two calls. Redirects are not followed (a
provider could send the conversation anywhere), and a stored credential's calls go to the
addresses the egress policy checked, never to a second DNS answer. Two limits bound a
round: the time to first content (comments and empty chunks do not count) and its total
time. Reading one answer is :mod:`.llm_response`.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from services.common import telemetry
from services.common.credentials import LLMConfig
from services.common.egress import pinned
from services.common.errors import http_call_failures
from services.common.http import LazySession
from services.common.logging import register_secret
from services.common.retry import backoff
from services.common.settings import Settings
from services.conversation_worker.llm_errors import LLMError, bad_response, status_error
from services.conversation_worker.llm_response import (
    Call,
    FirstToken,
    SinkFailed,
    TextSink,
    finished,
    read_events,
    timeout_error,
    whole_body,
)
from services.conversation_worker.stream import (
    BadResponse,
    Completion,
    ProviderError,
)

ATTEMPTS = 4


class CredentialLookup(Protocol):
    async def llm_config_for(self, user_id: str) -> LLMConfig | None: ...


def settings_config(settings: Settings) -> LLMConfig:
    key = settings.llm.api_key.get_secret_value() if settings.llm.api_key else ""
    if not key and not settings.llm.base_url:
        key = settings.llm_sim.api_key.get_secret_value()
    return LLMConfig(base_url=settings.llm_base_url, api_key=key, model=settings.llm.model, source="settings")


# Enough keep-alive connections for every turn in flight; a stream's lines may be long
# (a tool call's arguments arrive in one chunk), hence the larger read buffer.
MAX_CONNECTIONS = 1024
READ_BUFFER = 1 << 20
# Where calls go, by base URL and checked addresses: one entry per provider in use.
TARGETS_KEPT = 1024


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
        self._targets: dict[tuple[str, tuple[str, ...]], _Target] = {}

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
        """One streamed chat completion. ``on_text`` gets each text piece as it arrives
        with its offset. A call that failed before any of its answer arrived is retried
        when the failure is transient; once text or a tool call fragment has arrived it
        is not (a second answer would not continue the first): the round fails."""
        register_secret(config.api_key)
        body: dict[str, Any] = {"model": config.model, "messages": messages, "stream": True}
        if tools:
            body["tools"] = tools
        payload = orjson.dumps(body)
        http = self._http.get()
        target = self._target(config)
        loop = asyncio.get_running_loop()
        worker = self.settings.worker
        round_deadline = loop.time() + worker.llm_round_s
        # One span per call (its retries included), never one per streamed piece.
        attributes = {"gen_ai.request.model": config.model, "a0.llm.source": config.source}
        with telemetry.span("llm call", attributes) as span:
            for attempt in range(ATTEMPTS):
                call = Call(on_text, FirstToken(span), round_deadline)
                try:
                    first_content = min(round_deadline, loop.time() + worker.llm_first_content_s)
                    async with asyncio.timeout_at(first_content) as call.limit:
                        completion = await self._stream_once(
                            http, target, payload, config.api_key, call, fallback_call_id
                        )
                except SinkFailed as exc:  # the worker's own failure, not the provider's
                    raise exc.original from None
                except TimeoutError:  # only the limits above: the client's own become LLMError
                    error = timeout_error(call, worker.llm_first_content_s, worker.llm_round_s)
                except LLMError as exc:
                    error = exc
                else:
                    if span.is_recording():
                        span.set_attribute("a0.llm.tool_calls", len(completion.tool_calls))
                        span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason or ""])
                        telemetry.set_outcome(span, "tool_calls" if completion.tool_calls else "answer")
                    return completion
                error, delay = _after_failure(error, call.received, attempt)
                if not error.retriable or attempt == ATTEMPTS - 1 or loop.time() + delay >= round_deadline:
                    telemetry.set_outcome(span, error.code, error=True)
                    raise error
                span.add_event("retry", {"a0.llm.error": error.code, "a0.llm.attempt": attempt + 1})
                await asyncio.sleep(delay)
        raise LLMError("llm_unavailable", "The LLM provider could not be reached.")  # not reached

    def _target(self, config: LLMConfig) -> _Target:
        """Where a config's calls go: with checked addresses, each of them in turn (IPv4
        first), with the original name as Host and TLS server name; no second DNS answer
        is ever used."""
        key = (config.base_url, config.addresses)
        target = self._targets.get(key)
        if target is None:
            url = config.base_url.rstrip("/") + "/chat/completions"
            headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
            urls: list[str] = []
            server_hostname = None
            # IPv4 first: on a host without an IPv6 route those fail at once and the next is tried.
            for address in sorted(config.addresses, key=lambda address: ":" in address):
                pinned_url, host_header, extensions = pinned(url, address)
                urls.append(pinned_url)
                headers |= host_header
                if url.startswith("https:"):
                    server_hostname = extensions["sni_hostname"]
            target = _Target(
                tuple(urls) or (url,), headers, server_hostname, self._proxy_for(config.base_url)
            )
            if len(self._targets) >= TARGETS_KEPT:
                self._targets.clear()
            self._targets[key] = target
        return target

    async def _stream_once(
        self,
        http: aiohttp.ClientSession,
        target: _Target,
        payload: bytes,
        api_key: str,
        call: Call,
        fallback_call_id: Callable[[int], str],
    ) -> Completion:
        headers = {**target.headers, "Authorization": f"Bearer {api_key or 'none'}"}
        accumulator = call.accumulator
        try:
            async with await _post(http, target, payload, headers) as response:
                if 300 <= response.status < 400:
                    raise LLMError(
                        "llm_forbidden",
                        f"The LLM provider answered with a redirect (HTTP {response.status}), which is "
                        "not followed. Set the base URL it points to in Settings.",
                    )
                if response.status >= 400:
                    await response.read()
                    raise status_error(response.status, response.headers.get("Retry-After"))
                if response.content_type == "application/json":
                    await call.take(accumulator, await whole_body(response))
                    call.done = True
                elif response.content_type != "text/event-stream":
                    raise BadResponse(f"an answer of type {response.content_type or 'unknown'}")
                else:
                    await read_events(response, call)
        except (LLMError, SinkFailed):
            raise
        except http_call_failures():
            raise LLMError(
                "llm_unavailable", "The LLM provider could not be reached.", retriable=True
            ) from None
        except ProviderError:
            raise LLMError("llm_error", "The LLM provider ended the answer with an error.") from None
        except BadResponse as exc:
            raise bad_response(str(exc)) from None
        except Exception as exc:  # whatever else a provider's answer can make go wrong
            raise bad_response(type(exc).__name__) from None
        return finished(call, accumulator.completion(fallback_call_id))

    async def aclose(self) -> None:
        await self._http.aclose()


def _after_failure(error: LLMError, received: bool, attempt: int) -> tuple[LLMError, float]:
    """A failed attempt's error as the round reports it (once any of the answer arrived, a
    transient failure is an interrupted answer, not retried), and the wait before the next."""
    if error.retriable and received:
        error = LLMError(
            "llm_interrupted",
            "The connection to the LLM provider broke off in the middle of the answer, "
            "so it is incomplete. Try again.",
        )
    delay = error.retry_after_s if error.retry_after_s is not None else backoff(attempt, base=0.5, cap=30.0)
    return error, min(delay, 30.0)


@dataclass(frozen=True)
class _Target:
    urls: tuple[str, ...]  # the base URL's, or one per checked address
    headers: dict[str, str]
    server_hostname: str | None
    proxy: str | None


async def _post(
    http: aiohttp.ClientSession, target: _Target, payload: bytes, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """The request, to each checked address in turn until one takes the connection."""
    last = len(target.urls) - 1
    for position, url in enumerate(target.urls):
        try:
            return await http.post(
                url,
                data=payload,
                headers=headers,
                proxy=target.proxy,
                allow_redirects=False,
                server_hostname=target.server_hostname,
            )
        except aiohttp.ClientConnectorError:
            if position == last:
                raise
    raise AssertionError("a target has at least one URL")
