"""Answers are rendered as markdown, safely: headings, lists, tables, links that open a
new tab with rel=noopener, code blocks with a language label and a copy button; a
streaming answer is redrawn without blinking; hostile markup in answers and tool results
is inert. The simulator says exactly what a test sends after "Reply verbatim:"."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import WAIT_MS, answers, expect_answer, send, sign_in

pytestmark = pytest.mark.e2e

MARKDOWN = """# Trip plan

Read [the guide](https://example.org/guide) first.

## Steps

- pack **light**
- check the `weather`
  1. rain
  2. sun

| day | city |
|-----|------|
| 1 | Kyoto |
| 2 | Nara |

```python
def greet(name):
    return f"hello {name}"
```
"""

# Each would run script if it reached the page as HTML; window.__pwned records it.
HOSTILE = """Hostile corner.

<img src="x" onerror="window.__pwned = 'img'">
<svg onload="window.__pwned = 'svg'"><circle r="4"/></svg>
<a href="javascript:window.__pwned = 'a'">html link</a>
[markdown link](javascript:window.__pwned='md')
<iframe src="javascript:window.__pwned='iframe'"></iframe>
<script>window.__pwned = 'script'</script>
<p style="position:fixed;inset:0" onclick="window.__pwned = 'click'">overlay</p>

```html
<script>window.__pwned = 'code'</script>
<b>not bold</b>
```
"""


def reply_verbatim(text: str) -> str:
    return f"Reply verbatim:\n{text}"


def assert_inert(page: Page) -> None:
    """No element of the transcript carries an event handler, script, frame, SVG or
    javascript: URL, and no injected code ran."""
    found = page.evaluate(
        """() => {
          const root = document.getElementById('transcript');
          const handlers = [...root.querySelectorAll('*')].flatMap(
            (node) => [...node.attributes].filter((a) => a.name.startsWith('on')).map((a) => node.tagName + '.' + a.name));
          const urls = [...root.querySelectorAll('[href],[src],[action],[formaction]')].filter(
            (node) => /^\\s*javascript:/i.test(node.getAttribute('href') || node.getAttribute('src') || ''));
          return {
            handlers,
            javascriptUrls: urls.length,
            scripts: root.querySelectorAll('script, iframe, svg, object, embed, style').length,
            styled: root.querySelectorAll('.markdown [style]').length,
            pwned: window.__pwned === undefined ? null : String(window.__pwned),
          };
        }"""
    )
    assert found == {"handlers": [], "javascriptUrls": 0, "scripts": 0, "styled": 0, "pwned": None}, found


def test_markdown_answer_is_rendered(page: Page, user_name: str, snapshot: Callable[[str], None]) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, reply_verbatim(MARKDOWN))
    answer = expect_answer(page, 1, "Trip plan")

    expect(answer.locator("h1")).to_have_text("Trip plan")
    expect(answer.locator("h2")).to_have_text("Steps")
    expect(answer.locator("ul > li")).to_have_count(2)
    expect(answer.locator("ul ol > li")).to_have_count(2)
    expect(answer.locator("strong")).to_have_text("light")
    expect(answer.locator("table th")).to_have_text(["day", "city"])
    expect(answer.locator("table tbody tr")).to_have_count(2)
    expect(answer.locator("table tbody tr").nth(0).locator("td")).to_have_text(["1", "Kyoto"])

    link = answer.get_by_role("link", name="the guide")
    expect(link).to_have_attribute("href", "https://example.org/guide")
    expect(link).to_have_attribute("target", "_blank")
    rel = (link.get_attribute("rel") or "").split()
    assert "noopener" in rel and "noreferrer" in rel, rel

    block = answer.get_by_test_id("code-block")
    expect(block).to_have_count(1)
    expect(block.get_by_test_id("code-language")).to_have_text("python")
    expect(block.locator("pre code")).to_contain_text('return f"hello {name}"')
    block.get_by_test_id("code-copy").click()
    expect(block.get_by_test_id("code-copy")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == 'def greet(name):\n    return f"hello {name}"'
    assert_inert(page)
    snapshot("rendered")


def test_streaming_markdown_never_blinks(page: Page, user_name: str) -> None:
    """While an answer streams, its rendered text only ever grows: no frame shows it
    emptied or shorter (a redraw replaces the content in one DOM operation)."""
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    page.evaluate(
        """() => {
          window.__lengths = [];
          new MutationObserver(() => {
            const answer = document.querySelector('[data-testid=assistant-message]');
            if (answer) window.__lengths.push(answer.textContent.length);
          }).observe(document.getElementById('transcript'), { childList: true, subtree: true, characterData: true });
        }"""
    )
    words = " ".join(f"**word{i}**" for i in range(1, 60))
    send(
        page,
        reply_verbatim(f"## Streaming\n\n- first item\n- second item {words}"),
    )
    expect(answers(page).first).to_have_attribute("data-state", "streaming", timeout=WAIT_MS)
    answer = expect_answer(page, 1, "word59")
    expect(answer.locator("strong")).to_have_count(59)
    lengths = page.evaluate("window.__lengths")
    drawn = lengths[next(i for i, n in enumerate(lengths) if n > 0) :]
    assert len(set(drawn)) >= 5, f"expected several redraws while streaming, saw {lengths}"
    shrank = [(a, b) for a, b in zip(drawn, drawn[1:], strict=False) if b < a]
    assert not shrank, f"the rendered answer shrank or blinked while streaming: {lengths}"


def test_hostile_markup_in_answers_is_inert(
    page: Page, user_name: str, snapshot: Callable[[str], None]
) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, reply_verbatim(HOSTILE))
    answer = expect_answer(page, 1, "Hostile corner.")
    # What is safe stays visible as text; what is not is gone.
    expect(answer).to_contain_text("html link")
    expect(answer).to_contain_text("markdown link")
    expect(answer).to_contain_text("overlay")
    for name in ("html link", "markdown link"):
        assert (
            answer.get_by_text(name).evaluate(
                "n => n.closest('a') ? n.closest('a').getAttribute('href') : null"
            )
            is None
        )
    # HTML in a code block is shown as text, never parsed.
    code = answer.get_by_test_id("code-block")
    expect(code.get_by_test_id("code-language")).to_have_text("html")
    expect(code.locator("pre code")).to_contain_text("<script>window.__pwned = 'code'</script>")
    expect(code.locator("b")).to_have_count(0)
    # The user's own message is plain text, never markup.
    expect(page.get_by_test_id("user-message").locator("img, svg, a")).to_have_count(0)
    answer.get_by_text("overlay").click()  # an onclick would fire here
    assert_inert(page)
    snapshot("inert")


def test_hostile_tool_output_is_inert(page: Page, user_name: str) -> None:
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    payload = "<img src=x onerror=\"window.__pwned='tool'\"><svg onload=\"window.__pwned='tool-svg'\"></svg>"
    send(page, f"run python: print({payload!r})")
    result = page.get_by_test_id("tool-result")
    expect(result).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    # The tool's output is text in the result block...
    expect(result.get_by_test_id("tool-output")).to_contain_text("<img src=x onerror=")
    expect(result.locator("img, svg")).to_have_count(0)
    # ...and the answer quoting it is sanitized markdown.
    expect_answer(page, 1, "Tool run_python returned")
    assert_inert(page)
