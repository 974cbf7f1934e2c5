"""One aiohttp session per client object, opened on first use inside the event loop that
uses it (a session is bound to its loop), reopened if it was closed, closed with it."""

from __future__ import annotations

import aiohttp


class LazySession:
    def __init__(
        self, *, connections: int, timeout: aiohttp.ClientTimeout, read_bufsize: int = 2**16
    ) -> None:
        self._connections = connections
        self._timeout = timeout
        self._read_bufsize = read_bufsize
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=self._timeout,
                read_bufsize=self._read_bufsize,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
