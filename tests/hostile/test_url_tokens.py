"""A token in a URL is refused, on the event stream and the WebSocket alike, with a
message that says where it belongs: URLs are kept by proxies, access logs and traces."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from services.common.auth import mint_token
from services.common.settings import Settings
from tests.support.gateway import auth, create_conversation

pytestmark = pytest.mark.hostile


async def test_the_event_stream_refuses_a_token_in_its_url(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    token = mint_token(settings, "alice")
    for query in (f"access_token={token}", f"after=0&token={token}"):
        response = await client.get(f"/v1/conversations/{conversation_id}/events?{query}")
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["code"] == "unauthorized"
        assert "Authorization: Bearer" in error["message"] and "URL" in error["message"]
    # Even next to a valid header: a client that puts it in the URL learns at once.
    refused = await client.get(
        f"/v1/conversations/{conversation_id}/events?access_token={token}", headers=headers
    )
    assert refused.status_code == 401


async def test_the_websocket_refuses_a_token_in_its_url(settings: Settings) -> None:
    token = mint_token(settings, "alice")
    url = settings.gateway_url.replace("http", "ws") + f"/v1/ws?access_token={token}"
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert "Authorization: Bearer" in closed.value.rcvd.reason


async def test_the_websocket_signs_in_with_its_first_message_or_closes(settings: Settings) -> None:
    url = settings.gateway_url.replace("http", "ws") + "/v1/ws"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "conversation_id": "c1"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert '"type": "auth"' in closed.value.rcvd.reason

    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": mint_token(settings, "alice")}))
        await ws.send(json.dumps({"type": "subscribe", "conversation_id": "nope", "request_id": "r1"}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert answer["type"] == "error" and answer["error"]["request_id"] == "r1", answer
    assert answer["error"]["code"] == "not_found", answer
