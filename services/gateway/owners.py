"""Who owns each conversation, remembered by the gateway process.

An owner never changes, so a remembered one is only ever stale by the conversation
having been deleted since. It lets a message be authorized without reading the
conversation's row first; the statement that then queues the turn finds the row itself
(a deleted conversation is a 404 there, as it would have been here).
"""

from __future__ import annotations

from collections import OrderedDict

# At most about 250 bytes an entry (the map's 90 and two ids' 80 each, measured): 100 000
# conversations are some 25 MB per gateway process.
MAX_CONVERSATIONS = 100_000


class Owners:
    """A bounded map of conversation id → owner id, the least recently used dropped first."""

    def __init__(self, size: int = MAX_CONVERSATIONS) -> None:
        self.size = size
        self._owners: OrderedDict[str, str] = OrderedDict()

    def get(self, conversation_id: str) -> str | None:
        owner = self._owners.get(conversation_id)
        if owner is not None:
            self._owners.move_to_end(conversation_id)
        return owner

    def remember(self, conversation_id: str, owner_id: str) -> None:
        self._owners[conversation_id] = owner_id
        self._owners.move_to_end(conversation_id)
        if len(self._owners) > self.size:
            self._owners.popitem(last=False)

    def forget(self, conversation_id: str) -> None:
        self._owners.pop(conversation_id, None)

    def clear(self) -> None:
        """Forget every owner (the gateway went quiet: each is read again when next needed)."""
        self._owners = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)
