"""Settings: "Test connection" tries a key with the provider without storing it and lists
the provider's models to pick from; a refused key is explained without ever being shown
back; only Save stores the key."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import (
    WAIT_MS,
    api_headers,
    expect_answer,
    masked_pattern,
    open_settings,
    send,
    sign_in,
    try_connection,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import LLMSim, Stack

pytestmark = pytest.mark.e2e


def stored_credentials(stack: Stack, user: str) -> list[dict[str, str]]:
    answer = httpx.get(
        f"{stack.url}/v1/settings/credentials", headers=api_headers(stack.url, user), timeout=10
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["credentials"])


def test_connection_is_tested_before_saving_and_the_model_is_picked_from_the_list(
    page: Page,
    user_name: str,
    e2e_stack: Stack,
    second_llm_sim: LLMSim,
    forget_credential: None,
    snapshot: Callable[[str], None],
) -> None:
    sim = second_llm_sim
    sign_in(page, user_name)
    open_settings(page)
    model = page.get_by_test_id("settings-model")
    expect(model).to_be_disabled()  # nothing to pick before a test

    # A wrong key: refused, explained, not echoed, nothing stored.
    wrong = "sk-wrong-" + "y" * 24
    try_connection(page, sim.base_url, wrong)
    error = page.get_by_test_id("settings-error")
    expect(error).to_be_visible(timeout=WAIT_MS)
    expect(error).to_have_attribute("data-code", "credential_rejected")
    expect(error).to_contain_text("refused this API key")
    assert wrong not in page.content()
    assert wrong[3:-4] not in error.inner_text()
    expect(model).to_be_disabled()

    # The right key: connected, the provider's models fill the list; still nothing stored.
    page.get_by_test_id("settings-api-key").fill(sim.api_key)
    page.get_by_test_id("settings-test").click()
    status = page.get_by_test_id("settings-status")
    expect(status).to_contain_text("Connected. 1 model available", timeout=WAIT_MS)
    expect(error).to_be_hidden()
    expect(model).to_be_enabled()
    expect(model.locator("option")).to_have_text([sim.model])
    expect(model).to_have_value(sim.model)
    expect(model).to_be_focused()
    expect(page.get_by_test_id("settings-key-masked")).to_have_text("none")
    assert stored_credentials(e2e_stack, user_name) == []
    snapshot("tested")

    page.get_by_test_id("settings-save").click()
    expect(status).to_contain_text("Saved", timeout=WAIT_MS)
    expect(page.get_by_test_id("settings-key-masked")).to_have_text(masked_pattern(sim.api_key))
    [stored] = stored_credentials(e2e_stack, user_name)
    assert (stored["base_url"], stored["model"]) == (sim.base_url, sim.model)
    page.get_by_test_id("settings-close").click()
    page.get_by_test_id("new-chat").click()
    send(page, "hello picked model")
    expect_answer(page, 1, "Echo: hello picked model")


def test_test_endpoint_lists_models_and_never_echoes_the_key(
    e2e_stack: Stack, user_name: str, second_llm_sim: LLMSim
) -> None:
    sim = second_llm_sim
    headers = api_headers(e2e_stack.url, user_name)
    url = f"{e2e_stack.url}/v1/settings/credentials/openai/test"
    with httpx.Client(timeout=30) as client:
        ok = client.post(url, json={"base_url": sim.base_url, "api_key": sim.api_key}, headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"provider": "openai", "base_url": sim.base_url, "models": [sim.model]}

        wrong = "sk-secret-" + "z" * 30
        refused = client.post(url, json={"base_url": sim.base_url, "api_key": wrong}, headers=headers)
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "credential_rejected"
        nowhere = client.post(
            url, json={"base_url": "http://127.0.0.1:9/v1", "api_key": wrong}, headers=headers
        )
        assert nowhere.status_code == 400
        short = client.post(url, json={"base_url": sim.base_url, "api_key": "sk-1"}, headers=headers)
        assert short.status_code == 422
        for answer in (refused, nowhere, short):
            assert wrong not in answer.text and "z" * 30 not in answer.text and "sk-1" not in answer.text
        assert client.post(url, json={"base_url": sim.base_url, "api_key": sim.api_key}).status_code == 401
    assert stored_credentials(e2e_stack, user_name) == []
