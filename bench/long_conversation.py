"""Benchmark: what a turn costs as its conversation grows.

One conversation on a private stack (same code as ``a0ctl up``), turn after turn of the
tool turn ("compute N*3"), each sent once the one before is answered. For every turn it
records the response time (message posted → ``message.completed`` on the stream) and the
CPU the worker, PostgreSQL and the gateway spent on it (their process trees, from
``/proc``), then compares the early turns (2-11) with the last ten by their medians:
with the worker keeping the transcript of the conversations it owns, the last ones
should cost about what the early ones do (docs/messaging.md).

    .venv/bin/python -m bench.long_conversation --turns 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from bench.conversations import ROOT, configure_env, machine

PORT_OFFSET = 2200
MEASURED = ("conversation-worker", "postgres", "gateway")
WINDOW = 10


async def _turns(settings: Any, runtime: Any, turns: int) -> list[dict[str, float]]:
    import httpx

    from a0ctl.load.processes import read_trees
    from tests.support.gateway import auth, create_conversation, send_and_collect

    pids = {s.name: s.pid for s in runtime.status() if s.pid and s.name in MEASURED}
    rows = []
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=60) as client:
        headers = auth(settings, "long-conversation")
        conversation_id = await create_conversation(client, headers)
        for n in range(turns):
            before, started = read_trees(pids), time.perf_counter()
            events = await send_and_collect(client, headers, conversation_id, f"compute {n}*3")
            elapsed, after = time.perf_counter() - started, read_trees(pids)
            if events[-1]["type"] != "message.completed":
                raise RuntimeError(f"turn {n + 1} ended with {events[-1]}")
            row = {name: (after.cpu_s[name] - before.cpu_s[name]) * 1000 for name in pids}
            rows.append({"turn": n + 1, "response_s": elapsed, **row, "cpu_ms": sum(row.values())})
    return rows


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running afterwards")
    args = parser.parse_args()
    if args.turns < 2 * WINDOW + 1:
        parser.error(f"--turns must be at least {2 * WINDOW + 1}")
    configure_env(PORT_OFFSET, latency_ms=20, tokens_per_s=400.0)

    from a0ctl.runtime import get_runtime
    from a0ctl.runtime.stack import bring_up
    from services.common.settings import load_settings

    runtime = None
    try:
        runtime, _ = bring_up(load_settings(), runtime_name="local")
        rows = asyncio.run(_turns(load_settings(), runtime, args.turns))
    finally:
        if not args.keep:
            (runtime or get_runtime(load_settings(), "local")).down(purge=True)
    early, late = rows[1 : 1 + WINDOW], rows[-WINDOW:]
    summary = {
        key: {
            "early": round(_median(early, key), 2 if key != "response_s" else 3),
            "late": round(_median(late, key), 2 if key != "response_s" else 3),
            "ratio": round(_median(late, key) / _median(early, key), 2),
        }
        for key in ("response_s", "cpu_ms", *MEASURED)
    }
    for key, figures in summary.items():
        print(
            f"{key:<20} turns 2-{WINDOW + 1}: {figures['early']:>8}  last {WINDOW}: {figures['late']:>8}  ratio {figures['ratio']}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"long-conversation-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(
        json.dumps({"turns": args.turns, "machine": machine(), "summary": summary, "rows": rows}, indent=2)
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
