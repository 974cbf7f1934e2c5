"""JWT bearer tokens: a0's own (HS256, the gateway's key from the settings) and, where
configured, those of an external issuer (RS256/ES256, checked against its public key or
JWKS, with its ``iss`` and ``aud``).

``a0ctl token --user NAME`` and the gateway's development sign-in mint a0's own; the
gateway verifies every token on every route but health. :func:`check_sign_in` is the
start-up check that keeps development sign-in to a local stack on loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from functools import cache
from pathlib import Path

import jwt
from pydantic import BaseModel

from services.common.errors import A0Error, ConfigError
from services.common.settings import Settings

# Matched whole (``fullmatch``): with ``match`` and ``$``, "alice\n" would pass as a name of
# its own, since ``$`` also matches before a final newline.
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def valid_user_id(user_id: str) -> bool:
    """Whether ``user_id`` is a user name: 1-64 letters, digits, '.', '_', '@' or '-',
    starting with a letter or digit, and nothing else (no trailing newline)."""
    return USER_ID.fullmatch(user_id) is not None


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
    if not valid_user_id(user_id):
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


EXTERNAL_ALGORITHMS = ["RS256", "ES256"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_sign_in(settings: Settings) -> None:
    """Refuse a configuration that would hand out tokens to anyone who can reach the port,
    or an external issuer without the claims that make its tokens ours to accept."""
    gateway = settings.gateway
    if gateway.dev_login:
        where = []
        if settings.stack.env != "local":
            where.append(f"A0_ENV is {settings.stack.env!r}, not 'local'")
        if not _is_loopback(settings.stack.host):
            where.append(f"the gateway binds {settings.stack.host}, not a loopback address")
        if "*" in gateway.allowed_hosts:
            where.append("A0_GATEWAY_ALLOWED_HOSTS lets any Host name in (a page rebound to 127.0.0.1)")
        if where:
            raise ConfigError(
                "development sign-in (A0_GATEWAY_DEV_LOGIN) gives a token for any user name, "
                "so it only runs on a local stack on loopback, but " + " and ".join(where),
                hint="set A0_GATEWAY_DEV_LOGIN=false and configure A0_GATEWAY_AUTH_* (docs/auth.md)",
            )
    if gateway.auth_public_key or gateway.auth_jwks_url:
        if not gateway.auth_issuer or not gateway.auth_audience:
            raise ConfigError(
                "an external token issuer needs both A0_GATEWAY_AUTH_ISSUER and A0_GATEWAY_AUTH_AUDIENCE",
                hint="they are checked against every token's iss and aud (docs/auth.md)",
            )
        if gateway.auth_public_key:
            _public_key(gateway.auth_public_key)  # fail now on an unreadable key


@cache
def _public_key(value: str) -> str:
    """PEM text, or the path of a PEM file."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read A0_GATEWAY_AUTH_PUBLIC_KEY: {exc}") from None


@cache
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)


def _external(settings: Settings, token: str) -> bool:
    """Whether ``token`` is for the external issuer (by its header; verified after)."""
    gateway = settings.gateway
    if not (gateway.auth_public_key or gateway.auth_jwks_url):
        return False
    try:
        return jwt.get_unverified_header(token).get("alg") in EXTERNAL_ALGORITHMS
    except jwt.InvalidTokenError:
        return False


def _decode_external(settings: Settings, token: str) -> dict[str, object]:
    gateway = settings.gateway
    if gateway.auth_public_key:
        key: object = _public_key(gateway.auth_public_key)
    else:
        try:
            key = _jwks_client(gateway.auth_jwks_url).get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError:
            raise AuthError("the token issuer's keys cannot be fetched right now; try again") from None
    return jwt.decode(
        token,
        key,  # type: ignore[arg-type]
        algorithms=EXTERNAL_ALGORITHMS,
        issuer=gateway.auth_issuer,
        audience=gateway.auth_audience,
        options={"require": ["sub", "exp", "iss", "aud"]},
    )


def verify_token(settings: Settings, token: str) -> Principal:
    """The principal of a valid token; :class:`AuthError` otherwise."""
    try:
        if _external(settings, token):
            claims = _decode_external(settings, token)
        else:
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
    user_id = str(claims["sub"])
    if not valid_user_id(user_id):
        raise AuthError("the token's subject is not a valid user name") from None
    roles = claims.get("roles") or ["user"]
    if not isinstance(roles, list):
        roles = ["user"]
    return Principal(user_id=user_id, roles=[str(r) for r in roles])


async def verify_token_async(settings: Settings, token: str) -> Principal:
    """:func:`verify_token`, off the event loop when it may have to fetch a JWKS."""
    if settings.gateway.auth_jwks_url and _external(settings, token):
        return await asyncio.to_thread(verify_token, settings, token)
    return verify_token(settings, token)
