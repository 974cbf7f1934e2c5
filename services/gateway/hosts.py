"""Which ``Host`` names the gateway answers to (``A0_GATEWAY_ALLOWED_HOSTS``).

A page of another site whose name is made to resolve to 127.0.0.1 (DNS rebinding) is, to
the browser, same-origin with the gateway: it could read answers, and with development
sign-in mint a token for any user. Its requests still carry its own name in ``Host``, so
while development sign-in is on only loopback names are answered (and any the operator
adds); with it off, the configured names, or any name when none are configured.

The check is Starlette's ``TrustedHostMiddleware``; only its refusal is answered in the
gateway's one error shape instead of plain text.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.settings import Settings
from services.gateway.errors import REQUEST_ID_HEADER, error_body

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_SEND = "a0.server_send"


def _as_in_host_header(name: str) -> str:
    """An IPv6 address as a Host header writes it: in brackets."""
    try:
        return f"[{name}]" if ipaddress.ip_address(name).version == 6 else name
    except ValueError:
        return name


def allowed_hosts(settings: Settings) -> list[str]:
    """The names to answer: see the module's docstring (``["*"]`` is any name)."""
    configured = list(settings.gateway.allowed_hosts)
    if settings.gateway.dev_login:
        configured = [*LOOPBACK_NAMES, settings.stack.host, *configured]
    return [_as_in_host_header(name) for name in dict.fromkeys(configured)] or ["*"]


class TrustedHosts(TrustedHostMiddleware):
    """Starlette's host check, refusing in the one error shape (400 ``invalid_host``)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        async def admitted(scope: Scope, receive: Receive, _: Send) -> None:
            # An admitted request is answered through the server's own send, untouched.
            await app(scope, receive, scope.pop(_SEND))

        super().__init__(admitted, allowed_hosts=allowed, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_SEND] = send

        async def refuse_in_shape(message: Message) -> None:
            # Only Starlette's own refusal (400, "Invalid host header") comes here: its
            # start is dropped and its body replaced by ours. On a WebSocket the types
            # carry a prefix.
            prefix = "websocket." if scope["type"] == "websocket" else ""
            if message["type"] == f"{prefix}http.response.body":
                await _refuse(scope, send, prefix)

        await super().__call__(scope, receive, refuse_in_shape)


async def _refuse(scope: Scope, send: Send, prefix: str) -> None:
    request_id = str(scope.get("state", {}).get("request_id", ""))
    body = error_body(
        "invalid_host",
        "the Host header names no host this gateway serves (A0_GATEWAY_ALLOWED_HOSTS)",
        request_id,
    )
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
    ]
    await send({"type": f"{prefix}http.response.start", "status": 400, "headers": headers})
    await send({"type": f"{prefix}http.response.body", "body": payload})
