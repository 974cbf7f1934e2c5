"""The header's connection badge tells about the connection only: an application
``error`` event of a turn is drawn in the transcript and never shows as "Reconnecting…";
a stream that is really cut shows it, and it clears once the stream is back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import Page, expect

from a0ctl.runtime.local import LocalRuntime
from tests.support.browser import WAIT_MS, api_headers, expect_answer, send, sign_in
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from tests.e2e.conftest import LLMSim, Stack

pytestmark = pytest.mark.e2e

# A gateway that was stopped is back within the UI's reconnect back-off.
RESUME_MS = 60_000


def wait_ready(url: str, timeout_s: float = 60) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout_s, f"the gateway at {url} back", poll_s=0.2)


def test_application_error_event_is_not_a_connection_problem(
    page: Page,
    user_name: str,
    e2e_stack: Stack,
    second_llm_sim: LLMSim,
    forget_credential: None,
    snapshot: Callable[[str], None],
) -> None:
    # A provider that accepts the key but does not know the model: the next turn ends
    # with an `error` event (code llm_model) on the open stream.
    headers = api_headers(e2e_stack.url, user_name)
    stored = httpx.put(
        f"{e2e_stack.url}/v1/settings/credentials/openai",
        json={
            "base_url": second_llm_sim.base_url,
            "model": "no-such-model",
            "api_key": second_llm_sim.api_key,
        },
        headers=headers,
        timeout=30,
    )
    assert stored.status_code == 200, stored.text

    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "hello there")
    error = page.get_by_test_id("turn-error")
    expect(error).to_be_visible(timeout=WAIT_MS)
    expect(error).to_have_attribute("data-code", "llm_model")
    expect(error).to_contain_text("model")
    # The event came through the open stream: the badge stays hidden.
    badge = page.get_by_test_id("connection-status")
    expect(badge).to_be_hidden()
    snapshot("after-error-event")

    # The same stream carries the next turn: it was never broken.
    removed = httpx.delete(f"{e2e_stack.url}/v1/settings/credentials/openai", headers=headers, timeout=10)
    assert removed.status_code == 204, removed.text
    send(page, "hello again")
    expect_answer(page, 1, "Echo: hello again")
    expect(badge).to_be_hidden()
    assert page.evaluate("document.getElementById('connection-status').hidden") is True


def test_cut_stream_shows_reconnecting_then_clears_after_resume(
    page: Page, user_name: str, local_stack: LocalRuntime, snapshot: Callable[[str], None]
) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "before the cut")
    expect_answer(page, 1, "Echo: before the cut")
    badge = page.get_by_test_id("connection-status")
    expect(badge).to_be_hidden()

    # Cut the stream for real: stop the gateway process that serves it.
    assert local_stack.stop_service("gateway")
    try:
        expect(badge).to_be_visible(timeout=WAIT_MS)
        expect(badge).to_have_text("Reconnecting…")
        snapshot("reconnecting")
    finally:
        # Started again by supervisord as `a0ctl up` would (its wait for health runs
        # asyncio, which Playwright's loop in this thread rules out: poll here instead).
        local_stack.supervisor.start("gateway")
        wait_ready(local_stack.settings.gateway_url)

    expect(badge).to_be_hidden(timeout=RESUME_MS)
    # The resumed stream delivers the next answer, and nothing twice.
    send(page, "after the cut")
    expect_answer(page, 2, "Echo: after the cut")
    expect(page.get_by_test_id("assistant-message")).to_have_count(2)
    expect(badge).to_be_hidden()
