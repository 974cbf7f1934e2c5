"""The HTTP face of the LLM simulator: OpenAI's Chat Completions protocol over FastAPI.

Routes: ``GET /health`` (no auth), ``GET /v1/models``, ``GET /v1/models/{id}`` and
``POST /v1/chat/completions`` (plain JSON or server-sent events). Errors use OpenAI's
``{"error": {...}}`` shape so the real ``openai`` SDK raises its usual exceptions.
What the model says is decided by :mod:`services.llm_sim.replies`; this module only
adds the wire format, authentication and timing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common import http_server
from services.common.errors import A0Error
from services.llm_sim import replies

if TYPE_CHECKING:
    from services.common.settings import Settings

log = logging.getLogger("a0.llm_sim")

SYSTEM_FINGERPRINT = "fp_a0sim"
MODEL_CREATED = 1_735_689_600  # fixed, so /v1/models is byte-for-byte stable
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class OpenAIError(A0Error):
    """An error answered in OpenAI's shape, so SDK clients map it to their exception types."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.openai_code, self.param = status, code, param

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": "invalid_request_error", "param": self.param}
        return JSONResponse({"error": {**error, "code": self.openai_code}}, status_code=self.status)


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: FunctionSpec


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields the simulator reads; any other OpenAI parameter is accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    # Kept as plain dicts: the reply rules and the deterministic tool call ids work on
    # the conversation exactly as the client sent it.
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Any = None

    @field_validator("messages")
    @classmethod
    def _known_roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, message in enumerate(messages):
            if message.get("role") not in ROLES:
                raise ValueError(f"messages[{index}].role must be one of {sorted(ROLES)}")
        return messages

    def offered_tools(self) -> list[str]:
        # tool_choice "none" forbids tool calls, so the model behaves as if none were offered.
        return [] if self.tool_choice == "none" else [t.function.name for t in self.tools or ()]


def _require_key(api_key: str) -> Callable[[Request], Awaitable[None]]:
    expected = api_key.encode()

    async def check(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Constant-time comparison; the error never repeats what was sent.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")

    return check


async def _parse(request: Request) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        where = f" (at '{param}')" if param else ""
        raise OpenAIError(400, f"Invalid request body: {first['msg']}{where}.", param=param) from None


class _Generation:
    """One completion being produced: its id, timing and wire encodings."""

    def __init__(
        self, model: str, reply: replies.Reply, usage: dict[str, int], pace: tuple[float, float]
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model, self.reply, self.usage = model, reply, usage
        self.latency_s, self.token_s = pace

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _deltas(self) -> list[dict[str, Any]]:
        """The stream's deltas: the role first, then one per token (text or argument piece)."""
        calls = self.reply.tool_calls
        head = {"role": "assistant", "content": None if calls else "", "refusal": None}
        if not calls:
            return [head] + [{"content": token} for token in replies.split_tokens(self.reply.content or "")]
        deltas: list[dict[str, Any]] = []
        for index, call in enumerate(calls):
            # The first chunk of a call carries its id and name; later ones only argument text.
            function = {"name": call.name, "arguments": ""}
            opening = {"index": index, "id": call.id, "type": "function", "function": function}
            deltas.append({**(head if index == 0 else {}), "tool_calls": [opening]})
            for piece in replies.split_arguments(call.arguments):
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        return deltas

    def _delay(self, position: int) -> float:
        # The role chunk goes out with the first token after the latency; every later
        # token waits one token interval.
        return self.latency_s if position == 0 else (self.token_s if position > 1 else 0.0)

    async def complete(self) -> dict[str, Any]:
        """A ``chat.completion``, after the time streaming the same reply would take."""
        await asyncio.sleep(sum(self._delay(i) for i in range(len(self._deltas()))))
        message: dict[str, Any] = {"role": "assistant", "content": self.reply.content, "refusal": None}
        if self.reply.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.reply.tool_calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.reply.finish_reason}
        return {**self._envelope("chat.completion"), "choices": [choice], "usage": self.usage}

    def _event(self, choices: list[dict[str, Any]], include_usage: bool, usage: Any = None) -> str:
        body = {**self._envelope("chat.completion.chunk"), "choices": choices}
        if include_usage:  # OpenAI sends "usage": null on every chunk but the extra last one
            body["usage"] = usage
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    async def stream(self, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent ``chat.completion.chunk`` events, ending with ``data: [DONE]``."""
        sent = 0
        try:
            for position, delta in enumerate(self._deltas()):
                if delay := self._delay(position):
                    await asyncio.sleep(delay)
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                yield self._event([choice], include_usage)
                sent = position + 1
            last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": self.reply.finish_reason}
            yield self._event([last], include_usage)
            if include_usage:
                yield self._event([], include_usage, self.usage)
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            # The server cancels the response when the client goes away: stop generating.
            log.info("client disconnected from %s after %d chunks", self.id, sent)
            raise


# Long as a route table: the simulator's routes, closures over its model and pacing.
def create_app(
    api_key: str, *, model: str = "a0-sim-1", latency_ms: int = 20, tokens_per_s: float = 400.0
) -> FastAPI:
    """Build the simulator; every ``/v1`` route requires ``Authorization: Bearer <api_key>``."""
    if not api_key:
        raise ValueError("llm_sim needs a non-empty API key")
    latency_s = max(latency_ms, 0) / 1000
    token_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0
    app = FastAPI(title="a0 LLM simulator", docs_url=None, redoc_url=None, openapi_url=None)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_require_key(api_key))])
    model_card = {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "a0"}

    def unknown_model(name: str) -> OpenAIError:
        message = f"The model `{name}` does not exist or you do not have access to it."
        return OpenAIError(404, message, code="model_not_found")

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and methods also answer in OpenAI's shape.
        message = f"Invalid URL ({request.method} {request.url.path})"
        return OpenAIError(exc.status_code, message).response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @v1.get("/models/{model_id}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        if model_id != model:
            raise unknown_model(model_id)
        return model_card

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _parse(request)
        if body.model != model:
            raise unknown_model(body.model)
        reply = replies.decide(body.messages, body.offered_tools())
        prompt, completion = replies.prompt_tokens(body.messages), replies.completion_tokens(reply)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        generation = _Generation(model, reply, usage, (latency_s, token_s))
        if not body.stream:
            return JSONResponse(await generation.complete())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            generation.stream(include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.include_router(v1)
    return app


def serve(settings: Settings) -> None:
    """Run the simulator with uvicorn on ``stack.host:llm_sim.port``."""
    sim = settings.llm_sim
    api_key = sim.api_key.get_secret_value()
    if not api_key:
        raise SystemExit(
            "llm_sim: no API key configured (A0_LLM_SIM_API_KEY is empty). "
            "Run `a0ctl up` to generate conf/env/secrets.env, or set A0_LLM_SIM_API_KEY."
        )
    app = create_app(api_key, model=sim.model, latency_ms=sim.latency_ms, tokens_per_s=sim.tokens_per_s)
    # uvicorn configures only its own loggers; this makes the simulator's messages visible too.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    # No access log: request lines are noise under load and would carry client addresses.
    http_server.run(app, host=settings.stack.host, port=sim.port, access_log=False, log_level="info")
