"""REST under ``/v1``: sign-in for development, who am I, conversations, messages, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from services.common.auth import mint_token
from services.gateway import handlers
from services.gateway.deps import CurrentUser, Db, SettingsDep, State
from services.gateway.errors import NotFound, UnsupportedMediaType, error_responses
from services.gateway.middleware import declares_json
from services.gateway.models import (
    CancelAccepted,
    CancelTurn,
    ConversationCreated,
    ConversationDetail,
    ConversationId,
    ConversationList,
    ConversationSummary,
    CreateConversation,
    DevLogin,
    Me,
    MessageAccepted,
    PostMessage,
    Text,
    Token,
    UpdateConversation,
)

router = APIRouter(prefix="/v1")


async def dev_sign_in(request: Request, settings: SettingsDep) -> None:
    """Development sign-in is on, and the body is declared ``application/json``: a page of
    another site cannot send that without a CORS preflight, which the gateway never grants
    (see ``middleware.SIGN_IN_PATH``)."""
    if not settings.gateway.dev_login:
        raise NotFound("nothing at POST /v1/auth/dev-login")
    if not declares_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("sign-in takes a JSON body: send Content-Type: application/json")


@router.post(
    "/auth/dev-login",
    dependencies=[Depends(dev_sign_in)],
    responses=error_responses(400, 404, 413, 415, 422),
)
async def dev_login(body: DevLogin, settings: SettingsDep) -> Token:
    """A token for any user name — only where ``A0_GATEWAY_DEV_LOGIN`` is on, for a body
    sent as ``Content-Type: application/json``."""
    token = mint_token(settings, body.user)
    return Token(token=token, user_id=body.user, expires_in=settings.gateway.token_ttl_s)


@router.get("/me", responses=error_responses(401))
async def me(user: CurrentUser) -> Me:
    return Me(user_id=user.user_id, roles=user.roles)


@router.post(
    "/conversations",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(400, 401, 403, 413, 422, 429),
)
async def create_conversation(
    user: CurrentUser, state: State, body: CreateConversation | None = None
) -> ConversationCreated:
    return await handlers.create_conversation(state, user, body or CreateConversation())


@router.get("/conversations", responses=error_responses(401, 403, 422))
async def list_conversations(
    user: CurrentUser,
    state: State,
    conn: Db,
    q: Annotated[
        Text | None, Query(max_length=200, description="Only conversations whose title contains this text.")
    ] = None,
) -> ConversationList:
    """The caller's conversations, most recently active first."""
    return ConversationList(conversations=await handlers.list_conversations(state, conn, user, q))


@router.get("/conversations/{conversation_id}", responses=error_responses(401, 404, 422))
async def get_conversation(
    conversation_id: ConversationId, user: CurrentUser, state: State, conn: Db
) -> ConversationDetail:
    return await handlers.conversation_detail(state, conn, user, conversation_id)


@router.patch("/conversations/{conversation_id}", responses=error_responses(400, 401, 403, 404, 413, 422))
async def update_conversation(
    conversation_id: ConversationId, body: UpdateConversation, user: CurrentUser, state: State
) -> ConversationSummary:
    """Rename the conversation (``title``) or change its turn ``policy``. 404 when it does
    not exist or is someone else's; 403 when the caller may see it but not change it."""
    return await handlers.update_conversation(state, user, conversation_id, body)


@router.delete(
    "/conversations/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, 422),
)
async def delete_conversation(conversation_id: ConversationId, user: CurrentUser, state: State) -> Response:
    """Delete the conversation and its whole history. 404 when it does not exist or is
    someone else's (a user cannot probe other users' ids); 403 when the caller may see it
    but the policy refuses the deletion (an admin, for another user's conversation)."""
    await handlers.delete_conversation(state, user, conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/conversations/{conversation_id}/messages",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429),
)
async def post_message(
    conversation_id: ConversationId, body: PostMessage, user: CurrentUser, state: State
) -> MessageAccepted:
    return await handlers.submit_message(state, user, conversation_id, body.content)


@router.post(
    "/conversations/{conversation_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
async def cancel(
    conversation_id: ConversationId, user: CurrentUser, state: State, body: CancelTurn | None = None
) -> CancelAccepted:
    return await handlers.cancel_turn(state, user, conversation_id, body.turn_id if body else None)
