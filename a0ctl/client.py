"""The one client of the gateway's public REST + SSE API: its paths, bearer header, error
body and event stream (used as they are by ``a0ctl load``'s aiohttp sessions and the
tests' helpers), and ``GatewayClient`` on them for ``a0ctl smoke``, ``chat``, ``roadmap``::

    async with GatewayClient.for_user(settings, "alice") as client:
        conversation_id = await client.create_conversation("hello")
        events = await client.send_and_collect(conversation_id, "compute 6*7", timeout=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from services.common.auth import mint_token
from services.common.envelope import TERMINAL_EVENTS
from services.common.errors import A0Error
from services.common.retry import backoff
from services.common.settings import Settings
from services.common.sse import SseParser

TERMINAL_TYPES = frozenset(str(event_type) for event_type in TERMINAL_EVENTS)
STREAM_RETRIES = 5
CONVERSATIONS = "/v1/conversations"


# --- the API's wire: shared by every client of the gateway ---------------------------------
def conversation_path(conversation_id: str, *rest: str) -> str:
    """``/v1/conversations/<id>`` and below (``"messages"``, ``"events"``, ``"cancel"``)."""
    return "/".join((CONVERSATIONS, conversation_id, *rest))


def bearer(settings: Settings, user_id: str) -> dict[str, str]:
    """The Authorization header of ``user_id``, with a token signed by the stack's key."""
    return {"Authorization": f"Bearer {mint_token(settings, user_id)}"}


def error_of(body: bytes) -> tuple[str, str, str | None] | None:
    """(code, message, request id) of the gateway's error body; None for any other body."""
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error["message"]), error.get("request_id")
    except (ValueError, KeyError, TypeError):
        return None


async def read_events(lines: AsyncIterable[str]) -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    """The events of an SSE stream's lines: each event's JSON with the SSE message
    (``id``, ``event``) it came in."""
    parser = SseParser()
    async for line in lines:
        message = parser.feed(line)
        if message is not None:
            yield json.loads(message["data"]), message


class GatewayError(A0Error):
    """The gateway answered with an error (or could not be reached)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "unavailable",
        status: int = 0,
        request_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status
        self.request_id = request_id


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    code, message, request_id = error_of(response.content) or (
        "http_error",
        f"HTTP {response.status_code}",
        None,
    )
    hint = f"retry after {response.headers['Retry-After']} s" if "Retry-After" in response.headers else None
    raise GatewayError(
        f"{code}: {message}", code=code, status=response.status_code, request_id=request_id, hint=hint
    )


class GatewayClient:
    def __init__(self, base_url: str, token: str, *, http: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http or httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            # Reads may wait for the next event; the server pings every 15 s.
            timeout=httpx.Timeout(30.0, read=60.0),
        )

    @classmethod
    @asynccontextmanager
    async def for_user(cls, settings: Settings, user_id: str) -> AsyncIterator[GatewayClient]:
        """A client speaking for ``user_id``, with a token signed by the stack's key."""
        client = cls(settings.gateway_url, mint_token(settings, user_id))
        try:
            yield client
        finally:
            await client.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise GatewayError(
                f"cannot reach the gateway at {self.base_url}: {type(exc).__name__}",
                hint="is the stack up? see `a0ctl status`",
            ) from exc
        _raise_for_error(response)
        return response.json()

    async def create_conversation(self, title: str | None = None, policy: str | None = None) -> str:
        body = {key: value for key, value in {"title": title, "policy": policy}.items() if value is not None}
        created = await self._request("POST", CONVERSATIONS, json=body)
        return str(created["id"])

    async def get_conversation(self, conversation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", conversation_path(conversation_id))
        return result

    async def send(self, conversation_id: str, content: str) -> dict[str, Any]:
        """Post a message; returns the 202 body ``{conversation_id, message_id, turn_id}``."""
        result: dict[str, Any] = await self._request(
            "POST", conversation_path(conversation_id, "messages"), json={"content": content}
        )
        return result

    async def cancel(self, conversation_id: str, turn_id: str | None = None) -> dict[str, Any]:
        body = {"turn_id": turn_id} if turn_id else {}
        result: dict[str, Any] = await self._request(
            "POST", conversation_path(conversation_id, "cancel"), json=body
        )
        return result

    async def stream_events(self, conversation_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Every event of the conversation after seq ``after``, as it happens, forever.

        A dropped stream is resumed from the last seq received (``Last-Event-ID``), so
        nothing is missed and nothing repeats; errors are raised after a few failed tries.
        """
        last = after
        failures = 0
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    conversation_path(conversation_id, "events"),
                    params={"after": last},
                    headers={"Accept": "text/event-stream", "Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        _raise_for_error(response)
                    async for event, _ in read_events(response.aiter_lines()):
                        seq = int(event.get("seq", 0))
                        if seq <= last:
                            continue
                        last, failures = seq, 0
                        yield event
            except httpx.TransportError as exc:
                failures += 1
                if failures > STREAM_RETRIES:
                    raise GatewayError(
                        f"the event stream of {conversation_id} keeps failing: {exc!r}"
                    ) from exc
            await asyncio.sleep(backoff(failures, base=0.2, cap=5.0))

    @asynccontextmanager
    async def turn(
        self, conversation_id: str, content: str, *, after: int | None = None
    ) -> AsyncIterator[Turn]:
        """Follow the conversation from its current end, post ``content``, and hand back a
        :class:`Turn` that iterates the events of that turn until a terminal one."""
        if after is None:
            after = int((await self.get_conversation(conversation_id))["last_seq"])
        queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in self.stream_events(conversation_id, after):
                    queue.put_nowait(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # handed to the reader, which raises it
                queue.put_nowait(exc)

        follower = asyncio.create_task(pump())
        try:
            accepted = await self.send(conversation_id, content)
            yield Turn(accepted, queue)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def send_and_collect(
        self, conversation_id: str, content: str, timeout: float
    ) -> list[dict[str, Any]]:
        """Post a message and return every event of its turn, the terminal one last."""
        collected: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout), self.turn(conversation_id, content) as turn:
                async for event in turn:
                    collected.append(event)
        except TimeoutError:
            types = [event.get("type") for event in collected]
            raise GatewayError(f"the turn did not end within {timeout:g} s; events so far: {types}") from None
        return collected


class Turn:
    """The events of one turn, in order, ending with message.completed, error or cancelled."""

    def __init__(
        self, accepted: dict[str, Any], queue: asyncio.Queue[dict[str, Any] | BaseException]
    ) -> None:
        self.accepted = accepted
        self.turn_id = str(accepted["turn_id"])
        self.last_seq = 0
        self._queue = queue

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._events()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            self.last_seq = max(self.last_seq, int(item.get("seq", 0)))
            if item.get("turn_id") != self.turn_id:
                continue
            yield item
            if item.get("type") in TERMINAL_TYPES:
                return
