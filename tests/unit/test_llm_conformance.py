"""The worker's upstream client against recorded provider streams, replayed by a local
server (tests/support/recorded_streams.py): for each, the exact text passed on, the
tool calls, the finish reason, or the error code. The same cases run through the whole
stack in tests/integration/test_llm_conformance.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.credentials import LLMConfig
from services.common.settings import Settings, load_settings
from services.common.tools import tool_catalog
from services.conversation_worker.llm import LLMClients
from services.conversation_worker.llm_errors import LLMError
from tests.support.recorded_streams import CASES, DROP, Case, Replay, serving

pytestmark = pytest.mark.unit


@pytest.fixture
def limits() -> Settings:
    settings = load_settings()
    settings.worker.llm_first_content_s = 1.0
    settings.worker.llm_round_s = 5.0
    return settings


@pytest.fixture
async def replay() -> AsyncIterator[tuple[Replay, str]]:
    server = Replay()
    async with serving(server.app) as base_url:
        yield server, base_url


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_recorded_stream(case: Case, replay: tuple[Replay, str], limits: Settings) -> None:
    server, base_url = replay
    clients = LLMClients(limits)
    pieces: list[tuple[int, str]] = []

    async def on_text(text: str, position: int) -> None:
        pieces.append((position, text))

    config = LLMConfig(base_url=base_url, api_key="sk-replay-0123456789", model=case.name, source="settings")
    outcome: Any
    try:
        outcome = await clients.stream_chat(
            config,
            [{"role": "user", "content": "compute 6*7"}],
            tools=[spec.openai_tool() for spec in tool_catalog()],
            on_text=on_text,
            fallback_call_id=lambda index: f"call_fallback_{index}",
        )
    except LLMError as error:
        outcome = error
    finally:
        await clients.aclose()
    shown = "".join(text for _, text in pieces)
    assert [position for position, _ in pieces] == [
        sum(len(text) for _, text in pieces[:i]) for i in range(len(pieces))
    ]
    attempts = case.attempts if case.attempts is not None else len(case.answers)
    assert server.calls[case.name] == attempts
    if case.error is not None:
        assert isinstance(outcome, LLMError), outcome
        assert (outcome.code, outcome.retriable) == (case.error, False)
        assert outcome.finish_reason == case.finish_reason
        if any(DROP in answer.body for answer in case.answers):
            # A cut connection can take the text in flight with it (the socket's end may
            # be read before the data that came with it), but never adds another answer.
            assert case.text.startswith(shown), (shown, case.text)
        else:
            assert shown == case.text
        return
    assert not isinstance(outcome, LLMError), (outcome.code, outcome.message)
    assert [
        (call["function"]["name"], call["function"]["arguments"]) for call in outcome.tool_calls
    ] == case.tools
    assert all(call["id"] for call in outcome.tool_calls)
    if case.tools:
        assert outcome.finish_reason == "tool_calls" and shown == outcome.text == ""
    else:
        assert (shown, outcome.text, outcome.finish_reason) == (case.text, case.text, case.finish_reason)
