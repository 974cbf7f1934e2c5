"""The worker's upstream client (aiohttp + SSE) against the simulator's OpenAI protocol,
served on a loopback port, and the coalescing of answer text into deltas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from aiohttp import web

from services.common.credentials import LLMConfig
from services.common.envelope import Envelope, EventType
from services.common.settings import Settings, load_settings
from services.common.tools import tool_catalog
from services.conversation_worker.deltas import DeltaStream
from services.conversation_worker.events import Draft
from services.conversation_worker.llm import LLMClients
from services.conversation_worker.llm_errors import LLMError, status_error
from services.conversation_worker.stream import StreamAccumulator
from services.llm_sim.main import create_app
from tests.support.recorded_streams import serving
from tests.support.waiting import eventually

pytestmark = pytest.mark.unit

KEY = "sk-sim-unit-key-0123456789"


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serves an ASGI app on a free loopback port; yields its OpenAI base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # raises why it could not start
        return bool(server.started)

    await eventually(started, 10, "the simulator serving", poll_s=0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task


def config(base_url: str, api_key: str = KEY, model: str = "a0-sim-1") -> Any:
    return LLMConfig(base_url=base_url, api_key=api_key, model=model, source="settings")


@pytest.fixture
def sim() -> Any:
    return create_app(KEY, latency_ms=0, tokens_per_s=0)


class Upstream:
    """The client under test and the URL of the simulator it talks to."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.clients = LLMClients(load_settings())


@pytest.fixture
async def llm(sim: Any) -> AsyncIterator[Upstream]:
    async with serve(sim) as base_url:
        upstream = Upstream(base_url)
        yield upstream
        await upstream.clients.aclose()


async def chat(llm: Upstream, content: str, *, api_key: str = KEY, model: str = "a0-sim-1") -> Any:
    pieces: list[tuple[int, str]] = []

    async def on_text(text: str, position: int) -> None:
        pieces.append((position, text))

    specs = [spec.openai_tool() for spec in tool_catalog()]
    completion = await llm.clients.stream_chat(
        config(llm.base_url, api_key, model),
        [{"role": "user", "content": content}],
        tools=specs,
        on_text=on_text,
        fallback_call_id=lambda index: f"fallback_{index}",
    )
    return completion, pieces


async def test_a_tool_call_is_assembled_from_its_chunks(llm: Upstream) -> None:
    completion, pieces = await chat(llm, "compute 6*7")
    assert pieces == [] and completion.text == ""
    [call] = completion.tool_calls
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "calculator"
    assert '"6*7"' in call["function"]["arguments"]


async def test_text_arrives_in_pieces_with_their_offsets(llm: Upstream) -> None:
    completion, pieces = await chat(llm, "long answer")
    assert len(pieces) > 100
    assert "".join(text for _, text in pieces) == completion.text
    offsets = [position for position, _ in pieces]
    assert offsets == [sum(len(t) for _, t in pieces[:i]) for i in range(len(pieces))]


async def test_a_wrong_key_is_an_auth_error_that_does_not_quote_it(llm: Upstream) -> None:
    with pytest.raises(LLMError) as info:
        await chat(llm, "hello", api_key="sk-wrong-key-999")
    assert info.value.code == "llm_auth" and not info.value.retriable
    assert "sk-wrong" not in info.value.message


async def test_an_unknown_model_says_to_check_the_model(llm: Upstream) -> None:
    with pytest.raises(LLMError) as info:
        await chat(llm, "hello", model="no-such-model")
    assert info.value.code == "llm_model" and "model" in info.value.message


async def test_a_server_error_is_retried_and_the_answer_arrives(sim: Any) -> None:
    calls = 0

    async def flaky(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            calls += 1
            if calls == 1:
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b"{}"})
                return
        await sim(scope, receive, send)

    async with serve(flaky) as base_url:
        llm = Upstream(base_url)
        try:
            completion, _ = await chat(llm, "hello there")
        finally:
            await llm.clients.aclose()
    assert calls == 2 and completion.text


def test_status_codes_map_like_the_openai_sdk() -> None:
    limited = status_error(429, "3")
    assert limited.code == "llm_rate_limited" and limited.retriable and limited.retry_after_s == 3.0
    assert status_error(500).retriable and status_error(502).code == "llm_unavailable"
    assert status_error(403).code == "llm_forbidden" and not status_error(403).retriable
    assert status_error(400).code == "llm_bad_request"


def test_accumulator_joins_tool_call_arguments_by_index() -> None:
    acc = StreamAccumulator()
    chunks: list[dict[str, Any]] = [
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "calc"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 1, "function": {"name": "time"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}}]},
        {"choices": []},
    ]
    for chunk in chunks:
        acc.feed(chunk)
    first, second = acc.completion(lambda index: f"gen_{index}").tool_calls
    assert first["id"] == "a" and first["function"] == {"name": "calc", "arguments": '{"x": 1}'}
    assert second["id"] == "gen_1" and second["function"] == {"name": "time", "arguments": "{}"}


# --- deltas -----------------------------------------------------------------------------


class Recorder:
    """Records the batches a DeltaStream emits, as the event log would store them."""

    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[list[Draft]] = []
        self.fail_first = fail_first
        self.failed = asyncio.Event()  # set when a batch was refused

    async def emit_batch(self, source: Envelope, drafts: Sequence[Draft]) -> None:
        await asyncio.sleep(0)  # a real sink awaits I/O: let other tasks run here
        if self.fail_first:
            self.fail_first -= 1
            self.failed.set()
            raise ConnectionError("database went away")
        self.batches.append(list(drafts))


ENVELOPE = Envelope(type=EventType.USER_MESSAGE, conversation_id="c", turn_id="t", user_id="u")


async def test_an_answer_that_ends_within_its_first_window_goes_out_whole_with_its_end() -> None:
    sink = Recorder()
    stream = DeltaStream(sink, ENVELOPE, 0, already_sent="", window_s=0.5)
    text = "".join(f"word{i} " for i in range(20))
    position = 0
    for token in text.split(" ")[:-1]:
        await stream.add(token + " ", position)
        position += len(token) + 1
    assert sink.batches == []  # nothing of it stored on its own
    tail = await stream.close()
    assert [(d.key, d.payload) for d in tail] == [("delta:t:0:0", {"text": text})]


async def test_text_waits_at_most_one_window_the_first_text_included() -> None:
    sink = Recorder()
    stream = DeltaStream(sink, ENVELOPE, 1, already_sent="", window_s=0.2)
    await stream.add("a", 0)
    await stream.add("b", 1)  # inside the first window: both wait for the timer
    assert sink.batches == []
    await eventually(lambda: len(sink.batches) == 1, 2, "the timed flush", poll_s=0.01)
    assert [d.payload["text"] for d in sink.batches[0]] == ["ab"]
    await asyncio.sleep(0.25)  # a window later: the next text goes out at once
    await stream.add("c", 2)
    await stream.add("d", 3)  # inside the new window: waits for the timer
    assert [[d.payload["text"] for d in b] for b in sink.batches] == [["ab"], ["c"]]
    await eventually(lambda: len(sink.batches) == 3, 2, "the second timed flush", poll_s=0.01)
    assert [d.payload["text"] for d in sink.batches[2]] == ["d"]
    assert await stream.close() == []


async def test_text_already_sent_is_skipped_by_offset() -> None:
    sink = Recorder()
    stream = DeltaStream(sink, ENVELOPE, 0, already_sent="Hello", window_s=0.05)
    await stream.add("Hel", 0)
    await stream.add("lo wo", 3)
    await stream.add("rld", 8)
    stream.check_answer("Hello world")
    drafts = [d for batch in sink.batches for d in batch] + await stream.close()
    assert "".join(d.payload["text"] for d in drafts) == " world"
    assert drafts[0].key == "delta:t:0:5"


async def test_a_redelivered_answer_that_differs_from_what_was_shown_fails_instead_of_splicing() -> None:
    # Shown before the worker restarted: "The answer is forty-". The provider's second
    # answer begins otherwise: nothing of it is added to the first.
    sink = Recorder()
    stream = DeltaStream(sink, ENVELOPE, 0, already_sent="The answer is forty-", window_s=0.05)
    with pytest.raises(LLMError) as failed:
        await stream.add("Sure! ", 0)
    assert failed.value.code == "llm_interrupted"
    assert await stream.close() == [] and sink.batches == []
    # A shorter answer that stops inside what was shown is no continuation either.
    shorter = DeltaStream(Recorder(), ENVELOPE, 0, already_sent="The answer is forty-", window_s=0.05)
    await shorter.add("The answer", 0)
    with pytest.raises(LLMError):
        shorter.check_answer("The answer")


async def test_a_failed_timed_flush_is_raised_to_the_turn_and_loses_no_text() -> None:
    sink = Recorder(fail_first=0)
    stream = DeltaStream(sink, ENVELOPE, 0, already_sent="", window_s=0.1)
    await stream.add("one ", 0)
    await eventually(lambda: len(sink.batches) == 1, 1, "the first timed flush", poll_s=0.005)
    sink.fail_first = 1
    await stream.add("two ", 4)  # inside the next window: flushed by the timer, which fails
    await asyncio.wait_for(sink.failed.wait(), 1)
    with pytest.raises(ConnectionError):
        await stream.add("three", 8)
    # The turn is retried from the table: nothing after "one " was recorded as sent.
    assert [d.payload["text"] for b in sink.batches for d in b] == ["one "]


# --- egress: no redirects, the checked addresses only -------------------------------------


class Listener:
    """A TCP port that counts the connections made to it and answers none."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _call(settings: Settings, config: LLMConfig) -> LLMError:
    clients = LLMClients(settings)

    async def on_text(text: str, position: int) -> None:
        pass

    try:
        with pytest.raises(LLMError) as info:
            await clients.stream_chat(
                config,
                [{"role": "user", "content": "hello"}],
                tools=None,
                on_text=on_text,
                fallback_call_id=lambda index: f"fallback_{index}",
            )
    finally:
        await clients.aclose()
    return info.value


async def test_a_redirect_is_not_followed_and_the_target_is_never_reached() -> None:
    listener = Listener()
    async with listener as target_port:
        target = f"http://127.0.0.1:{target_port}/v1/chat/completions"
        redirecting = web.Application()

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(target)

        redirecting.router.add_post("/v1/chat/completions", redirect)
        async with serving(redirecting) as base_url:
            error = await _call(load_settings(), config(base_url))
        assert error.code == "llm_forbidden" and not error.retriable
        assert "redirect (HTTP 307)" in error.message
        assert target not in error.message  # never echoes where it pointed
        assert listener.connections == 0


async def test_a_call_goes_to_the_checked_address_not_to_a_new_lookup() -> None:
    # The policy checked `localhost` with an address that is not this machine's (as if
    # it had resolved publicly then); `localhost` now resolves to the loopback listener.
    listener = Listener()
    async with listener as port:
        settings = load_settings()
        settings.worker.llm_first_content_s = 1.0
        settings.worker.llm_round_s = 2.0
        checked = LLMConfig(
            base_url=f"http://localhost:{port}/v1",
            api_key=KEY,
            model="a0-sim-1",
            source="credential",
            addresses=("192.0.2.10",),
        )
        error = await _call(settings, checked)
        assert error.code in ("llm_unavailable", "llm_timeout")
        assert listener.connections == 0


async def test_the_checked_address_is_used_with_the_original_name(sim: Any) -> None:
    async with serve(sim) as base_url:
        port = base_url.split(":")[2].split("/")[0]
        # `.invalid` never resolves: the call can only work on a checked address. The first
        # refuses the connection (nothing listens on 127.0.0.2), the next one answers.
        pinned = LLMConfig(
            base_url=f"http://provider.invalid:{port}/v1",
            api_key=KEY,
            model="a0-sim-1",
            source="credential",
            addresses=("127.0.0.2", "127.0.0.1"),
        )
        llm = Upstream(base_url)
        try:
            completion = await llm.clients.stream_chat(
                pinned,
                [{"role": "user", "content": "hello there"}],
                tools=None,
                on_text=_ignore,
                fallback_call_id=lambda index: f"fallback_{index}",
            )
        finally:
            await llm.clients.aclose()
    assert completion.text and completion.finish_reason == "stop"


async def _ignore(text: str, position: int) -> None:
    pass
