"""Dead letters for ``a0ctl dlq``: the one implementation in :mod:`services.common.dlq`,
acted on as the login and host a0ctl runs as, through a0ctl's own principal."""

from __future__ import annotations

import getpass
import socket

from services.common import dlq
from services.common.settings import Settings

CLIENT_ID = "a0ctl-dlq"


def operator() -> str:
    """Who acts: the login and host a0ctl runs as."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


async def replay(
    settings: Settings, entry: str | None, topic: str | None = None, *, force: bool = False
) -> dlq.ActionResult:
    return await dlq.replay(settings, entry, topic, by=operator(), client_id=CLIENT_ID, force=force)


async def discard(settings: Settings, entry: str | None, topic: str | None = None) -> dlq.ActionResult:
    return await dlq.discard(settings, entry, topic, by=operator(), client_id=CLIENT_ID)
