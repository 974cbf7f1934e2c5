"""Input that used to be accepted and then stall or fail downstream: NUL and lone
surrogates in text (PostgreSQL cannot store them), and JSON nested or sized to exhaust
the parser. Each is refused at the gateway, over HTTP and WebSocket, in the one error
shape; the stack keeps answering."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from services.common.auth import mint_token
from services.common.settings import Settings
from tests.support.gateway import answer_text, auth, create_conversation, send_and_collect

pytestmark = pytest.mark.hostile

NUL = "\\u0000"  # as JSON escapes: what a client sends on the wire
SURROGATE = "\\ud800"


def assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["request_id"]
    assert error["message"].split(":")[0].split(".")[-1] == field, error


async def assert_still_answers(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    conversation_id = await create_conversation(client, headers)
    events = await send_and_collect(client, headers, conversation_id, "compute 6*7")
    assert "42" in answer_text(events)


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "lone-surrogate"])
async def test_http_text_fields_refuse_nul_and_lone_surrogates(
    client: httpx.AsyncClient, settings: Settings, bad: str
) -> None:
    headers = {**auth(settings, "mallory"), "Content-Type": "application/json"}
    conversation_id = await create_conversation(client, headers)
    base = f"/v1/conversations/{conversation_id}"
    cases = [
        (
            await client.post(f"{base}/messages", content=f'{{"content": "hi{bad}there"}}', headers=headers),
            "content",
        ),
        (await client.post("/v1/conversations", content=f'{{"title": "t{bad}"}}', headers=headers), "title"),
        (await client.patch(base, content=f'{{"title": "t{bad}"}}', headers=headers), "title"),
        (await client.post(f"{base}/cancel", content=f'{{"turn_id": "t{bad}"}}', headers=headers), "turn_id"),
    ]
    for response, field in cases:
        assert_refused(response, field)
    await assert_still_answers(client, headers)


async def test_http_ids_in_the_path_refuse_nul(client: httpx.AsyncClient, settings: Settings) -> None:
    headers = auth(settings, "mallory")
    for response in (
        await client.get("/v1/conversations/a%00b", headers=headers),
        await client.post("/v1/conversations/a%00b/messages", json={"content": "hi"}, headers=headers),
        await client.get("/v1/conversations/a%00b/events", headers=headers),
    ):
        assert_refused(response, "conversation_id")


async def _ws(settings: Settings) -> Any:
    headers = {"Authorization": f"Bearer {mint_token(settings, 'mallory')}"}
    return websockets.connect(
        settings.gateway_url.replace("http", "ws") + "/v1/ws", additional_headers=headers
    )


async def _reply(ws: Any) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 10)))


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "lone-surrogate"])
async def test_websocket_text_fields_refuse_nul_and_lone_surrogates(
    client: httpx.AsyncClient, settings: Settings, bad: str
) -> None:
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    async with await _ws(settings) as ws:
        commands = [
            f'{{"type": "message", "conversation_id": "{conversation_id}", "content": "a{bad}b"}}',
            f'{{"type": "subscribe", "conversation_id": "c{bad}"}}',
            f'{{"type": "cancel", "conversation_id": "{conversation_id}", "turn_id": "t{bad}"}}',
        ]
        for command in commands:
            await ws.send(command)
            reply = await _reply(ws)
            assert reply["type"] == "error" and reply["error"]["code"] == "invalid_request", reply
            assert any(word in reply["error"]["message"] for word in ("NUL", "surrogate", "unicode")), reply
        # The connection is still good for a normal command.
        await ws.send(
            json.dumps({"type": "subscribe", "conversation_id": conversation_id, "request_id": "ok"})
        )
        assert (await _reply(ws))["type"] != "error"


async def test_websocket_refuses_deep_and_huge_json_and_stays_open(settings: Settings) -> None:
    async with await _ws(settings) as ws:
        await ws.send("[" * 5000 + "]" * 5000)
        reply = await _reply(ws)
        assert reply["type"] == "error" and "deeper than" in reply["error"]["message"], reply
        await ws.send(json.dumps({"type": "message", "conversation_id": "c", "content": "x" * 100_000}))
        reply = await _reply(ws)
        assert reply["type"] == "error" and reply["error"]["code"] == "payload_too_large", reply
        await ws.send(json.dumps({"type": "subscribe", "conversation_id": "c", "nested": [[[["ok"]]]]}))
        reply = await _reply(ws)
        assert reply.get("error", {}).get("code") != "internal", reply
