"""Checks that keep unprocessable input out at the door, before it reaches Kafka or
PostgreSQL: text with NUL or lone surrogates (PostgreSQL's ``text`` and UTF-8 cannot hold
them, so such a message would be accepted and then fail downstream), and JSON nested
deeper than any command needs (which would exhaust the parser's recursion)."""

from __future__ import annotations

import re

MAX_JSON_DEPTH = 32

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


# What storable_text admits, as far as a JSON Schema pattern can say it (a lone surrogate
# cannot be written in JSON Schema's regex): documented on every such field, so a client
# generating input from /openapi.json knows NUL is refused.
STORABLE_PATTERN = "^[^\\u0000]*$"


def storable_text(value: str) -> str:
    """A pydantic after-validator: refuse NUL and lone surrogates, naming which."""
    found = _UNSTORABLE.search(value)
    if found is not None:
        if found.group() == "\x00":
            raise ValueError("must not contain NUL characters (\\u0000)")
        raise ValueError("must be valid Unicode: it contains a lone surrogate (\\ud800-\\udfff)")
    return value


def json_too_deep(raw: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` in ``raw`` (brackets inside
    strings do not count). Cheap for ordinary messages: few brackets, no scan."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKETS.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > limit:
            return True
    return False
