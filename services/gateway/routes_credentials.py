"""The settings API for LLM provider credentials: ``/v1/settings/credentials``.

Keys go in, and come back only masked. Storage, encryption, verification against the
provider, OPA and the audit trail are the credential store's (services/common/credentials.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, Field, HttpUrl

from services.common.credentials import CredentialView
from services.common.errors import CredentialError, PolicyDenied
from services.gateway.deps import CurrentUser, State
from services.gateway.errors import ApiError, Forbidden, NotFound, error_responses

router = APIRouter(prefix="/v1/settings/credentials")
Provider = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="e.g. openai")]


class CredentialRejected(ApiError):
    code, status = "credential_rejected", 400


class CredentialProbe(BaseModel):
    base_url: HttpUrl = Field(description="An OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    api_key: str = Field(min_length=8, max_length=512, repr=False)


class SetCredential(CredentialProbe):
    model: str = Field(min_length=1, max_length=200)


class ConnectionTested(BaseModel):
    provider: str
    base_url: str
    models: list[str] = Field(description="The ids of the provider's /models list, sorted")


class CredentialList(BaseModel):
    credentials: list[CredentialView]


@router.get("", responses=error_responses(401, 403))
async def list_credentials(user: CurrentUser, state: State) -> CredentialList:
    try:
        views = await state.credentials.list_for(
            state.policy, actor=user.user_id, roles=user.roles, owner_id=user.user_id
        )
    except PolicyDenied as exc:
        raise Forbidden(exc.message) from None
    return CredentialList(credentials=views)


@router.put("/{provider}", responses=error_responses(400, 401, 403, 413, 422))
async def set_credential(
    provider: Provider, body: SetCredential, user: CurrentUser, state: State
) -> CredentialView:
    try:
        return await state.credentials.set(
            state.policy,
            actor=user.user_id,
            roles=user.roles,
            owner_id=user.user_id,
            provider=provider,
            base_url=str(body.base_url).rstrip("/"),
            model=body.model,
            api_key=body.api_key,
        )
    except PolicyDenied as exc:
        raise Forbidden(exc.message) from None
    except CredentialError as exc:
        raise CredentialRejected(exc.message) from None


@router.post("/{provider}/test", responses=error_responses(400, 401, 403, 413, 422))
async def test_credential(
    provider: Provider, body: CredentialProbe, user: CurrentUser, state: State
) -> ConnectionTested:
    """Try a key with the provider (``GET <base_url>/models``) without storing it, and list
    its models. 400 ``credential_rejected`` says why it failed; no answer repeats the key."""
    base_url = str(body.base_url).rstrip("/")
    try:
        models = await state.credentials.test(
            state.policy,
            actor=user.user_id,
            roles=user.roles,
            owner_id=user.user_id,
            provider=provider,
            base_url=base_url,
            api_key=body.api_key,
        )
    except PolicyDenied as exc:
        raise Forbidden(exc.message) from None
    except CredentialError as exc:
        raise CredentialRejected(exc.message) from None
    return ConnectionTested(provider=provider, base_url=base_url, models=models)


@router.delete(
    "/{provider}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 403, 404, 422)
)
async def remove_credential(provider: Provider, user: CurrentUser, state: State) -> Response:
    try:
        removed = await state.credentials.remove(
            state.policy, actor=user.user_id, roles=user.roles, owner_id=user.user_id, provider=provider
        )
    except PolicyDenied as exc:
        raise Forbidden(exc.message) from None
    if not removed:
        raise NotFound(f"no {provider} credential is stored")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
