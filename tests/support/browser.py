"""What the browser tests do as a person would: sign in, send, wait for answers, fill in
the Settings dialog. Every wait is a Playwright ``expect`` with a timeout."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Locator, Page, expect

WAIT_MS = 20_000


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


def try_connection(page: Page, base_url: str, api_key: str) -> None:
    """Enter a base URL and key and press "Test connection" (nothing is stored)."""
    page.get_by_test_id("settings-base-url").fill(base_url)
    page.get_by_test_id("settings-api-key").fill(api_key)
    page.get_by_test_id("settings-test").click()


def fill_credential(page: Page, base_url: str, model: str, api_key: str) -> None:
    """Test the connection, pick ``model`` from the provider's list, save."""
    try_connection(page, base_url, api_key)
    expect(page.get_by_test_id("settings-status")).to_contain_text("Connected", timeout=WAIT_MS)
    page.get_by_test_id("settings-model").select_option(model)
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


def api_headers(base_url: str, user: str) -> dict[str, str]:
    """A bearer header for ``user``, from the development sign-in as the page gets it."""
    login = httpx.post(f"{base_url}/v1/auth/dev-login", json={"user": user}, timeout=10)
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['token']}"}


def current_conversation_id(page: Page) -> str:
    match = re.search(r"#/c/([^/?#]+)$", page.url)
    assert match, page.url
    return match.group(1)
