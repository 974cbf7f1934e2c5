"""Recorded upstream answers, as hosted and local OpenAI-compatible providers send them,
and a small server that replays them: the conformance suite's upstream.

Each :class:`Case` is the raw HTTP answer to a turn's first LLM call (status, headers,
body pieces written one by one, maybe a dropped connection), a second answer when the
first attempt is retried, and what a user must see: the text, the tool calls, the
finish reason, or the error code. A round after tool results is answered with
:data:`AFTER_TOOLS`. The server picks the case by the request's ``model``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

DROP = object()  # the connection is closed here, in the middle of the body
FOREVER_COMMENTS = object()  # keep-alive comments until the client gives up
SILENCE = object()  # headers sent, then nothing at all until the client gives up

SSE = {"Content-Type": "text/event-stream"}
JSON = {"Content-Type": "application/json"}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "chatcmpl-rec", "object": "chat.completion.chunk", "model": "rec"}
    body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return body | extra


def text(piece: str, finish: str | None = None) -> dict[str, Any]:
    return chunk({"content": piece}, finish)


def call(index: Any = 0, id_: Any = None, name: Any = None, arguments: Any = None) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": index} if index is not ... else {}
    if id_ is not ...:
        fragment["id"] = id_
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    fragment["function"] = function
    return chunk({"tool_calls": [fragment]})


def events(*chunks: Any, done: bool = True, end: str = "\n\n") -> list[Any]:
    """Each chunk as one ``data:`` event (bytes pass through as written)."""
    pieces: list[Any] = []
    for item in chunks:
        if isinstance(item, bytes) or item in (DROP, FOREVER_COMMENTS, SILENCE):
            pieces.append(item)
        else:
            pieces.append(b"data: " + orjson.dumps(item) + end.encode())
    if done:
        pieces.append(b"data: [DONE]" + end.encode())
    return pieces


@dataclass
class Answer:
    body: list[Any]
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: dict(SSE))


@dataclass
class Case:
    name: str
    answers: list[Answer]  # attempt 1, attempt 2 ...
    text: str = ""  # what the deltas add up to
    tools: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments) of each call
    finish_reason: str | None = "stop"
    error: str | None = None  # the turn's error code, if it fails
    attempts: int | None = None  # how many calls the client makes (default: as many answers)


CALC = "calculator"
ARGS = '{"expression": "6*7"}'
AFTER_TOOLS_TEXT = "The result is 42."
AFTER_TOOLS = Answer(events(text("The result "), text("is 42.", "stop")))


def _cases() -> list[Case]:
    two_mib = "x" * (2 << 20)
    return [
        # --- shapes real providers send, which must work ------------------------------
        Case(
            "plain-text", [Answer(events(text("Hello"), text(" world"), chunk(finish="stop")))], "Hello world"
        ),
        Case(
            "usage-chunk-with-no-choices",
            [
                Answer(
                    events(
                        text("Hi"),
                        chunk(finish="stop"),
                        {"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
                    )
                )
            ],
            "Hi",
        ),
        Case(
            "azure-filter-chunks",
            [
                Answer(
                    events(
                        {"id": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0}]},
                        chunk({"content": "Safe"}, content_filter_results={"hate": {"filtered": False}}),
                        chunk({}, "stop"),
                    )
                )
            ],
            "Safe",
        ),
        Case(
            "unicode-escape-split-across-writes",
            [
                Answer(
                    [
                        b'data: {"choices":[{"index":0,"delta":{"content":"\\ud83d',
                        b'\\ude00 ok"},"finish_reason":null}]}\n\n',
                        *events(chunk(finish="stop")),
                    ]
                )
            ],
            "\U0001f600 ok",
        ),
        Case(
            "interleaved-parallel-calls",
            [
                Answer(
                    events(
                        call(0, "call_a", CALC, ""),
                        call(1, "call_b", CALC, ""),
                        call(0, None, None, '{"expression": '),
                        call(1, None, None, '{"expression": "1+1"}'),
                        call(0, None, None, '"6*7"}'),
                        chunk(finish="tool_calls"),
                    )
                )
            ],
            AFTER_TOOLS_TEXT,
            [(CALC, ARGS), (CALC, '{"expression": "1+1"}')],
        ),
        Case(
            "ollama-one-chunk-tool-call",
            [Answer(events(call(0, "call_o", CALC, ARGS), chunk(finish="tool_calls")))],
            AFTER_TOOLS_TEXT,
            [(CALC, ARGS)],
        ),
        Case(
            "vllm-null-ids",
            [
                Answer(
                    events(
                        call(0, "chatcmpl-tool-1", CALC, None),
                        call(0, None, None, '{"expression"'),
                        call(0, None, None, ': "6*7"}'),
                        chunk(finish="tool_calls"),
                    )
                )
            ],
            AFTER_TOOLS_TEXT,
            [(CALC, ARGS)],
        ),
        Case("no-done", [Answer(events(text("Bye"), chunk(finish="stop"), done=False))], "Bye"),
        Case(
            "comments-and-crlf",
            [Answer([b": keep-alive\r\n\r\n", *events(text("A"), text("B", "stop"), end="\r\n\r\n")])],
            "AB",
        ),
        Case(
            "reasoning-fields",
            [
                Answer(
                    events(
                        chunk({"reasoning_content": "think"}),
                        chunk({"reasoning": "more"}),
                        text("42", "stop"),
                    )
                )
            ],
            "42",
        ),
        Case(
            "mid-stream-error-object",
            [Answer(events(text("Part"), {"error": {"message": "overloaded", "type": "server_error"}}))],
            "Part",
            finish_reason=None,
            error="llm_error",
        ),
        Case(
            "rate-limited-then-answered",
            [
                Answer([b'{"error": {"message": "slow down"}}'], 429, {**JSON, "Retry-After": "0"}),
                Answer(events(text("ok", "stop"))),
            ],
            "ok",
        ),
        # --- shapes that went wrong ---------------------------------------------------
        Case(
            "dropped-after-text-then-retried",
            [
                Answer(events(text("The answer is "), text("forty-"), DROP, done=False)),
                Answer(events(text("Sure! 6*7 = 42."), chunk(finish="stop"))),
            ],
            "The answer is forty-",
            finish_reason=None,
            error="llm_interrupted",
            attempts=1,
        ),
        Case(
            "clean-end-mid-tool-call",
            [Answer(events(call(0, "call_c", CALC, '{"expres'), done=False))],
            finish_reason=None,
            error="llm_incomplete",
        ),
        Case(
            "bare-cr-line-endings",
            [Answer(events(text("C"), text("R", "stop"), end="\r\r"))],
            "CR",
        ),
        Case(
            "no-blank-lines-between-events",
            [Answer(events(text("one "), text("two"), chunk(finish="stop"), end="\n", done=False))],
            "one two",
        ),
        Case(
            "length-during-a-tool-call",
            [Answer(events(call(0, "call_l", CALC, '{"expression": "6*'), chunk(finish="length")))],
            finish_reason="length",
            error="llm_truncated",
        ),
        Case(
            "content-filter",
            [Answer(events(text("Here is how to"), chunk(finish="content_filter")))],
            "Here is how to",
            finish_reason="content_filter",
            error="llm_content_filter",
        ),
        Case(
            "gemini-parallel-calls-without-index",
            [
                Answer(
                    events(
                        call(..., "g1", CALC, '{"expression": "6*7"}'),
                        call(..., "g2", CALC, '{"expression": "1+1"}'),
                        chunk(finish="tool_calls"),
                    )
                )
            ],
            AFTER_TOOLS_TEXT,
            [(CALC, ARGS), (CALC, '{"expression": "1+1"}')],
        ),
        Case(
            "name-resent-in-every-chunk",
            [
                Answer(
                    events(
                        call(0, "call_n", CALC, '{"expression": '),
                        call(0, "call_n", CALC, '"6*7"}'),
                        chunk(finish="tool_calls"),
                    )
                )
            ],
            AFTER_TOOLS_TEXT,
            [(CALC, ARGS)],
        ),
        Case(
            "index-null",
            [
                Answer(
                    events(
                        call(None, "call_x", CALC, '{"expression": '),
                        call(None, None, None, '"6*7"}'),
                        chunk(finish="tool_calls"),
                    )
                )
            ],
            AFTER_TOOLS_TEXT,
            [(CALC, ARGS)],
        ),
        Case(
            "arguments-as-an-object",
            [Answer(events(call(0, "call_j", CALC, {"expression": "6*7"}), chunk(finish="tool_calls")))],
            AFTER_TOOLS_TEXT,
            [(CALC, '{"expression":"6*7"}')],
        ),
        Case(
            "content-as-a-list-of-parts",
            [
                Answer(
                    events(
                        chunk(
                            {"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}]}
                        ),
                        chunk({"content": [{"type": "text", "text": "forty-two"}]}, "stop"),
                    )
                )
            ],
            "forty-two",
        ),
        Case(
            "two-mib-data-line",
            [Answer(events(text("Start"), text(two_mib), chunk(finish="stop")))],
            "Start",
            finish_reason=None,
            error="llm_bad_response",
        ),
        Case(
            "non-stream-json-completion",
            [
                Answer(
                    [
                        orjson.dumps(
                            {
                                "id": "x",
                                "object": "chat.completion",
                                "choices": [
                                    {
                                        "index": 0,
                                        "message": {"role": "assistant", "content": "Whole answer"},
                                        "finish_reason": "stop",
                                    }
                                ],
                            }
                        )
                    ],
                    headers=dict(JSON),
                )
            ],
            "Whole answer",
        ),
        Case(
            "non-stream-json-error",
            [Answer([b'{"error": {"message": "bad things"}}'], headers=dict(JSON))],
            finish_reason=None,
            error="llm_error",
        ),
        Case(
            "keep-alive-comments-only",
            [Answer([FOREVER_COMMENTS])],
            finish_reason=None,
            error="llm_timeout",
        ),
        Case("silent-provider", [Answer([SILENCE])], finish_reason=None, error="llm_timeout"),
        Case(
            "lone-surrogates-across-events",
            [
                Answer(
                    events(
                        b'data: {"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}\n\n',
                        text("x", "stop"),
                    )
                )
            ],
            finish_reason=None,
            error="llm_bad_response",
        ),
        Case(
            "raw-utf8-split-across-events",
            [
                Answer(
                    events(
                        b'data: {"choices":[{"index":0,"delta":{"content":"\xf0\x9f"}}]}\n\n',
                        b'data: {"choices":[{"index":0,"delta":{"content":"\x98\x80"}}]}\n\n',
                        text("x", "stop"),
                    )
                )
            ],
            finish_reason=None,
            error="llm_bad_response",
        ),
        Case(
            "redirect-307",
            [Answer([b""], 307, {"Location": "http://127.0.0.1:1/v1/chat/completions"})],
            finish_reason=None,
            error="llm_forbidden",
        ),
        Case(
            "html-page-with-200",
            [Answer([b"<html>captive portal</html>"], headers={"Content-Type": "text/html"})],
            finish_reason=None,
            error="llm_bad_response",
        ),
    ]


CASES = _cases()
BY_NAME = {case.name: case for case in CASES}


class Replay:
    """The replaying server: ``/v1/chat/completions`` by model (a case's name), and
    ``/v1/models`` for a credential's verification. Counts the calls per case."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": case.name} for case in CASES]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        case = BY_NAME[body["model"]]
        if any(message.get("role") == "tool" for message in body["messages"]):
            answer = AFTER_TOOLS
        else:
            attempt = self.calls.get(case.name, 0)
            self.calls[case.name] = attempt + 1
            answer = case.answers[min(attempt, len(case.answers) - 1)]
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        await response.prepare(request)
        for piece in answer.body:
            if piece is DROP:  # what was written still goes out, then the connection ends mid-body
                assert request.transport is not None
                request.transport.close()
                return response
            if piece is SILENCE or piece is FOREVER_COMMENTS:
                # Until the client hangs up (at most a minute).
                for _ in range(600):
                    if request.transport is None or request.transport.is_closing():
                        return response
                    if piece is FOREVER_COMMENTS:
                        await response.write(b": keep-alive\n\n")
                    await asyncio.sleep(0.1)
                continue
            await response.write(piece)
            await asyncio.sleep(0)
        await response.write_eof()
        return response


@asynccontextmanager
async def serving(app: web.Application, port: int = 0, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serves ``app`` on ``host:port`` (0: a free port); yields its OpenAI base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]  # the port, when 0 (any free one) was asked for
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        await runner.cleanup()
