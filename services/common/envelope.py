"""The one envelope of a0: every record on every topic is an :class:`Envelope`, JSON on
the wire, versioned. Client-facing events (``conversation.outbound``) are the same
object on SSE, WebSocket and REST. ``docs/envelope.schema.json`` is exported from here.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import A0Error

SCHEMA_VERSION = 1


class EventType(StrEnum):
    # conversation.inbound
    USER_MESSAGE = "message.user"
    CANCEL = "turn.cancel"
    # conversation.outbound: what clients see
    ACCEPTED = "message.accepted"
    DELTA = "message.delta"
    TOOL_CALL = "tool.call"
    TOOL_RESULT = "tool.result"
    COMPLETED = "message.completed"
    ERROR = "error"
    CANCELLED = "cancelled"
    # tool.requests / tool.results
    TOOL_REQUEST = "tool.request"
    TOOL_CANCEL = "tool.cancel"
    TOOL_RESPONSE = "tool.response"


CLIENT_EVENTS = frozenset(
    {
        EventType.ACCEPTED,
        EventType.DELTA,
        EventType.TOOL_CALL,
        EventType.TOOL_RESULT,
        EventType.COMPLETED,
        EventType.ERROR,
        EventType.CANCELLED,
    }
)
# A turn is over for the client once one of these arrives.
TERMINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.ERROR, EventType.CANCELLED})


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class EnvelopeError(A0Error):
    """A record that is not a valid envelope: a poison message for the dead-letter topic."""

    code = "invalid_envelope"


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1  # SCHEMA_VERSION
    id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    type: EventType
    conversation_id: str = Field(min_length=1, max_length=128)
    turn_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    seq: int = Field(
        default=0, ge=0, description="Per-conversation sequence of outbound events; 0 elsewhere."
    )
    ts: datetime = Field(default_factory=utcnow)
    payload: dict[str, Any] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    def client_event(self) -> dict[str, Any]:
        """The JSON a client receives (SSE data, WebSocket message, REST list item)."""
        return self.model_dump(mode="json", exclude={"v"})

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Envelope:
        if raw is None:
            raise EnvelopeError("empty record (no value)")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                raise EnvelopeError(f"not JSON: {first['msg']}") from None
            where = ".".join(str(p) for p in first["loc"]) or "record"
            raise EnvelopeError(f"not a valid envelope: {where}: {first['msg']}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EnvelopeError(f"not JSON: {exc}") from None


def format_ts(ts: datetime) -> str:
    """A timestamp as the envelope's JSON carries it (what pydantic writes for ``ts``)."""
    return ts.isoformat().replace("+00:00", "Z")


def wire_event(
    type_: EventType,
    *,
    conversation_id: str,
    turn_id: str,
    user_id: str,
    payload: dict[str, Any],
    seq: int = 0,
) -> dict[str, Any]:
    """An envelope in its wire form (the dict ``Envelope.model_dump(mode="json")`` gives),
    built directly: a producer on the hot path emits events it has just made, with fields
    it controls, so it skips the model's validation and dump. Consumers still validate
    with :meth:`Envelope.from_bytes`."""
    return {
        "v": SCHEMA_VERSION,
        "id": new_id(),
        "type": str(type_),
        "conversation_id": conversation_id,
        "turn_id": turn_id,
        "user_id": user_id,
        "seq": seq,
        "ts": format_ts(utcnow()),
        "payload": payload,
    }


def tool_call_key(turn_id: str, call_id: str) -> str:
    """A model's tool call id is unique only within its answer (a deterministic or reused id
    can recur in other turns): a0 keys tool work by turn and call id."""
    return f"{turn_id}:{call_id}"


def export_schema() -> dict[str, Any]:
    schema = Envelope.model_json_schema()
    schema["$id"] = "https://a0.dev/schemas/envelope.v1.json"
    schema["title"] = "a0 envelope v1"
    return schema
