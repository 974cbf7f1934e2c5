"""What each gateway request does, independent of the transport: REST routes and the
WebSocket call these same functions (one code path for messages and cancels)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import psycopg
from opentelemetry.trace import SpanKind
from psycopg import AsyncConnection
from pydantic import ValidationError

from services.common import open_turns
from services.common.auth import Principal
from services.common.envelope import Envelope, EventType, new_id
from services.common.errors import is_transient
from services.common.kafka import publish
from services.common.telemetry import tracer
from services.common.topics import INBOUND
from services.gateway import ratelimit, store
from services.gateway.deps import GatewayState
from services.gateway.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from services.gateway.fanout import Subscription, envelope_from_row, read_opening
from services.gateway.models import (
    CancelAccepted,
    ConversationCreated,
    ConversationDetail,
    ConversationSummary,
    CreateConversation,
    MessageAccepted,
    TurnPolicy,
    UpdateConversation,
)

log = logging.getLogger("a0.gateway")

PUBLISH_TIMEOUT_S = 10.0
BROKER_DOWN = "the message broker is unavailable; nothing was accepted, try again"
BUSY = "a turn is already running; wait for it or cancel it"


async def authorize(
    state: GatewayState,
    principal: Principal,
    action: str,
    conversation_id: str,
    conn: AsyncConnection | None = None,
) -> dict[str, Any]:
    """The conversation row, if it exists and OPA allows ``action`` on it (see
    :func:`check_access`).

    Pass the request's connection when it holds one: taking a second from the pool while
    holding the first can starve the pool under load."""
    if conn is not None:
        row = await store.conversation(conn, conversation_id)
    else:
        async with state.pool.connection(timeout=10) as own:
            row = await store.conversation(own, conversation_id)
    if row is None:
        raise NotFound(f"no conversation {conversation_id}")
    state.owners.remember(conversation_id, row["owner_id"])
    await check_access(state, principal, action, conversation_id, row["owner_id"])
    return row


async def check_access(
    state: GatewayState, principal: Principal, action: str, conversation_id: str, owner_id: str
) -> None:
    """Whether OPA allows ``action`` on the conversation owned by ``owner_id``: 404 when
    the user may not even read it (so ids of other users' conversations cannot be
    probed); 403 when they may read it but not do ``action``."""
    decision = await state.policy.decide(
        action,
        principal.user_id,
        roles=principal.roles,
        owner_id=owner_id,
        conversation_id=conversation_id,
    )
    if not decision.allow:
        if action != "conversation.read":
            visible = await state.policy.decide(
                "conversation.read",
                principal.user_id,
                roles=principal.roles,
                owner_id=owner_id,
                conversation_id=conversation_id,
            )
            if visible.allow:
                raise Forbidden(decision.reason)
        raise NotFound(f"no conversation {conversation_id}")


async def open_stream(
    state: GatewayState, principal: Principal, conversation_id: str, after: int
) -> Subscription:
    """A subscription to the conversation's events past ``after``, if OPA lets the user
    read it (404 otherwise, as :func:`check_access`). Its owner and first events come
    from one statement: opening a stream takes one connection from the pool, once.

    The caller closes it (``async with`` it, or :meth:`Subscription.close`)."""
    subscription = Subscription(state.hub, state.history, conversation_id, after)
    subscription.register()
    try:
        opening = await read_opening(state.pool, conversation_id, after)
        if opening is None:
            state.owners.forget(conversation_id)
            raise NotFound(f"no conversation {conversation_id}")
        state.owners.remember(conversation_id, opening.owner_id)
        await check_access(state, principal, "conversation.read", conversation_id, opening.owner_id)
    except BaseException:
        subscription.close()
        raise
    subscription.prime(opening)
    return subscription


async def _allow(state: GatewayState, principal: Principal, action: str) -> None:
    decision = await state.policy.decide(
        action, principal.user_id, roles=principal.roles, owner_id=principal.user_id
    )
    if not decision.allow:
        raise Forbidden(decision.reason)


# --- conversations ----------------------------------------------------------------------


async def create_conversation(
    state: GatewayState, principal: Principal, body: CreateConversation
) -> ConversationCreated:
    await _allow(state, principal, "conversation.create")
    row = await store.create_conversation(
        state.pool, new_id(), principal.user_id, body.title or "", body.policy
    )
    state.owners.remember(row["id"], principal.user_id)
    return ConversationCreated.model_validate(row)


def _like_pattern(text: str) -> str:
    """``text`` as a literal ILIKE substring pattern (``%``, ``_`` and ``\\`` escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_conversations(
    state: GatewayState, conn: AsyncConnection, principal: Principal, query: str | None = None
) -> list[ConversationSummary]:
    """The user's conversations, newest activity first; ``query`` keeps those whose title
    contains it (case-insensitive)."""
    await _allow(state, principal, "conversation.list")
    pattern = _like_pattern(query.strip()) if query and query.strip() else None
    rows = await store.conversations_of(conn, principal.user_id, pattern)
    return [ConversationSummary.model_validate(row) for row in rows]


def history_message(turn_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
    """A transcript row (OpenAI chat format) as the client sees it."""
    message: dict[str, Any] = {
        "role": body.get("role", role),
        "content": body.get("content"),
        "turn_id": turn_id,
    }
    for key in ("tool_calls", "tool_call_id", "name"):
        if body.get(key) is not None:
            message[key] = body[key]
    return message


def client_event_from_row(data: Any) -> dict[str, Any]:
    try:
        return envelope_from_row(data).client_event()
    except ValidationError:  # a row this version cannot read: show it as stored, minus the version
        return {key: value for key, value in dict(data).items() if key != "v"}


async def conversation_detail(
    state: GatewayState, conn: AsyncConnection, principal: Principal, conversation_id: str
) -> ConversationDetail:
    row = await authorize(state, principal, "conversation.read", conversation_id, conn)
    transcript = await store.transcript(conn, conversation_id)
    history = [history_message(turn_id, role, body) for turn_id, role, body in transcript]
    client_events = [client_event_from_row(data) for data in await store.stored_events(conn, conversation_id)]
    last_seq = max([row["last_seq"], *(event.get("seq", 0) for event in client_events)])
    return ConversationDetail.model_validate(
        {**row, "last_seq": last_seq, "messages": history, "events": client_events}
    )


async def update_conversation(
    state: GatewayState, principal: Principal, conversation_id: str, body: UpdateConversation
) -> ConversationSummary:
    await authorize(state, principal, "conversation.write", conversation_id)
    row = await store.update_conversation(state.pool, conversation_id, body.title, body.policy)
    if row is None:
        raise NotFound(f"no conversation {conversation_id}")
    return ConversationSummary.model_validate(row)


async def delete_conversation(state: GatewayState, principal: Principal, conversation_id: str) -> None:
    """Delete a conversation and its whole history (events, transcript, turns, tool
    results) from PostgreSQL. A turn still open is cancelled first, so the worker stops."""
    await authorize(state, principal, "conversation.delete", conversation_id)
    if await store.has_open_turn(state.pool, conversation_id):
        try:
            await publish_confirmed(
                state, _cancel_envelope(principal, conversation_id, None, "the conversation was deleted")
            )
        except Unavailable:
            log.warning("could not cancel the open turns of %s before deleting it", conversation_id)
    deleted = await store.delete_conversation(state.pool, conversation_id)
    state.owners.forget(conversation_id)
    if not deleted:  # deleted by a concurrent request meanwhile
        raise NotFound(f"no conversation {conversation_id}")
    log.info("conversation %s deleted by %s", conversation_id, principal.user_id)


# --- messages and cancels -------------------------------------------------------------------


async def publish_confirmed(state: GatewayState, envelope: Envelope) -> None:
    """Publish to conversation.inbound and wait for the broker's ack; 503 if it cannot."""
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            delivery = await publish(state.producer, INBOUND, envelope)
            await delivery
    except Exception as exc:
        if not is_transient(exc):  # TimeoutError is one: an OSError
            raise
        log.warning("publishing %s %s failed: %s: %s", envelope.type, envelope.id, type(exc).__name__, exc)
        raise Unavailable(BROKER_DOWN) from exc


def _cancel_envelope(
    principal: Principal, conversation_id: str, turn_id: str | None, reason: str
) -> Envelope:
    return Envelope(
        type=EventType.CANCEL,
        conversation_id=conversation_id,
        turn_id=turn_id or "*",
        user_id=principal.user_id,
        payload={"reason": reason},
    )


async def submit_message(
    state: GatewayState, principal: Principal, conversation_id: str, content: str
) -> MessageAccepted:
    """Authorize, rate-limit, shed, apply the conversation's turn policy, then accept: the
    turn row is written and the message acknowledged by Kafka before this returns."""
    limits = state.settings.gateway
    if not content:
        raise InvalidRequest("content: must not be empty")
    if len(content) > limits.max_message_chars:
        raise InvalidRequest(f"content: at most {limits.max_message_chars} characters")
    if await state.open_turns.at_capacity(limits.max_inflight_turns):
        raise ratelimit.overloaded()
    owner_id = state.owners.get(conversation_id)
    if owner_id is None:
        await authorize(state, principal, "conversation.write", conversation_id)
    else:  # no need to read the row: the statement that queues the turn finds it
        await check_access(state, principal, "conversation.write", conversation_id, owner_id)
    await ratelimit.admit(
        state.redis,
        principal.user_id,
        limits.rate_per_user_per_min,
        state.open_turns.budget(limits.max_inflight_turns),
    )
    accepted = False
    turn_id, message_id = new_id(), new_id()
    message = Envelope(
        type=EventType.USER_MESSAGE,
        conversation_id=conversation_id,
        turn_id=turn_id,
        user_id=principal.user_id,
        payload={"message_id": message_id, "content": content, "roles": principal.roles},
    )
    try:
        with tracer.start_as_current_span(
            "gateway message",
            kind=SpanKind.PRODUCER,
            attributes={"a0.conversation_id": conversation_id, "a0.turn_id": turn_id},
        ):
            await _queue_and_publish(state, principal, message, title_from_message(content))
        accepted = True
    finally:
        if not accepted:
            await open_turns.release(state.redis)
    return MessageAccepted(conversation_id=conversation_id, message_id=message_id, turn_id=turn_id)


async def _queue_and_publish(
    state: GatewayState, principal: Principal, message: Envelope, title: str
) -> None:
    """Queue the message's turn and publish the message in one transaction, committed once
    Kafka acknowledged it: the row exists only if the message does. A process killed
    before the commit leaves no row (a message already acked is claimed by the worker,
    which writes the row itself); a publish that fails rolls the row back. A commit that
    fails after the ack still accepts: the message is in Kafka and its turn will run."""
    conversation_id = message.conversation_id
    acked = False
    try:
        async with state.pool.connection(timeout=10) as conn, conn.transaction():
            policy = await store.queue_turn(conn, conversation_id, message.turn_id, title)
            if policy is not None and policy != TurnPolicy.enqueue:
                policy = await _queue_turn_by_policy(
                    state, principal, conn, conversation_id, message.turn_id, title
                )
            if policy is None:
                state.owners.forget(conversation_id)
                raise NotFound(f"no conversation {conversation_id}")
            await publish_confirmed(state, message)
            acked = True
    except psycopg.errors.ForeignKeyViolation:  # deleted as the turn was inserted
        state.owners.forget(conversation_id)
        raise NotFound(f"no conversation {conversation_id}") from None
    except psycopg.Error as exc:
        if not acked:
            raise
        log.warning(
            "turn %s: published, its row not committed (%s); the worker records it", message.turn_id, exc
        )


TITLE_CHARS = 60
_MARKUP_PREFIX = re.compile(r"^(?:[#>*+\-]+|\d+[.)]|`{3,}\S*)\s*")


def title_from_message(content: str) -> str:
    """A conversation's title from its first message: the first line with words, without
    markdown's leading marks, whitespace collapsed, at most 60 characters."""
    for line in content[:4000].splitlines():  # the first lines are enough
        text = " ".join(_MARKUP_PREFIX.sub("", line.strip()).replace("`", "").split())
        if text:
            return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"
    return "New chat"


async def _queue_turn_by_policy(
    state: GatewayState,
    principal: Principal,
    conn: AsyncConnection,
    conversation_id: str,
    turn_id: str,
    title: str,
) -> TurnPolicy | None:
    """Queue a turn in a ``reject`` or ``interrupt`` conversation, in the caller's
    transaction: under the conversation's row lock, which serialises its messages across
    replicas until the message is published and the row committed, look for a turn in
    flight. The policy; None if the conversation is gone."""
    locked = await store.lock_for_turn(conn, conversation_id)
    if locked is None:
        return None
    policy, busy = locked
    if busy and policy == TurnPolicy.reject:
        raise Conflict(BUSY)
    if busy and policy == TurnPolicy.interrupt:
        # Before this turn exists, so the cancel cannot catch it.
        await publish_confirmed(
            state, _cancel_envelope(principal, conversation_id, None, "interrupted by a new message")
        )
    await store.queue_checked_turn(conn, conversation_id, turn_id, title)
    return policy


async def cancel_turn(
    state: GatewayState, principal: Principal, conversation_id: str, turn_id: str | None
) -> CancelAccepted:
    """Ask the worker to cancel one turn, or every open turn of the conversation (``*``)."""
    await authorize(state, principal, "conversation.cancel", conversation_id)
    if turn_id is not None and not await store.turn_exists(state.pool, conversation_id, turn_id):
        raise NotFound(f"no turn {turn_id} in conversation {conversation_id}")
    with tracer.start_as_current_span(
        "gateway cancel", kind=SpanKind.PRODUCER, attributes={"a0.conversation_id": conversation_id}
    ):
        await publish_confirmed(
            state, _cancel_envelope(principal, conversation_id, turn_id, "cancelled by user")
        )
    return CancelAccepted(conversation_id=conversation_id, turn_id=turn_id)
