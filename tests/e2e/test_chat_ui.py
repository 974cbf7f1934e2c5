"""The chat UI in a real browser: sign-in, chat with streaming answers and tool calls,
cancelling, history after a reload, and the LLM credential flow in Settings.

Every wait is a Playwright ``expect`` with a timeout; the only sleep is the 1.5 s check
that nothing is appended after a cancelled answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Locator, Page, expect

if TYPE_CHECKING:  # the fixture's type only; conftest modules are not imported by tests
    from tests.e2e.conftest import LLMSim

pytestmark = pytest.mark.e2e

WAIT_MS = 20_000


# --- helpers -----------------------------------------------------------------------------------


def sign_in(page: Page, user: str) -> None:
    page.goto("/")
    page.get_by_test_id("signin-user").fill(user)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("app")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_test_id("user-name")).to_have_text(user)


def send(page: Page, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")
    # The message shows at once, before any answer.
    expect(page.get_by_test_id("user-message").last).to_have_text(text, timeout=WAIT_MS)


def answers(page: Page) -> Locator:
    return page.get_by_test_id("assistant-message")


def completed_answers(page: Page) -> Locator:
    return page.locator("[data-testid=assistant-message][data-state=complete]")


def expect_answer(page: Page, count: int, text: str) -> Locator:
    """Wait until ``count`` answers are complete; the last one must contain ``text``."""
    expect(completed_answers(page)).to_have_count(count, timeout=WAIT_MS)
    last = answers(page).last
    expect(last).to_contain_text(text, timeout=WAIT_MS)
    return last


def open_settings(page: Page) -> None:
    page.get_by_test_id("open-settings").click()
    expect(page.get_by_test_id("settings-dialog")).to_be_visible()
    # The stored credential (or "none") has loaded.
    expect(page.get_by_test_id("settings-key-masked")).not_to_have_text("loading…", timeout=WAIT_MS)


def fill_credential(page: Page, base_url: str, model: str, api_key: str) -> None:
    page.get_by_test_id("settings-base-url").fill(base_url)
    page.get_by_test_id("settings-model").fill(model)
    page.get_by_test_id("settings-api-key").fill(api_key)
    page.get_by_test_id("settings-save").click()


def masked_pattern(api_key: str) -> re.Pattern[str]:
    """The key as the API shows it: first 3 and last 4 characters, the middle hidden."""
    return re.compile(rf"^{re.escape(api_key[:3])}.+{re.escape(api_key[-4:])}$")


def assert_key_not_in_page(page: Page, api_key: str) -> None:
    assert api_key not in page.content()
    assert api_key not in page.locator("body").inner_text()
    assert api_key[3:-4] not in page.get_by_test_id("settings-key-masked").inner_text()
    assert page.get_by_test_id("settings-api-key").input_value() == ""
    stored = page.evaluate("JSON.stringify([sessionStorage, localStorage])")
    assert api_key not in stored


# --- tests -------------------------------------------------------------------------------------


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
    fill_credential(page, sim.base_url, sim.model, wrong)
    error = page.get_by_test_id("settings-error")
    expect(error).to_be_visible(timeout=WAIT_MS)
    expect(error).to_have_attribute("data-code", "credential_rejected")
    expect(error).not_to_have_text("")
    expect(page.get_by_test_id("settings-status")).to_be_hidden()
    expect(page.get_by_test_id("settings-key-masked")).to_have_text("none")
    assert wrong not in page.locator("body").inner_text()
    snapshot("refused")

    page.get_by_test_id("settings-api-key").fill(sim.api_key)
    page.get_by_test_id("settings-save").click()
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
