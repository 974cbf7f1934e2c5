"""Tool blocks open and close (by mouse and keyboard), show arguments and results
formatted, and fold a long output behind a button that unfolds it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import WAIT_MS, expect_answer, send, sign_in

pytestmark = pytest.mark.e2e


def is_open(block: object) -> bool:
    return bool(block.evaluate("node => node.open"))  # type: ignore[attr-defined]


def test_tool_call_collapses_and_shows_formatted_arguments(
    page: Page, user_name: str, snapshot: Callable[[str], None]
) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "compute 6*7")
    call = page.get_by_test_id("tool-call")
    expect(call).to_have_count(1, timeout=WAIT_MS)
    expect_answer(page, 1, "42")

    # Closed by default: one line names the call; the arguments are inside.
    toggle = call.get_by_test_id("tool-toggle")
    expect(toggle).to_contain_text("calculator(6*7)")
    arguments = call.get_by_test_id("tool-arguments")
    expect(arguments).to_be_hidden()
    toggle.click()
    expect(arguments).to_be_visible()
    assert json.loads(arguments.inner_text()) == {"expression": "6*7"}
    assert arguments.inner_text() == json.dumps({"expression": "6*7"}, indent=2)  # pretty-printed
    # By keyboard: the summary is a focusable control that Enter toggles.
    toggle.focus()
    page.keyboard.press("Enter")
    expect(arguments).to_be_hidden()
    page.keyboard.press("Enter")
    expect(arguments).to_be_visible()

    # The result is open, and closes the same way.
    result = page.get_by_test_id("tool-result")
    output = result.get_by_test_id("tool-output")
    expect(output).to_have_text("42")
    result.get_by_test_id("tool-toggle").click()
    expect(output).to_be_hidden()
    assert not is_open(result)
    snapshot("collapsed")


def test_long_tool_output_is_folded(page: Page, user_name: str, snapshot: Callable[[str], None]) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "run python: print('\\n'.join(f'line {i}' for i in range(1, 121)))")
    result = page.get_by_test_id("tool-result")
    expect(result).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    expect_answer(page, 1, "Tool run_python returned")
    output = result.get_by_test_id("tool-output")
    expect(output).to_have_attribute("data-folded", "true")
    expect(output).to_contain_text("line 12")
    expect(output).not_to_contain_text("line 13")
    expect(output).not_to_contain_text("line 120")
    unfold = result.get_by_test_id("tool-output-unfold")
    expect(unfold).to_have_text(re.compile(r"^Show all 12[01] lines \([\d,]+ characters\)$"))
    expect(unfold).to_have_attribute("aria-expanded", "false")
    snapshot("folded")

    unfold.focus()
    page.keyboard.press("Enter")
    expect(output).to_have_attribute("data-folded", "false")
    expect(output).to_contain_text("line 120")
    expect(unfold).to_have_attribute("aria-expanded", "true")
    unfold.click()
    expect(output).not_to_contain_text("line 120")
