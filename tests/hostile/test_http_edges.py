"""The gateway's HTTP edges, tried as an attacker would: another site's page rebound to
127.0.0.1, sign-in with a body a browser sends cross-site without asking, input that
used to end in a 500, a token whose subject ends in a newline, request heads of
megabytes or of thousands of fields, and the answers HTTP says a client may rely on
(``Allow`` on a 405, the documented type of ``/metrics``)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import Settings
from tests.support.gateway import answer_text, auth, create_conversation, send_and_collect

pytestmark = pytest.mark.hostile

REBOUND = "rebind.attacker.example"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    assert error["code"] == code and error["request_id"], error
    return error


async def assert_still_answers(client: httpx.AsyncClient, settings: Settings) -> None:
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    events = await send_and_collect(client, headers, conversation_id, "compute 6*7")
    assert "42" in answer_text(events)


# --- G: DNS rebinding and cross-site sign-in ---------------------------------------------


async def test_a_page_rebound_to_loopback_is_refused_whatever_it_asks(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    port = urlsplit(settings.gateway_url).port
    rebound = {"Host": f"{REBOUND}:{port}"}
    for response in (
        await client.get("/health", headers=rebound),
        await client.get("/", headers=rebound),
        await client.post("/v1/auth/dev-login", json={"user": "alice"}, headers=rebound),
        await client.get("/v1/conversations", headers={**rebound, **auth(settings, "alice")}),
    ):
        error = assert_error(response, 400, "invalid_host")
        assert "A0_GATEWAY_ALLOWED_HOSTS" in error["message"]
        assert response.headers["X-Request-ID"] == error["request_id"]
        assert "token" not in response.text
    # The names a local user's browser uses are answered.
    for host in ("localhost", "127.0.0.1", "[::1]"):
        response = await client.get("/health", headers={"Host": f"{host}:{port}"})
        assert response.status_code == 200, (host, response.text)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None],
    ids=["text", "text-charset", "form", "none"],
)
async def test_sign_in_takes_only_a_body_declared_json(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    # What a cross-site form or fetch() may send without a preflight: refused, no token.
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/v1/auth/dev-login", content=b'{"user": "alice"}', headers=headers)
    error = assert_error(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    assert "token" not in response.json()
    # The chat UI's own request (fetch with Content-Type: application/json) still signs in.
    response = await client.post("/v1/auth/dev-login", json={"user": "alice"})
    assert response.status_code == 200, response.text
    me = await client.get("/v1/me", headers={"Authorization": f"Bearer {response.json()['token']}"})
    assert me.json()["user_id"] == "alice"


# --- H: 422, not 500 -------------------------------------------------------------------------


async def test_nul_in_the_search_is_refused_as_invalid(client: httpx.AsyncClient, settings: Settings) -> None:
    headers = auth(settings, "mallory")
    error = assert_error(
        await client.get("/v1/conversations", params={"q": "a\x00b"}, headers=headers), 422, "invalid_request"
    )
    assert error["message"].startswith("query.q:") and "NUL" in error["message"], error
    response = await client.get("/v1/conversations", params={"q": "ab"}, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "last_event_id",
    [b"\xb2", "²".encode(), b"\xd9\xa3", b"9" * 4301, b"9" * 20, b"-1", b"1e3"],
    ids=[
        "superscript-two",
        "superscript-two-utf8",
        "arabic-three",
        "4301-digits",
        "past-bigint",
        "negative",
        "exp",
    ],
)
async def test_a_last_event_id_that_is_no_seq_is_refused_as_invalid(
    client: httpx.AsyncClient, settings: Settings, last_event_id: bytes
) -> None:
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    async with client.stream(
        "GET",
        f"/v1/conversations/{conversation_id}/events",
        headers={**{k.encode(): v.encode() for k, v in headers.items()}, b"Last-Event-ID": last_event_id},
        timeout=10,
    ) as response:
        assert response.status_code == 422, f"{response.status_code}: a stream opened"  # not read to its end
        await response.aread()
    error = assert_error(response, 422, "invalid_request")
    assert error["message"].startswith("Last-Event-ID:"), error
    await assert_still_answers(client, settings)


# --- I: a user name is matched whole ---------------------------------------------------------


async def test_a_subject_with_a_trailing_newline_is_not_a_user(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    now = int(time.time())
    for subject in ("alice\n", "alice\r\n", "\nalice"):
        claims = {"sub": subject, "iss": settings.gateway.jwt_issuer, "iat": now, "exp": now + 600}
        token = jwt.encode(claims, settings.gateway.jwt_secret.get_secret_value(), algorithm="HS256")
        error = assert_error(
            await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}), 401, "unauthorized"
        )
        assert "subject" in error["message"]
        sign_in = await client.post("/v1/auth/dev-login", json={"user": subject})
        assert_error(sign_in, 422, "invalid_request")


# --- L: bounded request heads ------------------------------------------------------------


async def _exchange(settings: Settings, head: bytes) -> bytes:
    """Send ``head`` in 64 KiB pieces, stopping as soon as the gateway answers; its answer."""
    url = urlsplit(settings.gateway_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        answer = asyncio.ensure_future(reader.read(65536))
        for start in range(0, len(head), 65536):
            if answer.done():
                break
            try:
                writer.write(head[start : start + 65536])
                await writer.drain()
            except ConnectionError:
                break  # refused and closed before the whole head was sent
        return await asyncio.wait_for(answer, 20)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ([b"X-Pad-%d: %s" % (i, b"a" * 8000) for i in range(1000)], b"larger than"),
        ([b"X-Big: " + b"a" * 8_000_000], b"larger than"),
        ([b"X-Many-%d: a" % i for i in range(20_000)], b"more than"),
    ],
    ids=["8-mb-of-fields", "one-8-mb-field", "20000-fields"],
)
async def test_a_huge_request_head_is_refused_with_431(
    client: httpx.AsyncClient, settings: Settings, fields: list[bytes], what: bytes
) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n"
    answer = await _exchange(settings, head)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:300]
    assert b'"code":"headers_too_large"' in rest and what in rest, rest
    # A request with a full set of ordinary headers is still served.
    ordinary = {f"X-Ordinary-{i}": "x" * 100 for i in range(60)}
    response = await client.get("/health", headers=ordinary)
    assert response.status_code == 200, response.text


# --- 6: what HTTP lets a client rely on --------------------------------------------------------


async def test_a_405_names_every_method_the_path_takes(client: httpx.AsyncClient, settings: Settings) -> None:
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    for method, path, allowed in (
        ("OPTIONS", "/v1/conversations", {"GET", "POST"}),
        ("PUT", f"/v1/conversations/{conversation_id}", {"GET", "PATCH", "DELETE"}),
        ("GET", "/v1/settings/credentials/openai", {"PUT", "DELETE"}),
        ("DELETE", "/health", {"GET"}),
    ):
        response = await client.request(method, path, headers=headers)
        assert_error(response, 405, "method_not_allowed")
        assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed, (method, path)


async def test_metrics_are_documented_as_the_prometheus_text_they_are(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    documented = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(documented) == ["text/plain"], documented
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert "a0_gateway_requests" in names, sorted(names)[:20]
