"""The gateway's one error shape, ``{"error": {"code", "message", "request_id"}}``, and the
exception handlers that turn every failure (ours, FastAPI's, Starlette's, a dependency's)
into it. The request id is also in the ``X-Request-ID`` header of every response."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from services.common.auth import AuthError
from services.common.db import recheck_if_lost
from services.common.envelope import new_id
from services.common.errors import A0Error, PolicyUnavailable, is_transient, transient_types

log = logging.getLogger("a0.gateway")

REQUEST_ID_HEADER = "X-Request-ID"
UNAVAILABLE = "a backing store is unavailable; try again"
INTERNAL = "internal error; quote the request id when reporting it"


class ApiError(A0Error):
    """An error the gateway answers with; subclasses fix the code and HTTP status."""

    code = "internal"
    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class MalformedJson(ApiError):
    code, status = "malformed_json", 400


class InvalidRequest(ApiError):
    code, status = "invalid_request", 422


class Unauthorized(ApiError):
    code, status = "unauthorized", 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    code, status = "forbidden", 403


class NotFound(ApiError):
    code, status = "not_found", 404


class Conflict(ApiError):
    code, status = "conflict", 409


class PayloadTooLarge(ApiError):
    code, status = "payload_too_large", 413


class UnsupportedMediaType(ApiError):
    code, status = "unsupported_media_type", 415


class RateLimited(ApiError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class Overloaded(RateLimited):
    code = "overloaded"


class Unavailable(ApiError):
    code, status = "unavailable", 503


class BodyTooLarge(StarletteHTTPException):
    """Raised while a streamed body is read. An HTTPException, because FastAPI re-raises
    those from body parsing untouched (anything else becomes a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"the request body is larger than {limit} bytes")


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorBody(BaseModel):
    """The one error shape, as OpenAPI shows it."""

    error: ErrorDetail


_ERROR_STATUS: dict[int, str] = {
    400: "malformed JSON, or a request the service refuses (``malformed_json``, ``credential_rejected``)",
    401: "no valid bearer token (``unauthorized``)",
    403: "OPA denies the action (``forbidden``)",
    404: "no such resource, or one the user may not see (``not_found``)",
    409: "the conversation's policy refuses a second turn (``conflict``)",
    413: "body larger than A0_GATEWAY_MAX_BODY_BYTES (``payload_too_large``)",
    415: "the body is not declared as JSON (``Content-Type: application/json``; ``unsupported_media_type``)",
    422: "a field is invalid, e.g. text with NUL (``invalid_request``)",
    429: "rate limit or load shedding; see Retry-After (``rate_limited``, ``overloaded``)",
    502: "a service the gateway reads for the ops page (Prometheus, Jaeger, Kafka) does not answer "
    "(``upstream_unavailable``)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each in the one error shape."""
    return {status: {"model": ErrorBody, "description": _ERROR_STATUS[status]} for status in statuses}


def error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or new_id())


def error_response(
    request: Request, code: str, message: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    request_id = request_id_of(request)
    return JSONResponse(
        error_body(code, message, request_id),
        status_code=status,
        headers={**(headers or {}), REQUEST_ID_HEADER: request_id},
    )


def validation_message(
    errors: Sequence[Any], prefixes: frozenset[str] = frozenset({"body"})
) -> tuple[str, str]:
    """(code, message) for pydantic/FastAPI validation errors: malformed JSON is its own
    code; otherwise the message names each offending field, e.g. ``content: ...``
    (a leading location in ``prefixes``, like FastAPI's ``body``, is left out)."""
    if any(error.get("type") == "json_invalid" for error in errors):
        detail = next(
            (str(e.get("ctx", {}).get("error", "")) for e in errors if e.get("type") == "json_invalid"), ""
        )
        return "malformed_json", "the request body is not valid JSON" + (f": {detail}" if detail else "")
    parts = []
    for error in list(errors)[:3]:
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] in prefixes:
            loc = loc[1:]
        field = ".".join(loc) or "request"
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more")
    return "invalid_request", "; ".join(parts) or "invalid request"


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def http_error(status: int, request: Request, detail: Any) -> tuple[str, str]:
    code = _HTTP_CODES.get(status, "internal" if status >= 500 else "invalid_request")
    if status == 404:
        return code, f"nothing at {request.method} {request.url.path}"
    if status == 405:
        return code, f"{request.method} is not allowed on {request.url.path}"
    if status >= 500:
        return code, "internal error"
    return code, str(detail) if detail else code.replace("_", " ")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at the request's path. Starlette's 405 names those of
    the first route that matched the path only, while a path is often served by several
    (``GET`` and ``POST /v1/conversations``, one route each). A mount (/static) takes any
    method as far as routing knows, so its app's own answer stands."""
    # From the app's own root: a mount (/static) hands its app a scope rooted at itself.
    root_path = request.scope.get("app_root_path", request.scope.get("root_path", ""))
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method, "root_path": root_path}
        routes = (route for route in request.app.router.routes if not isinstance(route, Mount))
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.code, exc.message, exc.status, exc.headers)

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        return error_response(request, "unauthorized", exc.message, 401, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        code, message = validation_message(exc.errors())
        return error_response(request, code, message, 400 if code == "malformed_json" else 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, message = http_error(exc.status_code, request, exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers["Allow"] = ", ".join(allowed)
        return error_response(request, code, message, exc.status_code, headers)

    @app.exception_handler(PolicyUnavailable)
    async def _policy_down(request: Request, exc: PolicyUnavailable) -> JSONResponse:
        log.warning("policy unavailable: %s", exc)
        return error_response(request, "unavailable", "the policy service is unavailable; try again", 503)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):
            log.warning("a backing service is unavailable: %s: %s", type(exc).__name__, exc)
            recheck_if_lost(exc)
            return error_response(request, "unavailable", UNAVAILABLE, 503)
        log.error(
            "unhandled error on %s %s (request %s)",
            request.method,
            request.url.path,
            request_id_of(request),
            exc_info=exc,
        )
        return error_response(request, "internal", INTERNAL, 500)

    # Starlette answers a handler for Exception only after its error middleware, which
    # logs the exception again; transient ones are expected, so they are answered here
    # (and a0's own errors, which say themselves whether they are).
    answered_here: tuple[type[Exception], ...] = (A0Error, *transient_types())
    for transient in answered_here:
        app.add_exception_handler(transient, _internal)
