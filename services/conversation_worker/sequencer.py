"""Per-conversation turn order inside one worker: tickets handed out in arrival order,
each waiting for the one before it. Different conversations never wait for each other."""

from __future__ import annotations

import asyncio


class Ticket:
    def __init__(
        self, sequencer: Sequencer, conversation_id: str, previous: asyncio.Future[None] | None
    ) -> None:
        self._sequencer = sequencer
        self._conversation_id = conversation_id
        self._previous = previous
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def first(self) -> bool:
        """Nothing of its conversation was ahead of it when it was handed out."""
        return self._previous is None

    async def wait(self) -> None:
        if self._previous is not None:
            await asyncio.shield(self._previous)

    def release(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self._sequencer._released(self._conversation_id, self)


class Sequencer:
    def __init__(self) -> None:
        self._last: dict[str, Ticket] = {}

    def ticket(self, conversation_id: str) -> Ticket:
        previous = self._last.get(conversation_id)
        ticket = Ticket(self, conversation_id, previous.done if previous else None)
        self._last[conversation_id] = ticket
        return ticket

    def idle(self, conversation_id: str) -> bool:
        """No turn of this conversation is running or queued here."""
        return conversation_id not in self._last

    def _released(self, conversation_id: str, ticket: Ticket) -> None:
        if self._last.get(conversation_id) is ticket:
            del self._last[conversation_id]  # nothing queued behind it: forget the conversation
