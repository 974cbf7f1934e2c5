"""One provider a0 did not write: fakellm (from PyPI), an OpenAI-compatible server,
started as a user's upstream. Through the whole stack, a tool turn and a text turn
complete with what it answered."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.settings import Settings
from tests.conftest import PROVIDER_PORT
from tests.support.cli import a0ctl
from tests.support.gateway import answer_text, auth, create_conversation, send_and_collect
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

RULES = """\
version: 1
rules:
  - name: answer_after_the_tool
    when:
      tool_result_contains: "42"
    respond:
      content: "6*7 is 42."
  - name: ask_for_the_calculator
    when:
      messages_contain: "compute"
    respond:
      tool_calls:
        - name: calculator
          arguments: {expression: "6*7"}
  - name: small_talk
    respond:
      content: "Hello from an independent server."
"""


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[str]:
    rules = tmp_path / "fakellm.yaml"
    rules.write_text(RULES)
    log = tmp_path / "fakellm.log"
    fakellm = Path(sys.executable).with_name("fakellm")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(fakellm),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(PROVIDER_PORT),
                "--config",
                str(rules),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{PROVIDER_PORT}"

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"fakellm exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(base + "/_fakellm/stats", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(answering, 30, f"fakellm answering on {base} (log: {log})")
        yield base + "/v1"
    finally:
        process.terminate()
        process.wait(20)


async def test_an_independent_openai_compatible_server_answers_a_tool_turn_and_a_text_turn(
    settings: Settings, client: httpx.AsyncClient, provider: str
) -> None:
    # fakellm serves no /models, so the key is stored without that check.
    stored = a0ctl(
        "creds",
        "set",
        "openai",
        "--user",
        "fay",
        "--base-url",
        provider,
        "--model",
        "gpt-4o-mini",
        "--no-verify",
        input_text="sk-fakellm-0123456789\n",
    )
    assert stored.returncode == 0, stored.stdout + stored.stderr
    headers = auth(settings, "fay")

    tool_turn = await send_and_collect(
        client, headers, await create_conversation(client, headers), "compute 6*7"
    )
    [call] = [e["payload"] for e in tool_turn if e["type"] == "tool.call"]
    assert call["name"] == "calculator" and call["arguments"] == '{"expression": "6*7"}'
    [result] = [e["payload"] for e in tool_turn if e["type"] == "tool.result"]
    assert "42" in str(result["output"])
    assert tool_turn[-1]["type"] == "message.completed", tool_turn[-1]
    assert answer_text(tool_turn) == tool_turn[-1]["payload"]["content"] == "6*7 is 42."

    text_turn = await send_and_collect(client, headers, await create_conversation(client, headers), "hello")
    assert text_turn[-1]["type"] == "message.completed", text_turn[-1]
    assert (
        answer_text(text_turn) == text_turn[-1]["payload"]["content"] == "Hello from an independent server."
    )
    assert [e["type"] for e in text_turn if e["type"].startswith("tool.")] == []
