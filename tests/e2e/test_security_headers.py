"""Every response of the UI carries the browser's safety rules: a strict Content-Security-
Policy (scripts only from the gateway, no inline script, never framed), nosniff and a
referrer policy; ``HEAD`` answers like ``GET``. In the browser the policy holds: the page
runs with no violation, and script injected inline is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import WAIT_MS, sign_in

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

UI_PATHS = [
    "/",
    "/static/app.js",
    "/static/markdown.js",
    "/static/app.css",
    "/static/vendor/marked.esm.js",
    "/static/vendor/purify.es.js",
]


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            parsed[words[0]] = words[1:]
    return parsed


@pytest.mark.parametrize("path", UI_PATHS)
def test_ui_responses_carry_security_headers_and_head_answers_like_get(e2e_stack: Stack, path: str) -> None:
    with httpx.Client(base_url=e2e_stack.url, timeout=10) as client:
        got = client.get(path)
        head = client.head(path)
    assert got.status_code == 200, got.text
    assert head.status_code == 200, (path, head.status_code, head.text)
    assert head.content == b""
    for name in ("content-type", "content-length", "content-security-policy", "x-content-type-options"):
        assert head.headers.get(name) == got.headers.get(name), (path, name)
    if path.endswith(".js"):
        assert got.headers["content-type"].startswith("text/javascript")  # nosniff needs the right type

    policy = directives(got.headers["content-security-policy"])
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no CDN
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["default-src"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["style-src"]
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["x-frame-options"] == "DENY"
    assert got.headers["referrer-policy"] == "no-referrer"


RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective));
"""


def test_page_runs_under_the_policy_and_refuses_inline_script(
    page: Page, user_name: str, snapshot: Callable[[str], None]
) -> None:
    page.add_init_script(RECORD_VIOLATIONS)  # runs before the page's own scripts
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("composer-input")).to_be_focused(timeout=WAIT_MS)
    assert page.evaluate("window.__violations") == []

    # Script put into the page as inline code, or as an event handler, is refused.
    page.evaluate(
        """() => {
          const script = document.createElement('script');
          script.textContent = 'window.__inline = true';
          document.body.append(script);
          const img = document.createElement('img');
          img.setAttribute('onerror', 'window.__handler = true');
          img.setAttribute('src', '/nothing-here.png');
          document.body.append(img);
        }"""
    )
    page.wait_for_function("() => window.__violations.length >= 2", timeout=WAIT_MS)
    assert page.evaluate("[window.__inline, window.__handler]") == [None, None]
    assert set(page.evaluate("window.__violations")) <= {"script-src-elem", "script-src-attr", "script-src"}
    snapshot("signed-in")


def test_the_ui_cannot_be_framed(page: Page, e2e_stack: Stack) -> None:
    page.set_content(f'<iframe id="frame" src="{e2e_stack.url}/" width="400" height="300"></iframe>')
    handle = page.locator("#frame").element_handle(timeout=WAIT_MS)
    frame = handle.content_frame()
    assert frame is not None
    frame.wait_for_load_state("load", timeout=WAIT_MS)
    # frame-ancestors 'none': the browser shows its error page, never the gateway's.
    blocked = frame.url.startswith("chrome-error://")
    shown = None if blocked else frame.evaluate("() => document.querySelector('[data-testid=signin-screen]')")
    assert blocked or shown is None, frame.url
