"""The simulator's "model": deterministic replies decided from the conversation.

Pure functions, no I/O. Given the OpenAI ``messages`` list and the names of the tools
offered, :func:`decide` returns either a text or tool calls, always the same for the
same input — so tests can assert exact replies, and a retried request yields the same
tool call ids. The rules, first match wins:

1. last message is a tool result  → a short final answer using the tool output;
2. "reply verbatim:" and a new line → exactly the text after that line (markdown,
   hostile HTML ...: whatever a test needs the model to say);
2b. "call TOOL {json}" (the whole message; the JSON object optional) → a call of the
   tool named TOOL with those arguments, offered or not (any tool, MCP servers' too:
   ``call time__get_current_time {"timezone": "Europe/Paris"}``); arguments that are not
   a JSON object get a text saying so;
3. "compute/calculate/what is <expr>" and ``calculator`` offered → ``calculator`` call;
4. "what time is it" / "current time" and ``current_time`` offered → ``current_time`` call;
5. "run python: <code>" and ``run_python`` offered → ``run_python`` call;
6. "use the shell" → ``shell`` call even when not offered (a tool policy must deny);
7. "remember <word>" / "what did I ask you to remember?" → multi-turn memory;
8. "long answer" → about 200 words, to test cancelling mid-stream;
9. otherwise an echo of the last user message.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = Mapping[str, Any]

ECHO_PREFIX = "I am the a0 simulator."
LONG_ANSWER_WORDS = 200
MAX_TOOL_OUTPUT_CHARS = 200

_CALC = re.compile(r"\b(compute|calculate|evaluate|what is|what's)\b:?\s*(.+)", re.IGNORECASE | re.DOTALL)
# "what is" is too common to always mean arithmetic: only plain arithmetic follows it.
_ARITHMETIC = re.compile(r"[\d\s.+\-*/()%^]*\d[\d\s.+\-*/()%^]*")
_TIME = re.compile(r"\bwhat time is it\b|\bcurrent time\b|\bwhat is the time\b|\bwhat's the time\b", re.I)
_PYTHON = re.compile(r"run python:", re.IGNORECASE)
_FENCE = re.compile(r"^```[\w-]*\n?(.*?)\n?```$", re.DOTALL)
_SHELL = re.compile(r"\buse the shell\b", re.IGNORECASE)
_RECALL = re.compile(r"\bwhat did i (?:ask|tell) you to remember\b", re.IGNORECASE)
_REMEMBER = re.compile(r"\bremember\s+(?:that\s+)?([^\s.,;:!?]+)", re.IGNORECASE)
_CALL_TOOL = re.compile(r"^\s*call\s+([A-Za-z0-9_-]{1,64})(?:\s+(.*?))?\s*$", re.DOTALL)
_LONG = re.compile(r"\blong answer\b", re.IGNORECASE)
_VERBATIM = re.compile(r"^\s*reply verbatim:[ \t]*\r?\n", re.IGNORECASE)
# A "token" is a word plus the whitespace after it; the alternatives make the pieces
# cover the text exactly (leading and whitespace-only runs included), so the streamed
# deltas always concatenate back to the full reply.
_TOKEN = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True)
class ToolCall:
    """One function call requested by the model; ``arguments`` is a JSON string."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    """What the model answers: a text, or tool calls (then ``content`` is None)."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def text_of(message: Message) -> str:
    """The text of a message; content may be a string, a list of parts, or null."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        return "".join(str(p) for p in parts)
    return ""


def tool_call_id(messages: Sequence[Message], index: int) -> str:
    """A call id derived from the conversation, so identical requests get identical ids."""
    canonical = json.dumps(list(messages), sort_keys=True, separators=(",", ":"), default=str)
    return f"call_{hashlib.sha256(canonical.encode()).hexdigest()[:24]}{index}"


def decide(messages: Sequence[Message], tools: Iterable[str]) -> Reply:
    """Apply the rules of the module docstring to the conversation."""
    offered = set(tools)
    if messages and messages[-1].get("role") == "tool":
        return Reply(content=_answer_tool_result(messages))

    user_texts = [text_of(m) for m in messages if m.get("role") == "user"]
    text = user_texts[-1] if user_texts else ""

    if (verbatim := _VERBATIM.match(text)) and text[verbatim.end() :]:
        return Reply(content=text[verbatim.end() :])

    def call(name: str, arguments: dict[str, Any]) -> Reply:
        return Reply(tool_calls=(ToolCall(tool_call_id(messages, 0), name, json.dumps(arguments)),))

    if match := _CALL_TOOL.match(text):
        try:
            arguments = json.loads(match.group(2)) if match.group(2) else {}
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            return Reply(content=f"I cannot call {match.group(1)}: its arguments must be a JSON object.")
        return call(match.group(1), arguments)
    if "calculator" in offered and (expression := _expression(text)):
        return call("calculator", {"expression": expression})
    if "current_time" in offered and _TIME.search(text):
        return call("current_time", {})
    if "run_python" in offered and (code := _python_code(text)):
        return call("run_python", {"code": code})
    if _SHELL.search(text):
        return call("shell", {"command": "ls"})
    if _RECALL.search(text):
        for earlier in reversed(user_texts[:-1]):
            if not _RECALL.search(earlier) and (match := _REMEMBER.search(earlier)):
                return Reply(content=f"You asked me to remember {match.group(1)}.")
        return Reply(content="You did not ask me to remember anything.")
    if match := _REMEMBER.search(text):
        return Reply(content=f"I will remember {match.group(1)}.")
    if _LONG.search(text):
        words = " ".join(f"word{i}" for i in range(1, LONG_ANSWER_WORDS + 1))
        return Reply(content=f"Here is a long answer: {words}.")
    return Reply(content=f"{ECHO_PREFIX} Echo: {text.strip() or '(empty message)'}")


def _expression(text: str) -> str | None:
    match = _CALC.search(text)
    if not match:
        return None
    expression = match.group(2).strip().rstrip("?!.").strip()
    if match.group(1).lower().startswith("what") and not _ARITHMETIC.fullmatch(expression):
        return None
    return expression or None


def _python_code(text: str) -> str | None:
    match = _PYTHON.search(text)
    if not match:
        return None
    code = text[match.end() :].strip()
    if fenced := _FENCE.match(code):
        code = fenced.group(1).strip()
    return code or None


def _tool_name(messages: Sequence[Message], call_id: Any) -> str:
    """Find which function the tool result answers, via the assistant's tool_calls."""
    for message in reversed(messages):
        for tool_call in message.get("tool_calls") or ():
            if isinstance(tool_call, Mapping) and tool_call.get("id") == call_id:
                function = tool_call.get("function") or {}
                return str(function.get("name") or "unknown")
    return str(messages[-1].get("name") or "unknown")


def _answer_tool_result(messages: Sequence[Message]) -> str:
    last = messages[-1]
    name = _tool_name(messages, last.get("tool_call_id"))
    content = text_of(last).strip()
    try:
        payload: Any = json.loads(content)
    except ValueError:
        payload = content
    if isinstance(payload, dict) and payload.get("error") is not None:
        error = payload["error"]
        if isinstance(error, Mapping):
            error = error.get("message") or json.dumps(error)
        return f"The tool failed: {str(error).strip().rstrip('.')}."
    if name == "calculator":
        if isinstance(payload, dict):
            payload = next((payload[k] for k in ("result", "value", "output") if k in payload), content)
        return f"The result is {str(payload).strip().rstrip('.')}."
    if len(content) > MAX_TOOL_OUTPUT_CHARS:
        content = content[:MAX_TOOL_OUTPUT_CHARS] + "…"
    return f"Tool {name} returned: {content}"


def split_tokens(text: str) -> list[str]:
    """Stream pieces of ``text``: each word with its following whitespace."""
    return _TOKEN.findall(text)


def split_arguments(arguments: str, size: int = 8) -> list[str]:
    """Fixed-size pieces of a JSON arguments string, split mid-token like a real model."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def count_tokens(text: str) -> int:
    return len(text.split())


def prompt_tokens(messages: Sequence[Message]) -> int:
    """Words of every message, tool call arguments included."""
    total = 0
    for message in messages:
        total += count_tokens(text_of(message))
        for tool_call in message.get("tool_calls") or ():
            if isinstance(tool_call, Mapping):
                function = tool_call.get("function") or {}
                total += 1 + count_tokens(str(function.get("arguments") or ""))
    return total


def completion_tokens(reply: Reply) -> int:
    calls = sum(1 + count_tokens(c.arguments) for c in reply.tool_calls)
    return count_tokens(reply.content or "") + calls
