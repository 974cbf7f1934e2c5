"""Operations: ``/health`` (alive), ``/ready`` (every dependency answers), ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.topics import INBOUND, OUTBOUND
from services.gateway import store
from services.gateway.deps import GatewayState, SettingsDep, bearer_token
from services.gateway.errors import Forbidden, error_body, error_responses, request_id_of

router = APIRouter()

CHECK_TIMEOUT_S = 3.0


@router.get("/health")
async def health(settings: SettingsDep) -> dict[str, str]:
    return {"status": "ok", "replica": settings.gateway.replica}


async def _kafka(state: GatewayState) -> None:
    cluster = await state.producer.client.fetch_all_metadata()
    missing = sorted({INBOUND, OUTBOUND} - set(cluster.topics()))
    if missing:
        raise RuntimeError(f"topics missing: {', '.join(missing)} (run `a0ctl topics apply`)")
    if not state.outbound.connected:
        raise RuntimeError(f"outbound consumer not running: {state.outbound.last_error}")


async def _redis(state: GatewayState) -> None:
    await state.redis.ping()


async def _postgres(state: GatewayState) -> None:
    await store.ping(state.pool, CHECK_TIMEOUT_S)


async def _opa(state: GatewayState) -> None:
    decision = await state.policy.decide("conversation.list", "ready-probe", owner_id="ready-probe")
    if not decision.allow:
        raise RuntimeError(f"policy answers unexpectedly: {decision.reason}")


async def _check(probe: Awaitable[None]) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe
        return "ok"
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # a failed probe is a readiness answer, not an error
        return f"{type(exc).__name__}: {exc}"[:300]


async def dependency_checks(state: GatewayState) -> dict[str, str]:
    """Each dependency of the gateway: ``ok``, or why not (``/ready``, the ops page)."""
    names = ("kafka", "redis", "postgres", "opa")
    results = await asyncio.gather(
        _check(_kafka(state)), _check(_redis(state)), _check(_postgres(state)), _check(_opa(state))
    )
    return dict(zip(names, results, strict=True))


@router.get("/ready", response_model=None)
async def ready(request: Request) -> dict[str, Any] | JSONResponse:
    state: GatewayState | None = getattr(request.app.state, "gateway", None)
    if state is None:
        return JSONResponse({"status": "starting", "checks": {}}, status_code=503)
    checks = await dependency_checks(state)
    if all(result == "ok" for result in checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(name for name, result in checks.items() if result != "ok")
    # The readiness report, plus the one error shape every other failure uses.
    body = {
        "status": "not ready",
        "checks": checks,
        **error_body("unavailable", f"not ready: {failing}", request_id_of(request)),
    }
    return JSONResponse(body, status_code=503)


def _metrics_allowed(request: Request, token: str) -> bool:
    """Loopback clients (Prometheus beside the gateway), or anyone with the metrics token:
    the counters tell about users and load, not for the open network."""
    host = request.client.host if request.client else ""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return True
    offered = bearer_token(request.headers.get("authorization")) or ""
    return bool(token) and hmac.compare_digest(offered.encode(), token.encode())


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus' text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(403),
    },
)
async def prometheus_metrics(request: Request, settings: SettingsDep) -> Response:
    """The gateway's metrics in Prometheus' text format (not JSON): loopback clients, or
    ``Authorization: Bearer <A0_GATEWAY_METRICS_TOKEN>``."""
    if not _metrics_allowed(request, settings.gateway.metrics_token.get_secret_value()):
        raise Forbidden(
            "metrics are served to loopback clients, or with Authorization: Bearer <A0_GATEWAY_METRICS_TOKEN>"
        )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
