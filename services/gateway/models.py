"""The gateway's wire models: request bodies, responses and WebSocket commands."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from services.common.auth import USER_ID
from services.gateway.textcheck import STORABLE_PATTERN, storable_text

# Every text a client sends is stored and forwarded: NUL and lone surrogates are refused
# (and the schema says so; the pattern documents, storable_text checks).
_STORABLE = Field(json_schema_extra={"pattern": STORABLE_PATTERN})
Text = Annotated[str, _STORABLE, AfterValidator(storable_text)]
ConversationId = Annotated[str, Field(min_length=1, max_length=128), _STORABLE, AfterValidator(storable_text)]
TurnId = Annotated[str, Field(min_length=1, max_length=128), _STORABLE, AfterValidator(storable_text)]
RequestId = Annotated[str, Field(max_length=128), _STORABLE, AfterValidator(storable_text)]
Title = Annotated[str, Field(max_length=200), _STORABLE, AfterValidator(storable_text)]


class TurnPolicy(StrEnum):
    """What a new message does while a turn of the conversation is queued or running."""

    enqueue = "enqueue"  # wait its turn
    reject = "reject"  # 409 conflict
    interrupt = "interrupt"  # cancel the running turn(s), then run this one


class DevLogin(BaseModel):
    # Anchored for pydantic's Rust regex, where ``$`` is the end of the text only.
    user: str = Field(min_length=1, max_length=64, pattern=rf"^{USER_ID.pattern}$")


class Token(BaseModel):
    token: str
    user_id: str
    expires_in: int


class Me(BaseModel):
    user_id: str
    roles: list[str]


class CreateConversation(BaseModel):
    title: Title | None = None
    policy: TurnPolicy = TurnPolicy.enqueue


class UpdateConversation(BaseModel):
    title: Title | None = None
    policy: TurnPolicy | None = None


class ConversationCreated(BaseModel):
    id: str
    title: str
    policy: TurnPolicy
    created_at: datetime
    last_seq: int


class ConversationSummary(ConversationCreated):
    updated_at: datetime


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]


class ConversationDetail(ConversationSummary):
    messages: list[dict[str, Any]]
    events: list[dict[str, Any]]


class PostMessage(BaseModel):
    content: Text = Field(min_length=1)


class MessageAccepted(BaseModel):
    conversation_id: str
    message_id: str
    turn_id: str


class CancelTurn(BaseModel):
    turn_id: TurnId | None = None


class CancelAccepted(BaseModel):
    conversation_id: str
    turn_id: str | None


# --- WebSocket commands (client → server) ------------------------------------------


class _Command(BaseModel):
    request_id: RequestId | None = None
    conversation_id: ConversationId


class WsSubscribe(_Command):
    type: Literal["subscribe"]
    after: int = Field(default=0, ge=0)


class WsUnsubscribe(_Command):
    type: Literal["unsubscribe"]


class WsMessage(_Command):
    type: Literal["message"]
    content: Text = Field(min_length=1)


class WsCancel(_Command):
    type: Literal["cancel"]
    turn_id: TurnId | None = None


WsCommand = Annotated[WsSubscribe | WsUnsubscribe | WsMessage | WsCancel, Field(discriminator="type")]
