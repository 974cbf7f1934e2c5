"""Live events: ``GET /v1/conversations/{id}/events`` (SSE) and ``/v1/ws`` (WebSocket).

Both carry each event as ``Envelope.client_event()`` and resume from a seq cursor (SSE:
``Last-Event-ID`` or ``?after=``; WebSocket: ``subscribe.after``). Messages and cancels
over the WebSocket go through :mod:`services.gateway.handlers`, like REST.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, WebSocket, WebSocketDisconnect
from pydantic import TypeAdapter, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from services.common import metrics
from services.common.auth import AuthError, Principal
from services.common.db import recheck_if_lost
from services.common.envelope import Envelope, new_id
from services.common.errors import is_transient
from services.gateway import handlers
from services.gateway.deps import (
    GatewayState,
    State,
    StreamUser,
    authenticate,
    bearer_token,
    refuse_url_token,
)
from services.gateway.errors import (
    ApiError,
    InvalidRequest,
    Unauthorized,
    error_body,
    error_responses,
    validation_message,
)
from services.gateway.fanout import SlowConsumer, Subscription
from services.gateway.models import ConversationId, WsCancel, WsCommand, WsMessage, WsSubscribe, WsUnsubscribe
from services.gateway.textcheck import MAX_JSON_DEPTH, json_too_deep

log = logging.getLogger("a0.gateway.stream")

router = APIRouter()

PING_S = 15
WS_UNAUTHORIZED = 4401
WS_TRY_AGAIN_LATER = 1013
WS_AUTH_TIMEOUT_S = 10.0
WS_AUTH_EXPECTED = (
    'send "Authorization: Bearer <token>" or a first message {"type": "auth", "token": "<token>"}'
)
_COMMAND: TypeAdapter[WsCommand] = TypeAdapter(WsCommand)
_COMMAND_TYPES = frozenset({"subscribe", "unsubscribe", "message", "cancel"})


# An event seq as a client may give it: up to 18 ASCII digits, so within PostgreSQL's
# bigint. Documented as the Last-Event-ID header's pattern, so the schema says what is
# accepted (empty: no cursor, as the header absent).
SEQ_DIGITS = 18
MAX_SEQ = 10**SEQ_DIGITS - 1
_SEQ = re.compile(rf"[0-9]{{0,{SEQ_DIGITS}}}")


def resume_cursor(last_event_id: str | None, after: int | None) -> int:
    """Where a stream resumes: ``Last-Event-ID`` (sent by a reconnecting EventSource) wins
    over ``?after=``; neither means from the beginning."""
    if last_event_id:
        # Matched whole and ASCII only: str.isdigit() also takes '²', which int() refuses,
        # and int() refuses more than 4,300 digits.
        if not _SEQ.fullmatch(last_event_id):
            raise InvalidRequest(f"Last-Event-ID: must be an event seq, 0 to {SEQ_DIGITS} digits")
        return int(last_event_id)
    return after or 0


def sse_event(envelope: Envelope) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(envelope.client_event(), separators=(",", ":")),
        event=str(envelope.type),
        id=str(envelope.seq),
    )


async def _sse_stream(subscription: Subscription) -> AsyncIterator[ServerSentEvent]:
    metrics.CLIENTS.labels("sse").inc()
    try:
        async with subscription as events:
            async for envelope in events:
                metrics.EVENTS_FANNED_OUT.labels(str(envelope.type)).inc()
                yield sse_event(envelope)
    except SlowConsumer as exc:
        log.info("closing SSE stream of %s: %s", subscription.conversation_id, exc)  # the client resumes
    finally:
        metrics.CLIENTS.labels("sse").dec()


class _EventStream(EventSourceResponse):
    """An SSE response that closes its subscription however it ends: also when it is
    never iterated (a client gone before the first event, a ``HEAD``)."""

    def __init__(self, subscription: Subscription) -> None:
        super().__init__(_sse_stream(subscription), ping=PING_S, headers={"X-Accel-Buffering": "no"})
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.subscription.close()


# Each event of the stream (comment lines, the keep-alive pings, are not events).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "The event's seq (what Last-Event-ID resumes after)."},
        "event": {"type": "string", "description": "Its type, e.g. message.delta."},
        "data": {
            "type": "string",
            "description": "The event as JSON: id, type, conversation_id, turn_id, user_id, seq, ts, payload.",
        },
    },
    "required": ["id", "event", "data"],
}


@router.get(
    "/v1/conversations/{conversation_id}/events",
    response_class=Response,
    responses={
        200: {
            "description": "The conversation's events as Server-Sent Events, one per seq",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **error_responses(401, 404, 422),
    },
)
async def conversation_events(
    conversation_id: ConversationId,
    user: StreamUser,
    state: State,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="Resume after this seq.")] = None,
    last_event_id: Annotated[
        str,
        Header(
            description="Resume after this seq (what a reconnecting EventSource sends); wins over after.",
            json_schema_extra={"pattern": f"^{_SEQ.pattern}$"},
        ),
    ] = "",
) -> EventSourceResponse:
    cursor = resume_cursor(last_event_id, after)
    return _EventStream(await handlers.open_stream(state, user, conversation_id, cursor))


# --- WebSocket ------------------------------------------------------------------------


class WsSession:
    """One WebSocket: its subscriptions (one task each) and its commands."""

    def __init__(self, websocket: WebSocket, state: GatewayState, principal: Principal) -> None:
        self.websocket = websocket
        self.state = state
        self.principal = principal
        self._send_lock = asyncio.Lock()
        self._follows: dict[str, asyncio.Task[None]] = {}

    async def send(self, data: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(data, separators=(",", ":")))

    async def send_error(
        self, code: str, message: str, request_id: str | None, conversation_id: str | None = None
    ) -> None:
        reply: dict[str, Any] = {"type": "error", **error_body(code, message, request_id or new_id())}
        if conversation_id:
            reply["conversation_id"] = conversation_id
        await self.send(reply)

    async def ack(
        self,
        request_id: str | None,
        conversation_id: str,
        message_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        await self.send(
            {
                "type": "ack",
                "request_id": request_id or new_id(),
                "conversation_id": conversation_id,
                "message_id": message_id,
                "turn_id": turn_id,
            }
        )

    async def run(self) -> None:
        metrics.CLIENTS.labels("ws").inc()
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                if raw is None and message.get("bytes") is not None:
                    raw = message["bytes"].decode(errors="replace")
                await self.handle(raw or "")
        except WebSocketDisconnect:
            return
        finally:
            metrics.CLIENTS.labels("ws").dec()
            for task in self._follows.values():
                task.cancel()
            await asyncio.gather(*self._follows.values(), return_exceptions=True)

    async def handle(self, raw: str) -> None:
        request_id: str | None = None
        conversation_id: str | None = None
        try:
            if len(raw.encode()) > self.state.settings.gateway.max_body_bytes:
                await self.send_error(
                    "payload_too_large",
                    f"the message is larger than {self.state.settings.gateway.max_body_bytes} bytes",
                    None,
                )
                return
            if json_too_deep(raw):
                await self.send_error(
                    "invalid_request", f"the message nests JSON deeper than {MAX_JSON_DEPTH} levels", None
                )
                return
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                await self.send_error("malformed_json", f"the message is not valid JSON: {exc.msg}", None)
                return
            if isinstance(data, dict):
                request_id = data.get("request_id") if isinstance(data.get("request_id"), str) else None
                conversation_id = (
                    data.get("conversation_id") if isinstance(data.get("conversation_id"), str) else None
                )
            try:
                command = _COMMAND.validate_python(data)
            except ValidationError as exc:
                _, text = validation_message(exc.errors(), _COMMAND_TYPES)
                await self.send_error("invalid_request", text, request_id, conversation_id)
                return
            await self.dispatch(command)
        except ApiError as exc:
            await self.send_error(exc.code, exc.message, request_id, conversation_id)
        except AuthError as exc:
            await self.send_error("unauthorized", exc.message, request_id, conversation_id)
        except WebSocketDisconnect:
            raise
        except Exception as exc:  # a bug answers this command, it does not drop the connection
            if is_transient(exc):
                log.warning("ws command failed: %s: %s", type(exc).__name__, exc)
                recheck_if_lost(exc)
                await self.send_error(
                    "unavailable", "a backing service is unavailable; try again", request_id, conversation_id
                )
                return
            log.exception("ws command failed")
            await self.send_error(
                "internal",
                "internal error; quote the request id when reporting it",
                request_id,
                conversation_id,
            )

    async def dispatch(self, command: WsCommand) -> None:
        cid = command.conversation_id
        if isinstance(command, WsSubscribe):
            subscription = await handlers.open_stream(self.state, self.principal, cid, command.after)
            try:
                await self._stop_following(cid)
                await self.ack(command.request_id, cid)
            except BaseException:
                subscription.close()
                raise
            follow = asyncio.create_task(self._follow(subscription, command.request_id))
            follow.add_done_callback(lambda _: subscription.close())  # also if cancelled before it ran
            self._follows[cid] = follow
        elif isinstance(command, WsUnsubscribe):
            await self._stop_following(cid)
            await self.ack(command.request_id, cid)
        elif isinstance(command, WsMessage):
            accepted = await handlers.submit_message(self.state, self.principal, cid, command.content)
            await self.ack(command.request_id, cid, accepted.message_id, accepted.turn_id)
        elif isinstance(command, WsCancel):
            cancelled = await handlers.cancel_turn(self.state, self.principal, cid, command.turn_id)
            await self.ack(command.request_id, cid, None, cancelled.turn_id)

    async def _stop_following(self, conversation_id: str) -> None:
        task = self._follows.pop(conversation_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, subscription: Subscription, request_id: str | None) -> None:
        conversation_id = subscription.conversation_id
        try:
            async with subscription as events:
                async for envelope in events:
                    await self.send(envelope.client_event())
                    metrics.EVENTS_FANNED_OUT.labels(str(envelope.type)).inc()
        except SlowConsumer as exc:
            log.info("closing WebSocket following %s: %s", conversation_id, exc)
            with contextlib.suppress(Exception):
                await self.websocket.close(
                    WS_TRY_AGAIN_LATER, "too slow: reconnect and resubscribe with after"
                )
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            log.debug("ws subscription to %s ended: %s", conversation_id, exc)  # the socket is gone
        except Exception as exc:
            if not is_transient(exc):
                log.exception("ws subscription to %s failed", conversation_id)
                return
            log.warning("ws subscription to %s failed: %s", conversation_id, exc)
            with contextlib.suppress(Exception):
                await self.send_error(
                    "unavailable",
                    "event history is unavailable; subscribe again",
                    request_id,
                    conversation_id,
                )
        finally:
            if self._follows.get(conversation_id) is asyncio.current_task():
                del self._follows[conversation_id]


async def _websocket_token(websocket: WebSocket) -> str | None:
    """The token of a WebSocket: its ``Authorization`` header, or — for browsers, which
    cannot set one — a first message ``{"type": "auth", "token": "..."}`` sent within
    :data:`WS_AUTH_TIMEOUT_S`. Never a query parameter: URLs are logged and traced."""
    refuse_url_token(websocket.query_params)
    token = bearer_token(websocket.headers.get("authorization"))
    if token:
        return token
    try:
        message = await asyncio.wait_for(websocket.receive(), WS_AUTH_TIMEOUT_S)
    except TimeoutError as exc:
        raise Unauthorized(WS_AUTH_EXPECTED) from exc
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    try:
        data = json.loads(message.get("text") or message.get("bytes") or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Unauthorized(WS_AUTH_EXPECTED) from exc
    if not isinstance(data, dict) or data.get("type") != "auth" or not isinstance(data.get("token"), str):
        raise Unauthorized(WS_AUTH_EXPECTED)
    return data["token"]


@router.websocket("/v1/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        token = await _websocket_token(websocket)
        principal = await authenticate(websocket.app.state.settings, token)
    except WebSocketDisconnect:
        return
    except (AuthError, ApiError) as exc:
        await websocket.close(WS_UNAUTHORIZED, exc.message[:120])
        return
    state: GatewayState | None = getattr(websocket.app.state, "gateway", None)
    if state is None:
        await websocket.close(WS_TRY_AGAIN_LATER, "the gateway is starting")
        return
    await WsSession(websocket, state, principal).run()
