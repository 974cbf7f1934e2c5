"""Benchmark: N concurrent conversations through the gateway, end to end.

Brings up a private stack (same code as ``a0ctl up``, its own ports and state dir) with
the upstream simulator at zero latency, so the figures measure a0's messaging path:
gateway → Kafka → worker ⇄ tool executor → Kafka → gateway → SSE client.

    .venv/bin/python -m bench.conversations --sizes 1,50,500

Per size it reports messages per second and p50/p95/p99 end-to-end latency (from the
POST to the message.completed event on the client's SSE stream), and writes JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PORT_OFFSET = 5000


def _configure_env(offset: int) -> None:
    ports = {
        "A0_KAFKA_PORT": 29092,
        "A0_KAFKA_CONTROLLER_PORT": 29093,
        "A0_REDIS_PORT": 26379,
        "A0_POSTGRES_PORT": 25432,
        "A0_OPA_PORT": 28181,
        "A0_GATEWAY_PORT": 28080,
        "A0_LLM_SIM_PORT": 28000,
        "A0_WORKER_METRICS_PORT": 29101,
        "A0_TOOLS_METRICS_PORT": 29102,
    }
    state = ROOT / f".a0-bench-{offset}"
    os.environ.update({key: str(port + offset) for key, port in ports.items()})
    os.environ.update(
        {
            "A0_HOME": str(ROOT),
            "A0_STATE_DIR": str(state),
            "A0_CONF_DIR": str(state / "conf"),
            "A0_RUNTIME": "local",
            "A0_LLM_SIM_LATENCY_MS": "0",
            "A0_LLM_SIM_TOKENS_PER_S": "0",
            "A0_GATEWAY_RATE_PER_USER_PER_MIN": "100000",
            "A0_GATEWAY_MAX_INFLIGHT_TURNS": "100000",
        }
    )
    for key in ("A0_LLM_BASE_URL", "A0_LLM_API_KEY"):
        os.environ.pop(key, None)


async def one_conversation(client: Any, token: str, prompt: str) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    created = await client.post("/v1/conversations", json={"title": "bench"}, headers=headers)
    conversation_id = created.json()["id"]
    async with client.stream("GET", f"/v1/conversations/{conversation_id}/events", headers=headers) as stream:
        lines = stream.aiter_lines()
        started = time.perf_counter()
        posted = await client.post(
            f"/v1/conversations/{conversation_id}/messages", json={"content": prompt}, headers=headers
        )
        if posted.status_code != 202:
            raise RuntimeError(f"POST answered {posted.status_code}: {posted.text[:200]}")
        async for line in lines:
            if line.startswith("event: ") and line[7:] in ("message.completed", "error", "cancelled"):
                if line[7:] != "message.completed":
                    raise RuntimeError(f"turn ended with {line[7:]}")
                return time.perf_counter() - started
    raise RuntimeError("stream ended before the turn completed")


async def run_size(settings: Any, size: int, prompt: str) -> dict[str, Any]:
    import httpx

    from services.common.auth import mint_token

    # Small connection pools: httpx's pool scans its connections on each request, so one
    # client with a thousand connections would spend the run in the load generator itself.
    per_client = 20
    clients = [
        httpx.AsyncClient(
            base_url=settings.gateway_url,
            timeout=httpx.Timeout(120, connect=30),
            limits=httpx.Limits(max_connections=per_client * 2 + 2),
        )
        for _ in range((size + per_client - 1) // per_client)
    ]
    try:
        tokens = [mint_token(settings, f"bench-{size}-{i}") for i in range(size)]
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                asyncio.wait_for(one_conversation(clients[i // per_client], token, prompt), 180)
                for i, token in enumerate(tokens)
            ),
            return_exceptions=True,
        )
        wall = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    latencies = [r for r in results if isinstance(r, float)]
    errors = [repr(r) for r in results if not isinstance(r, float)]
    from a0ctl.load import Percentiles

    return {
        "conversations": size,
        "completed": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 3),
        "messages_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
        "latency_ms": Percentiles.of(latencies, scale=1000, digits=1).model_dump(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,50,500", help="comma-separated concurrent conversation counts")
    parser.add_argument(
        "--prompt", default="compute 6*7", help="what each conversation sends (default: a tool call)"
    )
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running afterwards")
    args = parser.parse_args()
    _configure_env(PORT_OFFSET)

    from a0ctl.runtime.stack import bring_up
    from services.common.settings import load_settings

    runtime, _ = bring_up(load_settings(), runtime_name="local")
    settings = load_settings()
    report = {"prompt": args.prompt, "upstream": "llm_sim, zero latency", "runs": []}
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            asyncio.run(run_size(settings, min(size, 5), args.prompt))  # warm-up
            result = asyncio.run(run_size(settings, size, args.prompt))
            report["runs"].append(result)
            print(json.dumps(result))
    finally:
        if not args.keep:
            runtime.down(purge=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"conversations-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
