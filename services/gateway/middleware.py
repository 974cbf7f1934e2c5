"""The gateway's middleware, one pure-ASGI class per concern, in the order
:func:`middleware` lists them (outermost first): the request id (``X-Request-ID``), the
request metrics, the chat UI's security headers, the body size limit (Content-Length
checked up front, streamed bodies counted as they arrive), shedding (writes past the
process's limit of pending ones or while the database pool is congested, new messages
while the stack is at its limit of turns in flight), JSON bodies, trace sampling. Pure
ASGI, not ``BaseHTTPMiddleware``, so SSE streams pass through untouched."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import metrics, telemetry
from services.common.envelope import new_id
from services.common.settings import Settings
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


def request_id_of(scope: Scope) -> str:
    return str(scope.get("state", {}).get("request_id", ""))


def on_response_start(send: Send, start: Callable[[Message], None]) -> Send:
    """``send``, calling ``start`` with the response's start message before it goes out."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            start(message)
        await send(message)

    return sending


class RequestIds:
    """Every request gets an id (the caller's own when plain, else a new one), in
    ``scope["state"]`` for the handlers and in the answer's ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = pick_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        def add_id(message: Message) -> None:
            MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id

        await self.app(scope, receive, on_response_start(send, add_id))


class RequestMetrics:
    """Requests by method, route and status; latency of every answer but a stream's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, streaming = 500, False

        def record(message: Message) -> None:
            nonlocal status, streaming
            status = message["status"]
            streaming = (
                Headers(raw=message["headers"]).get("content-type", "").startswith("text/event-stream")
            )

        try:
            await self.app(scope, receive, on_response_start(send, record))
        finally:
            route = route_label(scope)
            metrics.REQUESTS.labels(scope.get("method", "GET"), route, str(status)).inc()
            if not streaming:  # an SSE stream's duration is a session length, not a latency
                metrics.REQUEST_LATENCY.labels(route).observe(time.perf_counter() - started)


class SecurityHeaders:
    """The browser's rules (:data:`SECURITY_HEADERS`) on every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def add_headers(message: Message) -> None:
            message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]

        await self.app(scope, receive, on_response_start(send, add_headers))


class BodyLimit:
    """A body over ``max_body_bytes`` is refused: at once (413) when its Content-Length
    says so, else while it is read (:class:`BodyTooLarge`, answered 413 by the app)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await reject(
                scope, send, 413, "payload_too_large", f"the request body is larger than {limit} bytes"
            )
            return
        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, receive_capped, send)


class Shedding:
    """Load the gateway refuses with 429 + Retry-After before sign-in, routing and the
    body, so a crowd retrying costs less than the turns it waits for: a write past the
    process's limit of pending ones, a write while a pool's worth of requests waits for
    PostgreSQL, a new message while the stack is at its limit of turns in flight."""

    def __init__(self, app: ASGIApp, *, max_pending_writes: int, max_inflight_turns: int) -> None:
        self.app = app
        self.max_inflight_turns = max_inflight_turns
        # Writes admitted and not yet answered in this process. Past the limit the process
        # is behind (a burst of sign-ins, say): a new write is refused at once, which
        # costs far less than queueing it behind the others.
        self.max_pending_writes = max_pending_writes
        self.pending_writes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        write = (
            scope["type"] == "http"
            and scope.get("method") in _WRITE_METHODS
            and scope.get("path", "").startswith("/v1/")
        )
        if not write:
            await self.app(scope, receive, send)
            return
        busy = None
        if self.pending_writes >= self.max_pending_writes:
            busy = "pending", "the gateway is busy with other requests"
        elif self._database_congested(scope):
            # Writes queued for a connection hold the streams' reads back behind them.
            busy = "database", "the gateway is waiting for database connections"
        if busy is not None:
            reason, why = busy
            metrics.SHED.labels(reason).inc()
            retry_after = ratelimit.PACER.retry_after(ratelimit.PENDING_RETRY_AFTER_S)
            await reject(scope, send, 429, "overloaded", f"{why}; try again shortly", retry_after=retry_after)
            return
        if scope.get("method") == "POST" and await self._at_turn_capacity(scope):
            # The handler checks again, exactly.
            shed = ratelimit.overloaded()
            await reject(scope, send, 429, shed.code, str(shed), retry_after=shed.retry_after)
            return
        pending = True
        self.pending_writes += 1

        def answered(_: Message) -> None:
            nonlocal pending
            if pending:
                pending = False
                self.pending_writes -= 1

        try:
            await self.app(scope, receive, on_response_start(send, answered))
        finally:
            if pending:
                self.pending_writes -= 1

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


class JsonBodies:
    """A JSON-only API: a body sent as form or text (``curl -d``) is read as JSON too,
    except sign-in's (see :data:`SIGN_IN_PATH`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") in _BODY_METHODS
            and not _is_json(Headers(scope=scope).get("content-type"))
            and scope.get("path") != SIGN_IN_PATH
        ):
            scope["headers"] = [
                (name, b"application/json" if name == b"content-type" else value)
                for name, value in scope["headers"]
            ]
        await self.app(scope, receive, send)


class FollowSampling:
    """Client spans only within a sampled request: an unsampled one costs none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with telemetry.follow_sampling():
            await self.app(scope, receive, send)


def middleware(settings: Settings, *inner: Middleware) -> list[Middleware]:
    """The gateway's middleware, outermost first, with ``inner`` (the Host check) inside
    shedding, so a refused Host still gets a request id, headers and a count."""
    gateway = settings.gateway
    return [
        Middleware(RequestIds),
        Middleware(RequestMetrics),
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_body_bytes=gateway.max_body_bytes),
        Middleware(
            Shedding,
            max_pending_writes=gateway.max_pending_writes,
            max_inflight_turns=gateway.max_inflight_turns,
        ),
        Middleware(JsonBodies),
        *inner,
        Middleware(FollowSampling),
    ]


async def reject(
    scope: Scope, send: Send, status: int, code: str, message: str, *, retry_after: int | None = None
) -> None:
    """Answer in the one error shape without calling the app (the body stays unread)."""
    body = json.dumps(error_body(code, message, request_id_of(scope)), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is None:
        headers.append((b"connection", b"close"))  # the unread body stays unread
    else:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
