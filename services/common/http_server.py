"""Serving an ASGI app with uvicorn, without waking an idle process ten times a second.

uvicorn's server loop sleeps 0.1 s at a time between its checks: refresh the ``Date``
header (once a second) and see whether a signal asked it to stop. That is ten wake-ups a
second in a process with nothing to do. :class:`QuietServer` makes the same checks once
a second, the header's own granularity, and a stop signal wakes it at once, so shutting
down takes no longer than before.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from services.common.ticks import until_tick

TICK_S = 1.0
# uvicorn's on_tick refreshes the default headers when its counter is a multiple of this
# (its ticks are 0.1 s apart): each of ours is a second, so each refreshes them.
_TICKS_PER_S = 10


class QuietServer(uvicorn.Server):
    """A uvicorn server whose loop wakes once a second, or at once on a stop signal."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + _TICKS_PER_S) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), until_tick(TICK_S))
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)


def run(app: Any, **options: Any) -> None:
    """``uvicorn.run(app, **options)`` for one process, with :class:`QuietServer`: serve
    until a signal, and exit with uvicorn's start-up failure status if it never started
    (the port taken, the app's lifespan failed), as ``uvicorn.run`` does."""
    config = uvicorn.Config(app, **options)
    server = QuietServer(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
