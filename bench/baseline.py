"""The in-process baseline: the same turn a0 runs, in one asyncio process, with no Kafka,
PostgreSQL or gateway.

Same system prompt, same tool specs, same upstream client (:class:`LLMClients`), same
tools (the executor's registry) and the same upstream simulator as the a0 run beside
it; the transcript lives in a list. What a0 adds on top of this — durability,
ordering, fan-out, policy — is what the ratio of the two measures.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from functools import partial
from typing import Any

from services.common.settings import Settings
from services.conversation_worker.handlers import SYSTEM_PROMPT
from services.conversation_worker.llm import LLMClients, settings_config
from services.tool_executor.tools import Tool, ToolContext, ToolError, load_tools


def fallback_call_id(round_: int, index: int) -> str:
    return f"call_{round_}_{index}"


async def _turn(
    llm: LLMClients,
    tools: dict[str, Tool],
    specs: list[dict[str, Any]],
    settings: Settings,
    transcript: list[dict[str, Any]],
    conversation_id: str,
    prompt: str,
) -> None:
    config = settings_config(settings)
    transcript.append({"role": "user", "content": prompt})
    max_rounds = settings.worker.max_tool_rounds

    async def ignore(text: str, position: int) -> None:
        return None

    for round_ in range(max_rounds + 1):
        completion = await llm.stream_chat(
            config,
            [{"role": "system", "content": SYSTEM_PROMPT}, *transcript],
            tools=specs if round_ < max_rounds else None,
            on_text=ignore,
            fallback_call_id=partial(fallback_call_id, round_),
        )
        if not completion.tool_calls:
            transcript.append({"role": "assistant", "content": completion.text})
            return
        transcript.append(
            {"role": "assistant", "content": completion.text or None, "tool_calls": completion.tool_calls}
        )
        for call in completion.tool_calls:
            name = call["function"]["name"]
            context = ToolContext(call_id=call["id"], user_id="bench", conversation_id=conversation_id)
            try:
                output = await tools[name].run(json.loads(call["function"]["arguments"]), context)
            except ToolError as exc:
                output = json.dumps({"error": {"code": exc.code, "message": str(exc)}})
            transcript.append({"role": "tool", "tool_call_id": call["id"], "name": name, "content": output})


async def run_baseline(
    settings: Settings, *, sessions: int, duration_s: float, prompt: str
) -> dict[str, Any]:
    """``sessions`` closed-loop conversations (no think time) for ``duration_s``: each
    sends ``prompt``, waits for the final answer, and sends again, like ``a0ctl load
    --think 0``. Returns turns/s and response-time figures."""
    llm = LLMClients(settings)
    tools = load_tools()
    specs = [tool.spec.openai_tool() for tool in tools.values()]
    response: list[float] = []
    until = time.monotonic() + duration_s

    async def session(index: int) -> None:
        transcript: list[dict[str, Any]] = []
        while time.monotonic() < until:
            started = time.monotonic()
            await _turn(llm, tools, specs, settings, transcript, f"baseline-{index}", prompt)
            response.append(time.monotonic() - started)

    started = time.monotonic()
    try:
        await asyncio.gather(*(session(i) for i in range(sessions)))
    finally:
        await llm.aclose()
    elapsed = time.monotonic() - started
    from a0ctl.load.report import Percentiles

    return {
        "sessions": sessions,
        "turns": len(response),
        "turns_per_s": round(len(response) / elapsed, 2),
        "response_s": Percentiles.of(response).model_dump(),
        "mean_ms": round(statistics.fmean(response) * 1000, 1) if response else None,
    }
