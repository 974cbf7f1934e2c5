"""Server-sent events as the HTML standard defines them, one line at a time: the
gateway's clients (``a0ctl chat``, ``a0ctl load``, ``a0ctl smoke``) and the worker's
upstream LLM stream read their events through this one parser."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SseParser:
    """Feed it lines already split on CR, LF or CRLF (without the line ending)."""

    data: list[str] = field(default_factory=list)
    event: str = ""
    last_id: str | None = None

    def feed(self, line: str) -> dict[str, str] | None:
        """Returns ``{"id", "event", "data"}`` when ``line`` completes an event."""
        if line == "":
            if not self.data:
                self.event = ""
                return None
            message = {
                "id": self.last_id or "",
                "event": self.event or "message",
                "data": "\n".join(self.data),
            }
            self.data, self.event = [], ""
            return message
        if line.startswith(":"):
            return None  # a comment: keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None
