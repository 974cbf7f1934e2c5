"""The chat UI in a real browser: sign-in, chat with streaming answers and tool calls,
cancelling, history after a reload, and the LLM credential flow in Settings (helpers in
tests/support/browser.py).

Every wait is a Playwright ``expect`` with a timeout; the only sleep is the 1.5 s check
that nothing is appended after a cancelled answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import (
    WAIT_MS,
    answers,
    assert_key_not_in_page,
    completed_answers,
    expect_answer,
    fill_credential,
    masked_pattern,
    open_settings,
    send,
    sign_in,
    try_connection,
)

if TYPE_CHECKING:  # the fixture's type only; conftest modules are not imported by tests
    from tests.e2e.conftest import LLMSim

pytestmark = pytest.mark.e2e

# --- tests -------------------------------------------------------------------------------------


@pytest.mark.milestone("M3")
def test_settings_key_is_masked_and_used_without_restart(
    page: Page,
    user_name: str,
    second_llm_sim: LLMSim,
    forget_credential: None,
    credential_uses: Callable[[str], int],
    snapshot: Callable[[str], None],
) -> None:
    sim = second_llm_sim
    sign_in(page, user_name)
    open_settings(page)
    expect(page.get_by_test_id("settings-key-masked")).to_have_text("none")

    fill_credential(page, sim.base_url, sim.model, sim.api_key)
    expect(page.get_by_test_id("settings-status")).to_contain_text("Saved", timeout=WAIT_MS)
    expect(page.get_by_test_id("settings-error")).to_be_hidden()
    expect(page.get_by_test_id("settings-key-masked")).to_have_text(masked_pattern(sim.api_key))

    page.reload()
    expect(page.get_by_test_id("app")).to_be_visible(timeout=WAIT_MS)
    open_settings(page)
    masked = page.get_by_test_id("settings-key-masked")
    expect(masked).to_have_text(masked_pattern(sim.api_key), timeout=WAIT_MS)
    expect(page.get_by_test_id("settings-base-url")).to_have_value(sim.base_url)
    expect(page.get_by_test_id("settings-model")).to_have_value(sim.model)
    assert_key_not_in_page(page, sim.api_key)
    snapshot("settings-after-reload")
    page.get_by_test_id("settings-close").click()
    expect(page.get_by_test_id("settings-dialog")).to_be_hidden()

    # The second simulator accepts only this key: an answer proves the worker uses it,
    # with no restart of anything.
    assert credential_uses(user_name) == 0
    page.get_by_test_id("new-chat").click()
    send(page, "hello")
    expect_answer(page, 1, "Echo: hello")
    expect(page.get_by_test_id("turn-error")).to_have_count(0)
    # ...and the answer came through the stored credential, not the stack's default.
    assert credential_uses(user_name) >= 1


def test_chat_happy_path(page: Page, user_name: str) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "hello there")
    expect_answer(page, 1, "Echo: hello there")
    expect(page.get_by_test_id("cancel-button")).to_be_hidden()
    # The conversation is in the URL and in the sidebar.
    expect(page).to_have_url(re.compile(r"#/c/[^/]+$"))
    item = page.locator("[data-testid=conversation-item][aria-current=true]")
    expect(item).to_contain_text("hello there", timeout=WAIT_MS)


def test_tool_call_and_result_are_shown(page: Page, user_name: str) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "compute 6*7")
    call = page.get_by_test_id("tool-call")
    expect(call).to_have_count(1, timeout=WAIT_MS)
    expect(call).to_have_attribute("data-tool-name", "calculator")
    expect(call).to_contain_text("calculator(6*7)")
    result = page.get_by_test_id("tool-result")
    expect(result).to_contain_text("42", timeout=WAIT_MS)
    expect(result).to_have_attribute("data-status", "ok")
    answer = expect_answer(page, 1, "42")
    # Call, then result, then the answer, in that order within the turn.
    order = page.locator(
        "[data-testid=turn] >> [data-testid=tool-call], [data-testid=tool-result], [data-testid=assistant-message]"
    )
    expect(order).to_have_count(3)
    assert [order.nth(i).get_attribute("data-testid") for i in range(3)] == [
        "tool-call",
        "tool-result",
        "assistant-message",
    ]
    expect(answer).not_to_contain_text("calculator(")


def test_multi_turn_memory(page: Page, user_name: str) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "remember banana")
    expect_answer(page, 1, "banana")
    send(page, "what did I ask you to remember?")
    expect_answer(page, 2, "banana")
    expect(page.get_by_test_id("user-message")).to_have_count(2)


def test_cancel_mid_stream(page: Page, user_name: str) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "long answer please")
    answer = answers(page).last
    expect(answer).to_contain_text("word3", timeout=WAIT_MS)
    expect(answer).to_have_attribute("data-state", "streaming")
    cancel = page.get_by_test_id("cancel-button")
    expect(cancel).to_be_visible()
    cancel.click()

    expect(page.get_by_test_id("cancelled-marker")).to_be_visible(timeout=WAIT_MS)
    expect(answer).to_have_attribute("data-state", "cancelled")
    expect(cancel).to_be_hidden()
    text = answer.inner_text()
    page.wait_for_timeout(1500)  # the one sleep: nothing may be appended after the marker
    assert answer.inner_text() == text
    assert "word200" not in text
    expect(page.get_by_test_id("cancelled-marker")).to_have_count(1)
    expect(completed_answers(page)).to_have_count(0)


def test_wrong_key_is_refused_then_right_key_works(
    page: Page,
    user_name: str,
    second_llm_sim: LLMSim,
    forget_credential: None,
    snapshot: Callable[[str], None],
) -> None:
    sim = second_llm_sim
    sign_in(page, user_name)
    open_settings(page)
    wrong = "sk-wrong-" + "x" * 24
    try_connection(page, sim.base_url, wrong)
    error = page.get_by_test_id("settings-error")
    expect(error).to_be_visible(timeout=WAIT_MS)
    expect(error).to_have_attribute("data-code", "credential_rejected")
    expect(error).not_to_have_text("")
    expect(page.get_by_test_id("settings-status")).to_be_hidden()
    expect(page.get_by_test_id("settings-key-masked")).to_have_text("none")
    assert wrong not in page.locator("body").inner_text()
    snapshot("refused")

    fill_credential(page, sim.base_url, sim.model, sim.api_key)
    expect(page.get_by_test_id("settings-status")).to_contain_text("Saved", timeout=WAIT_MS)
    expect(error).to_be_hidden()
    expect(page.get_by_test_id("settings-key-masked")).to_have_text(masked_pattern(sim.api_key))
    page.get_by_test_id("settings-close").click()

    page.get_by_test_id("new-chat").click()
    send(page, "hello there")
    expect_answer(page, 1, "Echo: hello there")
    expect(page.get_by_test_id("turn-error")).to_have_count(0)

    # "Remove" deletes the stored key; the stack's default provider answers again.
    open_settings(page)
    expect(page.get_by_test_id("settings-key-masked")).to_have_text(masked_pattern(sim.api_key))
    page.get_by_test_id("settings-remove").click()
    expect(page.get_by_test_id("settings-status")).to_contain_text("Removed", timeout=WAIT_MS)
    expect(page.get_by_test_id("settings-key-masked")).to_have_text("none")
    expect(page.get_by_test_id("settings-remove")).to_be_disabled()


def test_reload_keeps_the_conversation(page: Page, user_name: str) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "hello before reload")
    expect_answer(page, 1, "Echo: hello before reload")
    url = page.url
    assert re.search(r"#/c/[^/]+$", url), url

    page.reload()
    expect(page.get_by_test_id("app")).to_be_visible(timeout=WAIT_MS)
    assert page.url == url
    expect(page.get_by_test_id("user-name")).to_have_text(user_name)  # still signed in
    expect(page.get_by_test_id("user-message")).to_have_count(1, timeout=WAIT_MS)
    expect(page.get_by_test_id("user-message")).to_have_text("hello before reload")
    expect(completed_answers(page)).to_have_count(1, timeout=WAIT_MS)
    expect(answers(page)).to_have_count(1)
    expect(answers(page)).to_contain_text("Echo: hello before reload")

    # The live stream re-opened after the history: a new turn arrives through it, and
    # nothing of the old one is replayed (the new events come after any replay would).
    send(page, "hello after reload")
    expect_answer(page, 2, "Echo: hello after reload")
    expect(answers(page)).to_have_count(2)
    expect(page.get_by_test_id("user-message")).to_have_count(2)
    expect(answers(page).first).to_have_text(re.compile(r"Echo: hello before reload$"))


def test_phone_width_sidebar_collapses(page: Page, user_name: str) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, user_name)
    sidebar = page.get_by_test_id("sidebar")
    toggle = page.get_by_test_id("sidebar-toggle")
    expect(sidebar).to_be_hidden()
    expect(toggle).to_be_visible()
    send(page, "hello there")
    expect_answer(page, 1, "Echo: hello there")

    toggle.click()
    expect(sidebar).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    page.get_by_test_id("new-chat").click()
    expect(sidebar).to_be_hidden()
    expect(page.get_by_test_id("user-message")).to_have_count(0)

    toggle.click()
    page.get_by_test_id("conversation-item").first.click()
    expect(sidebar).to_be_hidden()
    expect_answer(page, 1, "Echo: hello there")
