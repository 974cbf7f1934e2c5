"""What an OpenAI-compatible provider streams, read the way real providers send it.

:class:`LineReader` splits the body into lines on CR, LF or CRLF (a chunk may end
between the two), bounded in length; :class:`StreamAccumulator` folds each
``chat.completion.chunk`` into a :class:`Completion`. Shapes accepted: usage chunks with
``choices: []``, filter chunks, tool calls by ``index`` or, without one (or ``null``), by
``id``, the name sent once or resent in every chunk, ``arguments`` as text or as an
object, ``content`` as text or as a list of parts, a non-stream ``chat.completion``
body. Anything else is a :class:`BadResponse`, which the client reports as
``llm_bad_response`` and never retries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

# Longer lines than this are refused (a tool call's arguments arrive in one line, so
# it is generous); the reader never holds more than this of one line.
MAX_LINE_BYTES = 1 << 20

_LINE_END = re.compile(rb"\r\n|\r|\n")


class BadResponse(Exception):
    """The provider answered with something that is not a chat completion stream."""


class ProviderError(Exception):
    """The provider put an error object in its answer."""


@dataclass
class Completion:
    """One assistant answer, accumulated from its stream: text, tool calls, and how the
    provider said it ended (``None``: it did not say)."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None


class LineReader:
    """Bytes in, complete lines out (without their ending), as the SSE standard splits
    them: on CRLF, a lone CR or a lone LF."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._rest = b""
        self._after_cr = False  # the last chunk ended with CR: a leading LF is its pair
        self.max_line = max_line

    def feed(self, data: bytes) -> Iterator[str]:
        if self._after_cr and data[:1] == b"\n":
            data = data[1:]
        if not data:
            return
        self._after_cr = data[-1:] == b"\r"
        buffer = self._rest + data if self._rest else data
        lines = _LINE_END.split(buffer)
        self._rest = lines.pop()
        if len(self._rest) > self.max_line:
            raise BadResponse(f"a line longer than {self.max_line} bytes")
        for line in lines:
            if len(line) > self.max_line:
                raise BadResponse(f"a line longer than {self.max_line} bytes")
            yield _decode(line)

    def close(self) -> str | None:
        """The last line, if the body did not end with a line ending."""
        rest, self._rest = self._rest, b""
        return _decode(rest) if rest else None


def _decode(line: bytes) -> str:
    try:
        return line.decode()
    except UnicodeDecodeError:
        raise BadResponse("a line that is not UTF-8") from None


def parse_data(data: str) -> list[Any]:
    """The JSON values of one event's data. Events some servers send without the blank
    line between them arrive as one event of several data lines, one value each."""
    try:
        return [orjson.loads(data)]
    except orjson.JSONDecodeError:
        if "\n" not in data:
            raise BadResponse("an event that is not JSON") from None
    try:
        return [orjson.loads(line) for line in data.split("\n") if line and line != "[DONE]"]
    except orjson.JSONDecodeError:
        raise BadResponse("an event that is not JSON") from None


def _text(content: Any) -> str:
    """A delta's ``content``: text, or a list of parts of which the text ones count
    (reasoning parts are not part of the answer)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    raise BadResponse("content that is neither text nor a list of parts")


class StreamAccumulator:
    """Folds ``chat.completion.chunk`` deltas into a :class:`Completion`: text pieces in
    order, tool calls by index, else by id (a chunk with neither continues the last
    call); a call's id and name are taken once, its arguments appended."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._calls: dict[Any, dict[str, str]] = {}
        self._last_call: dict[str, str] | None = None
        self.length = 0  # characters of text so far
        self.finish_reason: str | None = None
        self.received = False  # any text or tool call fragment

    def feed(self, chunk: Any) -> str:
        """Take one chunk (a ``chat.completion.chunk`` or a ``chat.completion``); returns
        the text it adds (may be empty)."""
        if not isinstance(chunk, dict):
            raise BadResponse("a chunk that is not a JSON object")
        if chunk.get("error"):
            raise ProviderError()
        choices = chunk.get("choices")
        if not choices:
            return ""
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise BadResponse("choices that are not a list of objects")
        choice = choices[0]
        delta = choice.get("delta")
        if delta is None:
            delta = choice.get("message") or {}  # a whole completion, not a stream
        if not isinstance(delta, dict):
            raise BadResponse("a delta that is not an object")
        finish = choice.get("finish_reason")
        if finish is not None:
            if not isinstance(finish, str):
                raise BadResponse("a finish_reason that is not text")
            self.finish_reason = finish
        calls = delta.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise BadResponse("tool_calls that are not a list")
            for call in calls:
                self._add_call(call)
        text = _text(delta.get("content"))
        if text:
            self._pieces.append(text)
            self.length += len(text)
            self.received = True
        return text

    def _add_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            raise BadResponse("a tool call that is not an object")
        index, call_id = call.get("index"), call.get("id")
        call_id = call_id if isinstance(call_id, str) and call_id else None
        if isinstance(index, int) and not isinstance(index, bool):
            key: Any = index
        elif call_id is not None:
            key = ("id", call_id)
        elif self._last_call is not None:
            key = None  # a fragment of the call before
        else:
            key = 0
        slot = self._last_call if key is None else self._calls.get(key)
        if slot is None:
            slot = self._calls[key] = {"id": "", "name": "", "arguments": ""}
        self._last_call = slot
        self.received = True
        if call_id and not slot["id"]:
            slot["id"] = call_id
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise BadResponse("a tool call function that is not an object")
        name = function.get("name")
        if name and isinstance(name, str) and not slot["name"]:
            slot["name"] = name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            slot["arguments"] += arguments
        elif isinstance(arguments, (dict, list)):
            slot["arguments"] = orjson.dumps(arguments).decode()
        elif arguments is not None:
            raise BadResponse("tool call arguments that are neither text nor an object")

    @property
    def has_tool_calls(self) -> bool:
        return bool(self._calls)

    def completion(self, fallback_id: Callable[[int], str]) -> Completion:
        calls = []
        for position, slot in enumerate(self._calls.values()):
            if not slot["name"]:
                raise BadResponse("a tool call without a name")
            calls.append(
                {
                    "id": slot["id"] or fallback_id(position),
                    "type": "function",
                    "function": {"name": slot["name"], "arguments": slot["arguments"] or "{}"},
                }
            )
        return Completion("".join(self._pieces), calls, self.finish_reason)
