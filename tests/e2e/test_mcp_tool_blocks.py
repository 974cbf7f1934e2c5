"""An MCP server's tool in the chat UI: its progress shows in the call's block while it
runs, an image of its result renders inline, its text stays text, and a reload draws
both again from the history (the reference server server-everything, tests/support/mcp.yaml)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Stack
from tests.support.browser import WAIT_MS, expect_answer, send, sign_in
from tests.support.cli import a0ctl_json
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mcp_ready(e2e_stack: Stack) -> None:
    # Asked as an operator does (the browser's driver runs an event loop in this thread).
    def offered() -> bool:
        listing = a0ctl_json("tools", "list")
        return all(
            row["state"] == "ready" for row in listing["tools"] if row["source"] != "MCP server inward"
        )

    wait_until(offered, 60, "every MCP server's tools are offered", poll_s=1)


def test_progress_shows_in_the_tool_block_then_the_result(
    mcp_ready: None, page: Page, user_name: str, snapshot: Callable[[str], None]
) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, 'call everything__trigger-long-running-operation {"duration": 4, "steps": 4}')
    call = page.get_by_test_id("tool-call")
    expect(call).to_have_count(1, timeout=WAIT_MS)
    progress = call.get_by_test_id("tool-progress")
    expect(progress).to_be_visible(timeout=WAIT_MS)
    expect(progress).to_have_text(re.compile(r"^Progress \d+% \(\d/4\)"))
    expect(progress).to_have_attribute("role", "status")
    snapshot("progress")
    expect(progress).to_contain_text("100% (4/4)", timeout=WAIT_MS)
    result = page.get_by_test_id("tool-result")
    expect(result).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    expect(result.get_by_test_id("tool-output")).to_contain_text("Long running operation completed")
    expect_answer(page, 1, "Tool everything__trigger-long-running-operation returned")
    # Drawn again from the history: the call's last progress line and its result.
    page.reload()
    call = page.get_by_test_id("tool-call")
    expect(call).to_have_count(1, timeout=WAIT_MS)
    expect(call.get_by_test_id("tool-progress")).to_contain_text("100% (4/4)")
    expect(page.get_by_test_id("tool-result").get_by_test_id("tool-output")).to_contain_text(
        "Long running operation completed"
    )


def test_an_image_result_renders_inline(mcp_ready: None, page: Page, user_name: str) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "call everything__get-tiny-image")
    result = page.get_by_test_id("tool-result")
    expect(result).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    image = result.get_by_test_id("tool-image")
    expect(image).to_have_count(1)
    expect(image).to_have_attribute("src", re.compile(r"^data:image/png;base64,[A-Za-z0-9+/]+=*$"))
    # Decoded and laid out by the browser: a real image, not a broken one.
    page.wait_for_function(
        "node => node.complete && node.naturalWidth > 0", arg=image.element_handle(), timeout=WAIT_MS
    )
    expect(result.get_by_test_id("tool-output")).to_contain_text("[image image/png")
    # Drawn again from the history, the image with it.
    page.reload()
    image = page.get_by_test_id("tool-result").get_by_test_id("tool-image")
    expect(image).to_have_count(1, timeout=WAIT_MS)
    page.wait_for_function(
        "node => node.complete && node.naturalWidth > 0", arg=image.element_handle(), timeout=WAIT_MS
    )


def test_one_conversation_uses_two_servers_tools(
    mcp_ready: None, page: Page, user_name: str, snapshot: Callable[[str], None]
) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, 'call time__get_current_time {"timezone": "Asia/Tokyo"}')
    first = page.get_by_test_id("tool-result").first
    expect(first).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    expect(first.get_by_test_id("tool-output")).to_contain_text("Asia/Tokyo")
    expect_answer(page, 1, "Tool time__get_current_time returned")
    send(page, 'call everything__echo {"message": "from a second server"}')
    expect(page.get_by_test_id("tool-result")).to_have_count(2, timeout=WAIT_MS)
    second = page.get_by_test_id("tool-result").last
    expect(second).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    expect(second.get_by_test_id("tool-output")).to_contain_text("Echo: from a second server")
    expect_answer(page, 2, "Tool everything__echo returned")
    snapshot("two-servers")
