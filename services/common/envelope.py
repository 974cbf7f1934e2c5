"""The one envelope of a0: every record on every topic is an :class:`Envelope`, JSON on
the wire, versioned. Client-facing events (``conversation.outbound``) are the same
object on SSE, WebSocket and REST. ``docs/envelope.schema.json`` is exported from here.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common.errors import A0Error

# The version this release writes (``v`` of every envelope), and the oldest it reads:
# release N reads N-1 too, so records an older producer left on a topic (or in the events
# table) during a rolling upgrade or a rollback are read, not dead-lettered.
SCHEMA_VERSION = 1
MIN_READ_VERSION = max(1, SCHEMA_VERSION - 1)

# The roles of a turn whose record carries none (written before roles travelled with it).
DEFAULT_ROLES = ("user",)


class EventType(StrEnum):
    # conversation.inbound
    USER_MESSAGE = "message.user"
    CANCEL = "turn.cancel"
    # conversation.outbound: what clients see
    ACCEPTED = "message.accepted"
    DELTA = "message.delta"
    TOOL_CALL = "tool.call"
    TOOL_RESULT = "tool.result"
    # and on tool.results, from the executor: how far a running call is (MCP progress)
    TOOL_PROGRESS = "tool.progress"
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
        EventType.TOOL_PROGRESS,
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

    v: int = Field(
        default=SCHEMA_VERSION,
        ge=MIN_READ_VERSION,
        le=SCHEMA_VERSION,
        description="Envelope version: written as the current one, read back to the one before.",
    )
    id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    type: EventType
    conversation_id: str = Field(min_length=1, max_length=128)
    turn_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    seq: int = Field(
        default=0, ge=0, description="Per-conversation sequence of outbound events; 0 elsewhere."
    )
    ts: datetime = Field(default_factory=utcnow)
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "The event's data, by type (docs/messaging.md). message.user and tool.request carry "
            "roles: the roles of the token that sent the turn, set by the gateway only; "
            'a record without them reads as ["user"].'
        ),
    )

    @field_validator("v", mode="before")
    @classmethod
    def _readable_version(cls, value: Any) -> Any:
        if isinstance(value, int) and not MIN_READ_VERSION <= value <= SCHEMA_VERSION:
            newer = value > SCHEMA_VERSION
            raise ValueError(
                f"envelope version {value} is {'newer' if newer else 'older'} than this release reads "
                f"({MIN_READ_VERSION}..{SCHEMA_VERSION})"
                + ("; upgrade consumers before producers" if newer else "")
            )
        return value

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


def roles_of(envelope: Envelope) -> list[str]:
    """The roles a turn's ``message.user`` (and each of its ``tool.request`` records) carries:
    the gateway's, from the token that sent the turn. A record without them (an older
    producer's) or with anything but a non-empty list of names reads as ``["user"]``, the
    least privilege."""
    roles = envelope.payload.get("roles")
    if isinstance(roles, list) and roles and all(isinstance(r, str) and r for r in roles):
        return list(roles)
    return list(DEFAULT_ROLES)


def tool_call_key(turn_id: str, call_id: str) -> str:
    """A model's tool call id is unique only within its answer (a deterministic or reused id
    can recur in other turns): a0 keys tool work by turn and call id."""
    return f"{turn_id}:{call_id}"


def export_schema() -> dict[str, Any]:
    schema = Envelope.model_json_schema()
    schema["$id"] = f"https://a0.dev/schemas/envelope.v{SCHEMA_VERSION}.json"
    schema["title"] = f"a0 envelope v{SCHEMA_VERSION}"
    return schema


if __name__ == "__main__":  # python -m services.common.envelope > docs/envelope.schema.json
    print(json.dumps(export_schema(), indent=2))
