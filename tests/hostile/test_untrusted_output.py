"""Text from outside the stack on its way to a user: an answer or tool output carrying
terminal escape sequences must not reach the terminal of ``a0ctl chat`` as such, and tool
output with a NUL (which PostgreSQL cannot store) must still reach the turn."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from services.common.settings import Settings
from tests.support.cli import a0ctl
from tests.support.gateway import auth, create_conversation, send_and_collect

pytestmark = pytest.mark.hostile

# Clear the screen, move the cursor, write the clipboard (OSC 52), a hidden link (OSC 8),
# a one-character CSI (U+009B), a bell and a backspace.
ESCAPES = (
    "\x1b[2J\x1b[H"
    "\x1b]52;c;cHduZWQ=\x07"
    "\x1b]8;;https://evil.example/\x1b\\click here\x1b]8;;\x1b\\"
    "\x9b31m"
    "\x07\x08"
)
# Everything a terminal acts on: C0 controls but newline and tab, DEL, C1 controls.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def assert_no_control_characters(text: str) -> None:
    found = sorted({hex(ord(c)) for c in CONTROL.findall(text)})
    assert not found, f"control characters reached the terminal: {found}\n{text!r}"


async def test_chat_prints_no_escape_sequences_from_an_answer() -> None:
    result = await asyncio.to_thread(
        a0ctl, "chat", "--user", "mallory", "-m", f"reply verbatim:\nbefore {ESCAPES} after\tend"
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert_no_control_characters(result.stdout + result.stderr)
    # The text itself is still shown (a tab as the spaces rich expands it to).
    assert "before" in result.stdout and "click here" in result.stdout, result.stdout
    assert re.search(r"after[\t ]+end", result.stdout), result.stdout


async def test_chat_prints_no_escape_sequences_from_tool_output() -> None:
    code = f"print({ESCAPES!r}, 'tool-said-this')"
    result = await asyncio.to_thread(a0ctl, "chat", "--user", "mallory", "-m", f"run python: {code}")
    assert result.returncode == 0, result.stderr + result.stdout
    assert_no_control_characters(result.stdout + result.stderr)
    assert "tool-said-this" in result.stdout, result.stdout


async def test_tool_output_with_nul_is_delivered_with_the_nul_replaced(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    content = 'run python: print("before\\0after")'  # the NUL comes from the tool, not the user
    events = await send_and_collect(client, headers, conversation_id, content)
    assert events[-1]["type"] == "message.completed", events[-1]
    results = [e["payload"] for e in events if e["type"] == "tool.result"]
    assert len(results) == 1, events
    assert "error" not in results[0], results[0]
    assert results[0]["output"] == "before\ufffdafter\n", results[0]
    # The history the user reads back holds the same result.
    detail = (await client.get(f"/v1/conversations/{conversation_id}", headers=headers)).json()
    assert "before\ufffdafter" in str(detail), detail
