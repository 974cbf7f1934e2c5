"""The ops page (``/ops``) and its API (``/v1/ops/...``), for admins only.

OPA decides (``ops.read`` to look, ``ops.act`` to replay or discard a dead letter; both
need the role ``admin`` in the token). Anyone else gets the answer an unknown path gets,
404, so the API does not tell that it exists. The page itself is a static shell like the
chat's (no data in it); it asks ``/v1/ops/access`` with the session's token and shows
"not found" on a 404. What each endpoint reads is in :mod:`services.gateway.console`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse

from services.common import dlq
from services.common.auth import Principal
from services.common.errors import DeadLetterError, DeadLetterNotFound
from services.gateway.console import RANGES, Console, UpstreamUnavailable
from services.gateway.deps import CurrentUser, State
from services.gateway.errors import Conflict, InvalidRequest, NotFound, error_responses
from services.gateway.routes_ops import dependency_checks

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter()
api = APIRouter(prefix="/v1/ops", tags=["ops"], responses=error_responses(401, 404, 422))


def console_of(request: Request) -> Console:
    console: Console | None = getattr(request.app.state, "console", None)
    if console is None:
        raise NotFound(f"nothing at {request.method} {request.url.path}")
    return console


async def _allowed(request: Request, state: State, user: CurrentUser, action: str) -> Principal:
    decision = await state.policy.decide(action, user.user_id, roles=user.roles)
    if not decision.allow:
        # As for a path that does not exist: a user learns nothing of the page.
        raise NotFound(f"nothing at {request.method} {request.url.path}")
    return user


async def reader(request: Request, state: State, user: CurrentUser) -> Principal:
    return await _allowed(request, state, user, "ops.read")


async def actor(request: Request, state: State, user: CurrentUser) -> Principal:
    return await _allowed(request, state, user, "ops.act")


Reader = Annotated[Principal, Depends(reader)]
Actor = Annotated[Principal, Depends(actor)]
ConsoleDep = Annotated[Console, Depends(console_of)]


@router.get("/ops", include_in_schema=False)
async def ops_page(request: Request) -> FileResponse:
    page = STATIC_DIR / "ops.html"
    if not page.is_file():
        raise NotFound("the ops page is not installed (services/gateway/static/ops.html)")
    return FileResponse(page)


@api.get("/access", status_code=204)
async def access(_: Reader) -> Response:
    """204 for an admin: the ops page and its API are theirs. 404 for anyone else."""
    return Response(status_code=204)


@api.get("/charts", responses=error_responses(502))
async def charts(
    _: Reader,
    console: ConsoleDep,
    range_name: Annotated[Literal["5m", "1h", "6h"], Query(alias="range")] = "5m",
) -> dict[str, Any]:
    """The ops panels of services/common/panels.py over the range, from Prometheus:
    ``{"range", "step_s", "rate_window", "timestamps", "panels": [{"key", "title", "unit",
    "series": [{"target", "label", "values"}]}]}`` (values aligned with timestamps, null
    where there is no point). 502 when Prometheus does not answer."""
    assert range_name in RANGES
    return await console.charts(range_name)


@api.get("/services", responses=error_responses(502))
async def services(_: Reader, state: State, console: ConsoleDep) -> dict[str, Any]:
    """Each a0 process as Prometheus scrapes it (state, restarts in the last 6 h, since
    when, health) and each dependency as this gateway's readiness checks find it, with
    Jaeger's. 502 when Prometheus does not answer."""
    processes, checks, jaeger = await asyncio.gather(
        console.processes(), dependency_checks(state), console.jaeger_health()
    )
    return {"processes": processes, "dependencies": {**checks, "prometheus": "ok", "jaeger": jaeger}}


@api.get("/topics", responses=error_responses(502))
async def topics(_: Reader, console: ConsoleDep) -> dict[str, Any]:
    """Each partition of the turn's topics: end offset, and each consumer group's committed
    offset and lag. 502 when Kafka does not answer."""
    return {"partitions": await console.topics()}


@api.get("/traces", responses=error_responses(502))
async def traces(
    _: Reader,
    console: ConsoleDep,
    conversation_id: Annotated[str | None, Query(max_length=100)] = None,
    turn_id: Annotated[str | None, Query(max_length=100)] = None,
) -> dict[str, Any]:
    """The traces of a conversation, or of one turn (either id, or both), from Jaeger:
    ``{"traces": [{"trace_id", "spans": [...]}]}`` as ``a0ctl trace --json``. 404 when
    Jaeger has none, 502 when it does not answer."""
    conversation_id = (conversation_id or "").strip() or None
    turn_id = (turn_id or "").strip() or None
    if not conversation_id and not turn_id:
        raise InvalidRequest("name a conversation_id or a turn_id")
    return {"traces": await console.traces(conversation_id, turn_id)}


@api.get("/dead-letters", responses=error_responses(502))
async def dead_letters(
    _: Reader,
    console: ConsoleDep,
    handled: Annotated[bool, Query(alias="all")] = False,
) -> dlq.DeadLetters:
    """The dead letters still pending (with ``all=true``, also those replayed or
    discarded), oldest first: as ``a0ctl dlq list --json``."""
    try:
        return dlq.DeadLetters(entries=await console.dead_letters(handled))
    except DeadLetterError as exc:  # a topic missing, or a broker too slow to read it
        raise UpstreamUnavailable(exc.message) from None


async def _act(
    console: Console, entry: str, action: Literal["replay", "discard"], user: Principal, force: bool
) -> dlq.ActionResult:
    try:
        result = await console.act(entry, action, user.user_id, force)
    except DeadLetterNotFound as exc:
        raise NotFound(exc.message) from None
    except DeadLetterError as exc:
        raise Conflict(exc.message) from None
    if entry in result.skipped:
        raise Conflict(f"{entry} not {action}ed: {result.skipped[entry]}")
    return result


@api.post("/dead-letters/{entry}/replay", responses=error_responses(409))
async def replay(
    entry: str,
    user: Actor,
    console: ConsoleDep,
    force: Annotated[bool, Query()] = False,
) -> dlq.ActionResult:
    """Put the dead letter back on its source topic, once, recorded with the admin as who
    (409 when it was replayed or discarded already, or failed again after a replay,
    unless ``force=true``)."""
    return await _act(console, entry, "replay", user, force)


@api.post("/dead-letters/{entry}/discard", responses=error_responses(409))
async def discard(entry: str, user: Actor, console: ConsoleDep) -> dlq.ActionResult:
    """Mark the dead letter as handled without replaying it, recorded with the admin as who."""
    return await _act(console, entry, "discard", user, False)


router.include_router(api)
