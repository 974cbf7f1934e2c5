"""The LLM simulator, driven through the real ``openai`` SDK over an in-process ASGI transport."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, MutableMapping
from types import SimpleNamespace
from typing import Any, cast

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from pydantic import SecretStr

from services.common.settings import LLMSimSettings, StackSettings
from services.llm_sim import replies
from services.llm_sim.main import create_app, serve

pytestmark = pytest.mark.unit

KEY = "sk-sim-test-key-0123456789"
MODEL = "a0-sim-1"
BASE_URL = "http://sim/v1"


def tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": name, "parameters": {"type": "object", "properties": {}}},
    }


TOOLS: Any = [tool("calculator"), tool("current_time"), tool("run_python")]


def sdk(app: Any, api_key: str = KEY) -> AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
    # openai accepts a plain httpx client at runtime; its stubs name only its own httpx fork.
    return AsyncOpenAI(api_key=api_key, base_url=BASE_URL, http_client=cast(Any, http), max_retries=0)


@pytest.fixture
def app() -> Any:
    # No latency, no token pacing: these tests are about the protocol, not the timing.
    return create_app(KEY, model=MODEL, latency_ms=0, tokens_per_s=0)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[AsyncOpenAI]:
    async with sdk(app) as c:
        yield c


async def ask(client: AsyncOpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return await client.chat.completions.create(model=MODEL, messages=cast(Any, messages), **kwargs)


async def test_models_list(client: AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert models == [MODEL]
    assert (await client.models.retrieve(MODEL)).id == MODEL


async def test_wrong_key_is_rejected_without_echo(app: Any) -> None:
    wrong = "sk-wrong-key-do-not-echo-42"
    async with sdk(app, api_key=wrong) as c:
        with pytest.raises(openai.AuthenticationError) as info:
            await ask(c, [{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
    assert wrong not in info.value.response.text
    assert info.value.response.json() == {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


async def test_missing_key_unknown_model_and_bad_body(app: Any) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/v1/models")).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        bad = await http.post("/v1/chat/completions", content=b"{not json", headers=auth)
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        no_role = await http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{}]}, headers=auth
        )
        assert no_role.status_code == 400
    async with sdk(app) as c:
        with pytest.raises(openai.NotFoundError) as info:
            await c.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"


async def test_non_stream_echo(client: AsyncOpenAI) -> None:
    completion = await ask(client, [{"role": "user", "content": "hello there"}])
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "I am the a0 simulator. Echo: hello there"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == 10


async def test_stream_deltas_carry_only_new_text(client: AsyncOpenAI) -> None:
    stream = await ask(
        client,
        [{"role": "user", "content": "give me a long answer"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(pieces)
    assert text.startswith("Here is a long answer: word1 word2 ") and text.endswith("word200.")
    # One word per delta: no delta repeats text that was already sent.
    assert pieces == replies.split_tokens(text)
    assert all(len(piece.split()) == 1 for piece in pieces)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())


async def test_stream_calculator_tool_call(client: AsyncOpenAI) -> None:
    stream = await ask(client, [{"role": "user", "content": "compute 6*7"}], tools=TOOLS, stream=True)
    calls: dict[int, dict[str, str]] = {}
    argument_chunks = 0
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        assert not choice.delta.content
        for tc in choice.delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.id or ""
            if tc.function:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
                argument_chunks += bool(tc.function.arguments)
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "calculator"
    assert calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"expression": "6*7"}
    assert argument_chunks > 1  # the arguments really were split across chunks


async def test_tool_call_id_is_deterministic(client: AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "calculate (2+3)*4"}]
    first, second = [await ask(client, messages, tools=TOOLS) for _ in range(2)]
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.content is None
    assert json.loads(call.function.arguments) == {"expression": "(2+3)*4"}
    assert call.id == second.choices[0].message.tool_calls[0].id
    other = await ask(client, [{"role": "user", "content": "calculate 1+1"}], tools=TOOLS)
    assert other.choices[0].message.tool_calls[0].id != call.id


def tool_round(name: str, arguments: str, output: str) -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return [
        {"role": "user", "content": "please help"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": output},
    ]


@pytest.mark.parametrize(
    ("name", "output", "expected"),
    [
        ("calculator", "42", "The result is 42."),
        ("calculator", '{"result": 42}', "The result is 42."),
        ("calculator", '{"error": "division by zero"}', "The tool failed: division by zero."),
        ("current_time", "2025-01-01T00:00:00Z", "Tool current_time returned: 2025-01-01T00:00:00Z"),
    ],
)
async def test_answer_after_tool_message(client: AsyncOpenAI, name: str, output: str, expected: str) -> None:
    completion = await ask(client, tool_round(name, "{}", output), tools=TOOLS)
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"


async def test_multi_turn_remember(client: AsyncOpenAI) -> None:
    history: list[dict[str, Any]] = [{"role": "system", "content": "You are helpful."}]
    for said, expected in [
        ("what did I ask you to remember?", "You did not ask me to remember anything."),
        ("Please remember pineapple.", "I will remember pineapple."),
        ("tell me something", "I am the a0 simulator. Echo: tell me something"),
        ("What did I ask you to remember?", "You asked me to remember pineapple."),
    ]:
        history.append({"role": "user", "content": said})
        answer = (await ask(client, history)).choices[0].message.content
        assert answer == expected
        history.append({"role": "assistant", "content": answer})


def test_reply_rules() -> None:
    def first_call(text: str, tools: list[str]) -> tuple[str, Any]:
        reply = replies.decide([{"role": "user", "content": text}], tools)
        assert reply.finish_reason == "tool_calls"
        return reply.tool_calls[0].name, json.loads(reply.tool_calls[0].arguments)

    all_tools = ["calculator", "current_time", "run_python"]
    assert first_call("What is 12/4?", all_tools) == ("calculator", {"expression": "12/4"})
    assert first_call("what time is it?", all_tools) == ("current_time", {})
    assert first_call("run python: print(1 + 1)", all_tools) == ("run_python", {"code": "print(1 + 1)"})
    assert first_call("please use the shell", []) == ("shell", {"command": "ls"})
    # Without the tool offered, or for a question that is not arithmetic, the model just talks.
    assert replies.decide([{"role": "user", "content": "compute 6*7"}], []).content is not None
    assert replies.decide([{"role": "user", "content": "what is love?"}], all_tools).content is not None
    text = " lead  two\nlines  "
    assert "".join(replies.split_tokens(text)) == text


def test_reply_verbatim_says_exactly_the_given_text() -> None:
    said = "# Title\n\n- compute 6*7\n<img src=x onerror=alert(1)>\n"
    reply = replies.decide([{"role": "user", "content": f"Reply verbatim:\n{said}"}], ["calculator"])
    assert reply.content == said
    assert reply.finish_reason == "stop"
    # Only at the start and followed by a new line: elsewhere it is an ordinary message.
    assert replies.decide([{"role": "user", "content": "say reply verbatim: x"}], []).content == (
        f"{replies.ECHO_PREFIX} Echo: say reply verbatim: x"
    )


async def test_latency_before_first_token() -> None:
    app = create_app(KEY, model=MODEL, latency_ms=60, tokens_per_s=0)
    async with sdk(app) as c:
        started = time.monotonic()
        await ask(c, [{"role": "user", "content": "hi"}])
        assert time.monotonic() - started >= 0.06


async def test_stream_stops_when_client_disconnects() -> None:
    """A client going away mid-stream cancels generation: no [DONE], far fewer than 200 words."""
    app = create_app(KEY, model=MODEL, latency_ms=0, tokens_per_s=1000)
    body = json.dumps(
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "long answer"}]}
    ).encode()
    gone = asyncio.Event()
    received: list[bytes] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            received.append(message["body"])
            if len(received) == 5:
                gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("sim", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    stream = b"".join(received)
    assert b"[DONE]" not in stream
    assert 5 <= stream.count(b"data: ") < 100


def test_serve_refuses_empty_key() -> None:
    settings: Any = SimpleNamespace(stack=StackSettings(), llm_sim=LLMSimSettings(api_key=SecretStr("")))
    with pytest.raises(SystemExit, match="A0_LLM_SIM_API_KEY"):
        serve(settings)
