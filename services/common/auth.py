"""JWT bearer tokens (HS256) signed with the gateway's key from the settings.

``a0ctl token --user NAME`` and the gateway's development sign-in mint them; the gateway
verifies them on every route but health.
"""

from __future__ import annotations

import re
import time

import jwt
from pydantic import BaseModel

from services.common.errors import A0Error, ConfigError
from services.common.settings import Settings

USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class AuthError(A0Error):
    code = "unauthorized"
    status = 401


class Principal(BaseModel):
    user_id: str
    roles: list[str]


def _key(settings: Settings) -> str:
    key = settings.gateway.jwt_secret.get_secret_value()
    if not key:
        raise ConfigError(
            "no JWT signing key configured", hint="run `a0ctl up` once to generate conf/env secrets"
        )
    return key


def mint_token(
    settings: Settings, user_id: str, roles: list[str] | None = None, ttl_s: int | None = None
) -> str:
    if not USER_ID.match(user_id):
        raise AuthError("user names are 1-64 letters, digits, '.', '_', '@' or '-'")
    now = int(time.time())
    claims = {
        "sub": user_id,
        "roles": roles or ["user"],
        "iss": settings.gateway.jwt_issuer,
        "iat": now,
        "exp": now + (ttl_s or settings.gateway.token_ttl_s),
    }
    return jwt.encode(claims, _key(settings), algorithm="HS256")


def verify_token(settings: Settings, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            _key(settings),
            algorithms=["HS256"],
            issuer=settings.gateway.jwt_issuer,
            options={"require": ["sub", "exp", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired; sign in again") from None
    except jwt.InvalidTokenError:
        raise AuthError("the token is not valid; sign in again") from None
    roles = claims.get("roles") or ["user"]
    return Principal(user_id=str(claims["sub"]), roles=[str(r) for r in roles])
