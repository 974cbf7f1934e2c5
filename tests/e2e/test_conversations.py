"""Managing conversations in the sidebar: titled after the first message, newest first,
searched by title, renamed and deleted (the history is gone from PostgreSQL), all by
keyboard; and the API's answers for conversations that are unknown or someone else's."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
from playwright.sync_api import Page, expect

from services.common.auth import mint_token
from tests.support.browser import WAIT_MS, api_headers, current_conversation_id, expect_answer, send, sign_in

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def new_conversation(page: Page, message: str) -> str:
    page.get_by_test_id("new-chat").click()
    send(page, message)
    expect_answer(page, 1, "Echo:")
    return current_conversation_id(page)


def titles(page: Page) -> list[str]:
    return page.get_by_test_id("conversation-title-text").all_inner_texts()


def stored_rows(stack: Stack, conversation_id: str) -> dict[str, int]:
    with psycopg.connect(stack.settings.postgres_dsn, connect_timeout=5) as conn:
        counts = {}
        for table in ("conversations", "events", "messages", "turns"):
            column = "id" if table == "conversations" else "conversation_id"
            row = conn.execute(
                f"SELECT count(*) FROM {table} WHERE {column} = %s", (conversation_id,)
            ).fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


def test_titles_order_search_rename_and_delete_by_keyboard(
    page: Page, user_name: str, e2e_stack: Stack, snapshot: Callable[[str], None]
) -> None:
    sign_in(page, user_name)
    first = new_conversation(page, "## Plan a trip to Kyoto\nwith temples and gardens")
    second = new_conversation(page, "apple pie recipe")
    third = new_conversation(page, "apple crumble, quickly")

    # Titled from the first message (markdown marks dropped), newest first.
    expect(page.get_by_test_id("conversation-title-text")).to_have_text(
        ["apple crumble, quickly", "apple pie recipe", "Plan a trip to Kyoto"], timeout=WAIT_MS
    )
    expect(page.get_by_test_id("conversation-title")).to_have_text("apple crumble, quickly")

    # Search by title, on the gateway.
    search = page.get_by_test_id("conversation-search")
    search.fill("APPLE")
    expect(page.get_by_test_id("conversation-title-text")).to_have_text(
        ["apple crumble, quickly", "apple pie recipe"], timeout=WAIT_MS
    )
    search.fill("no such title")
    expect(page.get_by_test_id("conversation-row")).to_have_count(0, timeout=WAIT_MS)
    expect(page.get_by_test_id("conversation-empty")).to_have_text("No conversation title matches.")
    search.press("Escape")
    expect(page.get_by_test_id("conversation-row")).to_have_count(3, timeout=WAIT_MS)
    snapshot("list")

    # Keyboard: into the list, move down twice, open the oldest with Enter.
    search.press("ArrowDown")
    items = page.get_by_test_id("conversation-item")
    focused = page.locator("[data-testid=conversation-item]:focus")
    expect(focused).to_have_attribute("data-conversation-id", third)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(focused).to_have_attribute("data-conversation-id", first)
    page.keyboard.press("ArrowDown")  # stays on the last one
    expect(focused).to_have_attribute("data-conversation-id", first)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"#/c/{first}$"))
    expect(page.get_by_test_id("user-message")).to_have_text(
        "## Plan a trip to Kyoto\nwith temples and gardens", timeout=WAIT_MS
    )
    # Only one conversation holds the list's tab stop.
    assert [items.nth(i).get_attribute("tabindex") for i in range(3)].count("0") == 1

    # Rename with F2, typed, Enter: the list, the header and the API agree.
    items.filter(has_text="Plan a trip").focus()
    page.keyboard.press("F2")
    rename = page.get_by_test_id("conversation-rename-input")
    expect(rename).to_be_focused()
    expect(rename).to_have_value("Plan a trip to Kyoto")
    rename.fill("Kyoto, spring 2027")
    rename.press("Enter")
    renamed = page.get_by_test_id("conversation-title-text").filter(has_text="Kyoto, spring 2027")
    expect(renamed).to_have_count(1, timeout=WAIT_MS)
    expect(page.get_by_test_id("conversation-title")).to_have_text("Kyoto, spring 2027")
    headers = api_headers(e2e_stack.url, user_name)
    stored = httpx.get(f"{e2e_stack.url}/v1/conversations/{first}", headers=headers, timeout=10).json()
    assert stored["title"] == "Kyoto, spring 2027"
    # Escape gives up a rename.
    page.keyboard.press("F2")
    rename.fill("not this")
    rename.press("Escape")
    expect(renamed).to_have_count(1)
    expect(page.get_by_test_id("conversation-title-text").filter(has_text="not this")).to_have_count(0)

    # Delete with the Delete key and a confirmation; the history is gone from PostgreSQL.
    assert stored_rows(e2e_stack, second)["events"] > 0
    items.filter(has_text="apple pie recipe").focus()
    page.keyboard.press("Delete")
    confirm = page.get_by_test_id("confirm-delete")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("apple pie recipe")
    expect(page.get_by_test_id("confirm-delete-cancel")).to_be_focused()
    snapshot("confirm-delete")
    page.keyboard.press("Escape")  # first, change of mind: nothing is deleted
    expect(confirm).to_be_hidden()
    expect(page.get_by_test_id("conversation-row")).to_have_count(3)
    page.keyboard.press("Delete")
    page.get_by_test_id("confirm-delete-ok").click()
    expect(page.get_by_test_id("conversation-row")).to_have_count(2, timeout=WAIT_MS)
    # A rename is a change too: the renamed conversation moved to the top.
    expect(page.get_by_test_id("conversation-title-text")).to_have_text(
        ["Kyoto, spring 2027", "apple crumble, quickly"]
    )
    assert stored_rows(e2e_stack, second) == {"conversations": 0, "events": 0, "messages": 0, "turns": 0}
    gone = httpx.get(f"{e2e_stack.url}/v1/conversations/{second}", headers=headers, timeout=10)
    assert gone.status_code == 404

    # Deleting the open conversation leaves an empty new chat.
    page.get_by_test_id("conversation-item").filter(has_text="Kyoto").click()
    expect(page).to_have_url(re.compile(rf"#/c/{first}$"))
    page.get_by_test_id("conversation-row").filter(has_text="Kyoto").get_by_test_id(
        "conversation-delete"
    ).click()
    page.get_by_test_id("confirm-delete-ok").click()
    expect(page.get_by_test_id("conversation-row")).to_have_count(1, timeout=WAIT_MS)
    expect(page.get_by_test_id("conversation-title")).to_have_text("New chat")
    expect(page.get_by_test_id("user-message")).to_have_count(0)


def test_delete_and_rename_answers_for_unknown_and_foreign_conversations(
    e2e_stack: Stack, user_name: str
) -> None:
    url = e2e_stack.url
    owner = api_headers(url, user_name)
    other = api_headers(url, f"{user_name}-other")
    admin = {
        "Authorization": f"Bearer {mint_token(e2e_stack.settings, f'{user_name}-admin', ['user', 'admin'])}"
    }
    with httpx.Client(base_url=url, timeout=10) as client:
        created = client.post("/v1/conversations", json={}, headers=owner)
        assert created.status_code == 201, created.text
        conversation_id = created.json()["id"]

        unknown = client.delete("/v1/conversations/no-such-conversation", headers=owner)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "not_found"
        # Someone else's: a user cannot tell it from an unknown one (no probing of ids)...
        foreign = client.delete(f"/v1/conversations/{conversation_id}", headers=other)
        assert foreign.status_code == 404
        assert (
            client.patch(
                f"/v1/conversations/{conversation_id}", json={"title": "x"}, headers=other
            ).status_code
            == 404
        )
        # ...an admin, who may read it, is refused by the policy.
        refused = client.delete(f"/v1/conversations/{conversation_id}", headers=admin)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert "may read but not modify" in refused.json()["error"]["message"]
        assert client.get(f"/v1/conversations/{conversation_id}", headers=owner).status_code == 200

        assert client.delete(f"/v1/conversations/{conversation_id}", headers=owner).status_code == 204
        assert client.delete(f"/v1/conversations/{conversation_id}", headers=owner).status_code == 404
        assert client.delete(f"/v1/conversations/{conversation_id}").status_code == 401

        spec = client.get("/openapi.json").json()["paths"]["/v1/conversations/{conversation_id}"]["delete"]
        assert {"204", "401", "403", "404"} <= set(spec["responses"])
        listing = client.get("/openapi.json").json()["paths"]["/v1/conversations"]["get"]
        assert any(p["name"] == "q" for p in listing["parameters"])
