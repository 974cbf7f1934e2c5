"""The gateway's HTTP/1.1 protocol: uvicorn's httptools one, with the request head bounded.

httptools sets no limit of its own. Here a head past ``A0_GATEWAY_MAX_HEADER_BYTES`` or
``A0_GATEWAY_MAX_HEADERS`` is answered 431 as soon as the limit is passed and the
connection closed (docs/messaging.md). The limits are class attributes, set by
:func:`configure` in each gateway process before it serves (uvicorn builds a protocol
per connection from the class alone).
"""

from __future__ import annotations

import json
import logging
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.common.envelope import new_id
from services.common.settings import GatewaySettings
from services.gateway.errors import REQUEST_ID_HEADER, error_body

log = logging.getLogger("a0.gateway")


class HeadTooLarge(Exception):
    """Raised from a parser callback: stops httptools at once (it then reports a callback
    error, which uvicorn answers through ``send_400_response``)."""


# After a refusal, what the client still sends is read and dropped this long before the
# connection is closed: closed with unread data, the socket is reset, and a client still
# sending its head would lose the 431 it was answered.
LINGER_S = 2.0


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes: ClassVar[int] = GatewaySettings.model_fields["max_header_bytes"].default
    max_headers: ClassVar[int] = GatewaySettings.model_fields["max_headers"].default

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._in_head = True  # between the end of a message (or the start) and its headers' end
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: str | None = None
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            room = self.max_head_bytes - self._head_bytes
            if len(data) > room:
                # Feed only what the limit allows; if the head has not ended by then, refuse.
                self._head_bytes = self.max_head_bytes
                super().data_received(data[:room])
                if self.transport.is_closing() or self._refused:
                    return
                if self._in_head:
                    self._refusal = f"the request head is larger than {self.max_head_bytes} bytes"
                    self.send_400_response(self._refusal)
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refusal = f"the request has more than {self.max_headers} header fields"
            raise HeadTooLarge(self._refusal)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        request_id = new_id()
        log.info("refused a request head (request %s): %s", request_id, self._refusal)
        body = json.dumps(
            error_body("headers_too_large", self._refusal, request_id), separators=(",", ":")
        ).encode()
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            REQUEST_ID_HEADER.lower().encode() + b": " + request_id.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._refused = True
        self.loop.call_later(LINGER_S, self.transport.close)


def configure(gateway: GatewaySettings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with this gateway's limits, for uvicorn's ``http``."""
    BoundedHttpToolsProtocol.max_head_bytes = gateway.max_header_bytes
    BoundedHttpToolsProtocol.max_headers = gateway.max_headers
    return BoundedHttpToolsProtocol
