"""One pure-ASGI middleware for every request: a request id (``X-Request-ID``), the body
size limit (Content-Length checked up front, streamed bodies counted as they arrive),
shedding of writes past the process's limit of pending ones and of new messages while
the stack is at its limit of turns in flight, the security headers of the chat UI, and
the request metrics. Pure ASGI, not ``BaseHTTPMiddleware``, so SSE streams
pass through untouched."""

from __future__ import annotations

import json
import re
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import metrics, telemetry
from services.common.envelope import new_id
from services.gateway import ratelimit
from services.gateway.deps import GatewayState
from services.gateway.errors import REQUEST_ID_HEADER, BodyTooLarge, error_body

# A caller's own request id is kept when it is short and plain, so it can be correlated.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A new message: a new turn, shed here while the stack is at its limit of turns in flight.
_MESSAGE_PATH = re.compile(r"/v1/conversations/[^/]+/messages")
# Sign-in takes only a body declared as JSON: a page of another site can send text or a
# form without asking first, but application/json only after a CORS preflight the
# gateway never grants. Its Content-Type is left as sent, for the route to check.
SIGN_IN_PATH = "/v1/auth/dev-login"

# The browser's rules for everything the gateway serves (docs/ui.md): scripts, styles and
# connections only from the gateway itself, no inline script, never inside a frame.
# Built once; each response only appends these pairs.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    )
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def declares_json(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (``application/json`` or ``…+json``)."""
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _is_json(content_type: str | None) -> bool:
    return content_type is None or declares_json(content_type)


def pick_request_id(incoming: str | None) -> str:
    if incoming and _CALLER_REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_id()


def route_label(scope: Scope) -> str:
    """The route template (``/v1/conversations/{conversation_id}``), never the raw path:
    unknown paths share one label so they cannot blow up the metric's cardinality."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class GatewayMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_pending_writes: int, max_inflight_turns: int
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_inflight_turns = max_inflight_turns
        # Writes admitted and not yet answered in this process. Past the limit the process
        # is behind (a burst of sign-ins, say): a new write is refused at once, which
        # costs far less than queueing it behind the others.
        self.max_pending_writes = max_pending_writes
        self.pending_writes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = pick_request_id(headers.get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] == "websocket":
            with telemetry.follow_sampling():
                await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500
        streaming = False
        limit = self.max_body_bytes

        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(
                send, request_id, 413, "payload_too_large", f"the request body is larger than {limit} bytes"
            )
            self._observe(scope, 413, started, streaming=False)
            return

        write = scope.get("method") in _WRITE_METHODS and scope.get("path", "").startswith("/v1/")
        busy = None
        if write and self.pending_writes >= self.max_pending_writes:
            busy = "pending", "the gateway is busy with other requests"
        elif write and self._database_congested(scope):
            # Writes queued for a connection hold the streams' reads back behind them.
            busy = "database", "the gateway is waiting for database connections"
        if busy is not None:
            reason, why = busy
            metrics.SHED.labels(reason).inc()
            await self._reject(
                send,
                request_id,
                429,
                "overloaded",
                f"{why}; try again shortly",
                retry_after=ratelimit.PACER.retry_after(ratelimit.PENDING_RETRY_AFTER_S),
            )
            self._observe(scope, 429, started, streaming=False)
            return
        if write and scope.get("method") == "POST" and await self._at_turn_capacity(scope):
            # Before sign-in, routing and the body: a crowd retrying after 429s must cost
            # less than the turns it waits for. The handler checks again, exactly.
            shed = ratelimit.overloaded()
            await self._reject(send, request_id, 429, shed.code, str(shed), retry_after=shed.retry_after)
            self._observe(scope, 429, started, streaming=False)
            return
        pending = write
        if pending:
            self.pending_writes += 1

        if (
            scope.get("method") in _BODY_METHODS
            and not _is_json(headers.get("content-type"))
            and scope.get("path") != SIGN_IN_PATH
        ):
            # A JSON-only API: a body sent as form or text (``curl -d``) is read as JSON too.
            scope["headers"] = [
                (name, b"application/json" if name == b"content-type" else value)
                for name, value in scope["headers"]
            ]

        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, streaming, pending
            if message["type"] == "http.response.start":
                if pending:
                    pending = False
                    self.pending_writes -= 1
                status = message["status"]
                response_headers = MutableHeaders(scope=message)
                response_headers[REQUEST_ID_HEADER] = request_id
                message["headers"].extend(SECURITY_HEADERS)  # the list MutableHeaders wraps
                streaming = response_headers.get("content-type", "").startswith("text/event-stream")
            await send(message)

        try:
            with telemetry.follow_sampling():  # an unsampled request costs no client spans
                await self.app(scope, receive_capped, send_with_id)
        finally:
            if pending:
                self.pending_writes -= 1
            self._observe(scope, status, started, streaming=streaming)

    @staticmethod
    def _gateway(scope: Scope) -> GatewayState | None:
        """The app's gateway state: None until it has started."""
        return getattr(getattr(scope.get("app"), "state", None), "gateway", None)

    async def _at_turn_capacity(self, scope: Scope) -> bool:
        if not _MESSAGE_PATH.fullmatch(scope.get("path", "")):
            return False
        gateway = self._gateway(scope)
        return gateway is not None and await gateway.open_turns.at_capacity(self.max_inflight_turns)

    def _database_congested(self, scope: Scope) -> bool:
        """A pool's worth of requests already waits for a PostgreSQL connection: a new
        write would wait behind them (``a0_db_pool_waiting``)."""
        gateway = self._gateway(scope)
        if gateway is None:
            return False
        stats = gateway.pool.get_stats()
        return bool(stats["requests_waiting"] >= stats["pool_max"])

    @staticmethod
    async def _reject(
        send: Send, request_id: str, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        body = json.dumps(error_body(code, message, request_id), separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
            *SECURITY_HEADERS,
        ]
        if retry_after is None:
            headers.append((b"connection", b"close"))  # the unread body stays unread
        else:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _observe(scope: Scope, status: int, started: float, *, streaming: bool) -> None:
        route = route_label(scope)
        metrics.REQUESTS.labels(scope.get("method", "GET"), route, str(status)).inc()
        if not streaming:  # an SSE stream's duration is a session length, not a latency
            metrics.REQUEST_LATENCY.labels(route).observe(time.perf_counter() - started)
