"""Accessibility: axe-core (pinned, see scripts/vendor-js.sh) finds no serious or critical
violation on the sign-in, chat and settings views; the app is usable by keyboard alone;
focus stays inside the Settings dialog while it is open.

The axe results of every view are written to ``test-artifacts/axe-report.json`` and a
one-line-per-view summary to ``test-artifacts/axe-summary.txt``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import WAIT_MS, expect_answer

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
BLOCKING = {"serious", "critical"}


def summarize(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [" ".join(map(str, n["target"])) for n in v["nodes"]][:10],
        }
        for v in violations
    ]


@pytest.fixture(scope="module")
def axe_report() -> Iterator[dict[str, Any]]:
    report: dict[str, Any] = {}
    yield report
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "axe-report.json").write_text(json.dumps(report, indent=2))
    lines = []
    for view, entry in report.items():
        counts = {impact: 0 for impact in ("critical", "serious", "moderate", "minor")}
        for violation in entry["violations"]:
            counts[violation["impact"] or "minor"] += 1
        lines.append(
            f"{view}: axe-core {entry['axe_version']}, {entry['rules_passed']} rules passed, "
            f"violations: {counts['critical']} critical, {counts['serious']} serious, "
            f"{counts['moderate']} moderate, {counts['minor']} minor"
            + "".join(f"\n  - {v['impact']}: {v['id']} ({v['help']})" for v in entry["violations"])
        )
    (ARTIFACTS / "axe-summary.txt").write_text("\n".join(lines) + "\n")


def check(page: Page, view: str, report: dict[str, Any]) -> None:
    result = page.evaluate(
        "tags => axe.run(document, { runOnly: { type: 'tag', values: tags } })"
        ".then(r => ({ version: r.testEngine.version, passes: r.passes.length, violations: r.violations }))",
        WCAG_TAGS,
    )
    violations = summarize(result["violations"])
    report[view] = {
        "axe_version": result["version"],
        "rules_passed": result["passes"],
        "violations": violations,
    }
    blocking = [v for v in violations if v["impact"] in BLOCKING]
    assert not blocking, f"{view}: {json.dumps(blocking, indent=2)}"


def tab_to(page: Page, testid: str, key: str = "Tab", limit: int = 40) -> None:
    """Press Tab (or Shift+Tab) until the element with ``testid`` has focus, as a keyboard
    user would."""
    for _ in range(limit):
        if page.evaluate("id => document.activeElement?.dataset?.testid === id", testid):
            return
        page.keyboard.press(key)
    raise AssertionError(f"{key} never reached {testid}")


def test_axe_finds_no_serious_violation_in_signin_chat_and_settings(
    axe_page: Page, user_name: str, axe_report: dict[str, Any], snapshot_dir: Callable[[str], None]
) -> None:
    page = axe_page
    page.goto("/")
    expect(page.get_by_test_id("signin-user")).to_be_focused(timeout=WAIT_MS)
    check(page, "sign-in", axe_report)
    snapshot_dir("axe-signin")

    page.get_by_test_id("signin-user").fill(user_name)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("app")).to_be_visible(timeout=WAIT_MS)
    # A chat with markdown, a code block, a tool call and its result on screen.
    box = page.get_by_test_id("composer-input")
    box.fill(
        "Reply verbatim:\n## Notes\n\n- one\n- [a link](https://example.org)\n\n```python\nprint(1)\n```"
    )
    box.press("Enter")
    expect_answer(page, 1, "Notes")
    box.fill("compute 6*7")
    box.press("Enter")
    expect_answer(page, 2, "42")
    check(page, "chat", axe_report)
    snapshot_dir("axe-chat")

    page.get_by_test_id("open-settings").click()
    expect(page.get_by_test_id("settings-dialog")).to_be_visible()
    expect(page.get_by_test_id("settings-key-masked")).not_to_have_text("loading…", timeout=WAIT_MS)
    check(page, "settings", axe_report)
    snapshot_dir("axe-settings")


@pytest.fixture
def snapshot_dir(axe_page: Page) -> Callable[[str], None]:
    def save(name: str) -> None:
        shots = ARTIFACTS / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        axe_page.screenshot(path=str(shots / f"{name}.png"))

    return save


def test_keyboard_alone_signs_in_chats_and_opens_a_conversation(page: Page, user_name: str) -> None:
    page.goto("/")
    expect(page.get_by_test_id("signin-user")).to_be_focused(timeout=WAIT_MS)
    page.keyboard.type(user_name)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("app")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_test_id("composer-input")).to_be_focused()
    page.keyboard.type("hello from the keyboard")
    page.keyboard.press("Enter")
    expect_answer(page, 1, "Echo: hello from the keyboard")

    # New chat, then back to the first conversation, with Tab and the arrow keys.
    tab_to(page, "new-chat", "Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("user-message")).to_have_count(0)
    page.keyboard.type("second by keyboard")
    page.keyboard.press("Enter")
    expect_answer(page, 1, "Echo: second by keyboard")
    tab_to(page, "conversation-search", "Shift+Tab")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(page.locator("[data-testid=conversation-item]:focus")).to_contain_text("hello from the keyboard")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("user-message")).to_have_text("hello from the keyboard", timeout=WAIT_MS)

    # Settings opens from the keyboard, Escape closes it and gives focus back.
    tab_to(page, "open-settings")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("settings-dialog")).to_be_visible()
    expect(page.get_by_test_id("settings-key-masked")).not_to_have_text("loading…", timeout=WAIT_MS)
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("settings-dialog")).to_be_hidden()
    expect(page.get_by_test_id("open-settings")).to_be_focused()


def test_focus_stays_inside_the_open_settings_dialog(page: Page, user_name: str) -> None:
    page.goto("/")
    page.get_by_test_id("signin-user").fill(user_name)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("app")).to_be_visible(timeout=WAIT_MS)
    page.get_by_test_id("open-settings").click()
    dialog = page.get_by_test_id("settings-dialog")
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("settings-key-masked")).not_to_have_text("loading…", timeout=WAIT_MS)

    inside = "() => document.getElementById('settings').contains(document.activeElement)"
    seen: set[str] = set()
    for _ in range(25):  # more presses than the dialog has controls: it must wrap around
        page.keyboard.press("Tab")
        assert page.evaluate(inside), page.evaluate("document.activeElement.outerHTML.slice(0, 120)")
        seen.add(page.evaluate("document.activeElement.dataset.testid || document.activeElement.id"))
    assert {
        "settings-close",
        "settings-base-url",
        "settings-api-key",
        "settings-test",
        "settings-save",
    } <= seen, seen
    for _ in range(25):
        page.keyboard.press("Shift+Tab")
        assert page.evaluate(inside)
