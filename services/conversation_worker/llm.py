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

Status codes map to a0's errors the way the SDK maps them to its exception classes:
401, 403, 404, 400, 429 (retried after ``Retry-After``), 5xx and transport errors
(retried with backoff) — but only until any of the answer has arrived: an answer is
never spliced from two calls. Redirects are not followed (a provider could send the
conversation anywhere), and a stored credential's calls go to the addresses the egress
policy checked, never to a second DNS answer. Two limits bound a round: the time to
first content (comments and empty chunks do not count) and its total time.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from services.common import metrics, telemetry
from services.common.credentials import LLMConfig
from services.common.egress import pinned
from services.common.errors import A0Error, CredentialError, PolicyDenied, http_call_failures
from services.common.http import LazySession
from services.common.logging import register_secret
from services.common.retry import backoff
from services.common.settings import Settings
from services.common.sse import SseParser
from services.conversation_worker.stream import (
    BadResponse,
    Completion,
    LineReader,
    ProviderError,
    StreamAccumulator,
    parse_data,
)

__all__ = ["Completion", "LLMClients", "LLMError", "StreamAccumulator", "classify", "status_error"]

ATTEMPTS = 4


class CredentialLookup(Protocol):
    async def llm_config_for(self, user_id: str) -> LLMConfig | None: ...


class LLMError(A0Error):
    """An upstream failure, phrased for the user; ``code`` goes into the error event.
    ``retriable`` ones are retried within the call; a turn fails on any that is left."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retriable: bool = False,
        retry_after_s: float | None = None,
        finish_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable
        self.retry_after_s = retry_after_s
        self.finish_reason = finish_reason  # as the provider sent it, when it sent one


def settings_config(settings: Settings) -> LLMConfig:
    key = settings.llm.api_key.get_secret_value() if settings.llm.api_key else ""
    if not key and not settings.llm.base_url:
        key = settings.llm_sim.api_key.get_secret_value()
    return LLMConfig(base_url=settings.llm_base_url, api_key=key, model=settings.llm.model, source="settings")


# Enough keep-alive connections for every turn in flight; a stream's lines may be long
# (a tool call's arguments arrive in one chunk), hence the larger read buffer.
MAX_CONNECTIONS = 1024
READ_BUFFER = 1 << 20
# A non-stream answer (a whole chat.completion) larger than this is refused.
MAX_BODY_BYTES = 8 << 20
# Where calls go, by base URL and checked addresses: one entry per provider in use.
TARGETS_KEPT = 1024
# How a provider may say an answer ended, and what a0 makes of it: a cut tool call or
# a filtered answer is not passed on as complete.
LENGTH, CONTENT_FILTER = "length", "content_filter"

# Text as it arrives, with its character offset in the answer.
TextSink = Callable[[str, int], Awaitable[None]]


class _FirstToken:
    """Time to first token of one call (its first text, not its first chunk): a span
    event and a histogram, once."""

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
                call = _Call(on_text, _FirstToken(span), round_deadline)
                try:
                    first_content = min(round_deadline, loop.time() + worker.llm_first_content_s)
                    async with asyncio.timeout_at(first_content) as call.limit:
                        completion = await self._stream_once(
                            http, target, payload, config.api_key, call, fallback_call_id
                        )
                except _SinkFailed as exc:  # the worker's own failure, not the provider's
                    raise exc.original from None
                except TimeoutError:  # only the limits above: the client's own become LLMError
                    error = _timeout(call, worker.llm_first_content_s, worker.llm_round_s)
                except LLMError as exc:
                    error = exc
                else:
                    if span.is_recording():
                        span.set_attribute("a0.llm.tool_calls", len(completion.tool_calls))
                        span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason or ""])
                        telemetry.set_outcome(span, "tool_calls" if completion.tool_calls else "answer")
                    return completion
                if error.retriable and call.received:
                    error = LLMError(
                        "llm_interrupted",
                        "The connection to the LLM provider broke off in the middle of the answer, "
                        "so it is incomplete. Try again.",
                    )
                delay = (
                    error.retry_after_s
                    if error.retry_after_s is not None
                    else backoff(attempt, base=0.5, cap=30.0)
                )
                delay = min(delay, 30.0)
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
        call: _Call,
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
                    await call.take(accumulator, await _whole_body(response))
                    call.done = True
                elif response.content_type != "text/event-stream":
                    raise BadResponse(f"an answer of type {response.content_type or 'unknown'}")
                else:
                    await _read_events(response, call)
        except (LLMError, _SinkFailed):
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
        return _finished(call, accumulator.completion(fallback_call_id))

    async def aclose(self) -> None:
        await self._http.aclose()


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


class _SinkFailed(Exception):
    """``on_text`` failed (the worker's event log): raised as it was, never taken for
    a provider's fault."""

    def __init__(self, original: BaseException) -> None:
        self.original = original


class _Call:
    """One attempt of a call: what it received, and its time limits (the time to first
    content until content arrives, then the round's total)."""

    def __init__(self, on_text: TextSink, first_token: _FirstToken, round_deadline: float) -> None:
        self.on_text = on_text
        self.first_token = first_token
        self.round_deadline = round_deadline
        self.accumulator = StreamAccumulator()
        self.limit: asyncio.Timeout | None = None
        self.done = False  # [DONE], or a whole completion

    @property
    def received(self) -> bool:
        return self.accumulator.received

    async def take(self, accumulator: StreamAccumulator, chunk: Any) -> None:
        had_content = accumulator.received
        position = accumulator.length
        text = accumulator.feed(chunk)
        if accumulator.received and not had_content and self.limit is not None:
            self.limit.reschedule(self.round_deadline)  # comments never get here
        if text:
            if self.first_token.pending:
                self.first_token.seen()
            try:
                await self.on_text(text, position)
            except Exception as exc:
                raise _SinkFailed(exc) from exc


async def _read_events(response: aiohttp.ClientResponse, call: _Call) -> None:
    """The events of a stream, into ``call``; a last event without its blank line counts."""
    lines = LineReader()
    parser = SseParser()
    accumulator = call.accumulator
    async for data in response.content.iter_any():
        for line in lines.feed(data):
            event = parser.feed(line)
            if event is None or not event["data"]:
                continue
            if event["data"] == "[DONE]":
                call.done = True
                return
            for chunk in parse_data(event["data"]):
                await call.take(accumulator, chunk)
    last = lines.close()
    for line in ([last] if last is not None else []) + [""]:
        event = parser.feed(line)
        if event is not None and event["data"]:
            if event["data"] == "[DONE]":
                call.done = True
                return
            for chunk in parse_data(event["data"]):
                await call.take(accumulator, chunk)


async def _whole_body(response: aiohttp.ClientResponse) -> Any:
    """A non-stream answer's JSON, bounded in size."""
    body = bytearray()
    async for data in response.content.iter_any():
        body += data
        if len(body) > MAX_BODY_BYTES:
            raise BadResponse(f"an answer larger than {MAX_BODY_BYTES} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadResponse("an answer that is not JSON") from None


def _finished(call: _Call, completion: Completion) -> Completion:
    """The completion, if the provider said it is one: an answer cut without a word,
    cut in a tool call, or withheld by a filter ends the round with its own error."""
    finish = completion.finish_reason
    if finish is None and not call.done:
        raise LLMError(
            "llm_incomplete",
            "The LLM provider's answer stopped before its end. Try again.",
            retriable=not call.received,
        )
    if finish == CONTENT_FILTER:
        raise LLMError(
            "llm_content_filter",
            "The LLM provider's content filter stopped this answer.",
            finish_reason=finish,
        )
    if finish == LENGTH and completion.tool_calls:
        raise LLMError(
            "llm_truncated",
            "The LLM provider cut the answer off at its length limit in the middle of a tool call.",
            finish_reason=finish,
        )
    return completion


def _timeout(call: _Call, first_content_s: float, round_s: float) -> LLMError:
    if call.received:
        return LLMError("llm_timeout", f"The LLM provider did not finish its answer within {round_s:g} s.")
    return LLMError("llm_timeout", f"The LLM provider sent no answer within {first_content_s:g} s.")


def bad_response(reason: str) -> LLMError:
    """An answer a0 cannot read; the reason is a0's own words, never the provider's text."""
    return LLMError("llm_bad_response", f"The LLM provider sent an answer that cannot be read ({reason}).")


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
