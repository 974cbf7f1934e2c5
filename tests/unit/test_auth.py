"""Sign-in that fits where the gateway runs: development sign-in only on a local stack on
loopback, and tokens of an external issuer (RS256/ES256) checked for key, iss and aud.

Key pairs are generated here with ``cryptography``; the JWKS case is served by a real
HTTP server on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import SecretStr

from services.common.auth import AuthError, check_sign_in, mint_token, verify_token
from services.common.errors import ConfigError
from services.common.settings import GatewaySettings, Settings, StackSettings, load_settings
from services.gateway.main import create_app

pytestmark = pytest.mark.unit

ISSUER = "https://id.example.test/"
AUDIENCE = "a0-gateway"


def _settings(stack: dict[str, Any] | None = None, **gateway: Any) -> Settings:
    base = load_settings()
    return base.model_copy(
        update={
            "stack": StackSettings(**{"host": "127.0.0.1", "env": "local", **(stack or {})}),
            "gateway": GatewaySettings(**{"jwt_secret": SecretStr("s" * 40), **gateway}),
        }
    )


def _pem(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _token(key: Any, algorithm: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm, headers={"kid": "k1"}
    )


# --- development sign-in -------------------------------------------------------------------


def test_dev_login_runs_on_a_local_stack_on_loopback() -> None:
    check_sign_in(_settings())
    check_sign_in(_settings({"host": "::1"}))


@pytest.mark.parametrize(
    ("stack", "why"),
    [
        ({"env": "production"}, "A0_ENV is 'production'"),
        ({"host": "0.0.0.0"}, "binds 0.0.0.0"),
        ({"host": "10.1.2.3", "env": "staging"}, "A0_ENV is 'staging'"),
    ],
)
def test_gateway_refuses_to_start_with_dev_login_elsewhere(stack: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError, match=why) as err:
        create_app(_settings(stack))
    assert "A0_GATEWAY_DEV_LOGIN=false" in str(err.value)


def test_dev_login_refuses_to_start_when_any_host_name_is_allowed() -> None:
    # A page rebound to 127.0.0.1 names its own host: '*' would let it sign in.
    with pytest.raises(ConfigError, match="A0_GATEWAY_ALLOWED_HOSTS lets any Host name in"):
        create_app(_settings(allowed_hosts=("*",)))
    create_app(_settings(allowed_hosts=("a0.localhost",)))  # named hosts are answered besides loopback
    create_app(_settings(allowed_hosts=("*",), dev_login=False))


def test_without_dev_login_the_gateway_starts_anywhere_and_answers_404() -> None:
    settings = _settings({"host": "0.0.0.0", "env": "production"}, dev_login=False)
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    assert client.post("/v1/auth/dev-login", json={"user": "alice"}).status_code == 404


# --- an external issuer --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_external_token_with_public_key_pem_is_accepted(
    kind: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key, algorithm = (rsa_key, "RS256") if kind == "rsa" else (ec_key, "ES256")
    settings = _settings(auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_public_key=_pem(key.public_key()))
    principal = verify_token(settings, _token(key, algorithm, roles=["user"]))
    assert principal.user_id == "carol" and principal.roles == ["user"]


@pytest.mark.parametrize(
    ("claims", "what"),
    [
        ({"iss": "https://evil.example.test/"}, "wrong issuer"),
        ({"aud": "someone-else"}, "wrong audience"),
        ({"aud": None}, "no audience"),
        ({"exp": int(time.time()) - 10}, "expired"),
    ],
)
def test_external_token_with_wrong_claims_is_refused(
    rsa_key: rsa.RSAPrivateKey, claims: dict[str, Any], what: str
) -> None:
    settings = _settings(
        auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_public_key=_pem(rsa_key.public_key())
    )
    with pytest.raises(AuthError):
        verify_token(settings, _token(rsa_key, "RS256", **claims))


def test_external_token_signed_by_another_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = _settings(
        auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_public_key=_pem(rsa_key.public_key())
    )
    with pytest.raises(AuthError):
        verify_token(settings, _token(other, "RS256"))


def test_public_key_used_as_an_hmac_secret_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    # Algorithm confusion: an HS256 token "signed" with the public PEM.
    pem = _pem(rsa_key.public_key())
    settings = _settings(auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_public_key=pem)
    with pytest.raises(AuthError):
        verify_token(settings, _hs256_with(pem))


def _hs256_with(secret: str) -> str:
    # PyJWT refuses PEM text as an HMAC key, so build the token by hand as an attacker would.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def test_own_tokens_still_work_beside_an_external_issuer(rsa_key: rsa.RSAPrivateKey) -> None:
    settings = _settings(
        auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_public_key=_pem(rsa_key.public_key())
    )
    assert verify_token(settings, mint_token(settings, "alice")).user_id == "alice"


def test_external_issuer_needs_iss_and_aud(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError, match="AUTH_ISSUER and A0_GATEWAY_AUTH_AUDIENCE"):
        check_sign_in(_settings(auth_public_key=_pem(rsa_key.public_key()), auth_issuer=ISSUER))


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Iterator[str]:
    keys = [
        {**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "k1", "alg": "RS256", "use": "sig"},
        {**json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "k2", "alg": "ES256", "use": "sig"},
    ]
    body = json.dumps({"keys": keys}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def test_external_token_checked_against_a_jwks_url(
    jwks_server: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    settings = _settings(auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_jwks_url=jwks_server)
    assert verify_token(settings, _token(rsa_key, "RS256")).user_id == "carol"
    ec_token = jwt.encode(
        {"sub": "dave", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60},
        ec_key,
        algorithm="ES256",
        headers={"kid": "k2"},
    )
    assert verify_token(settings, ec_token).user_id == "dave"
    with pytest.raises(AuthError):
        verify_token(settings, _token(rsa_key, "RS256", aud="someone-else"))
