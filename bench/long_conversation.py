"""Benchmark: what a turn costs as its conversation grows.

One conversation on a private stack (same code as ``a0ctl up``), turn after turn of the
tool turn ("compute N*3"), each sent once the one before is answered. For every turn it
records the response time (message posted → ``message.completed`` on the stream) and the
CPU the worker, PostgreSQL and the gateway spent (their process trees, from ``/proc``),
then compares the early turns (2-11) with the last ten (median response time, CPU per
turn over each window of ten):
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


async def _turns(
    settings: Any, pids: dict[str, int], turns: int
) -> tuple[list[float], list[dict[str, float]]]:
    """Each turn's response time, and the CPU seconds of each measured process tree read
    before the first turn and after every turn."""
    import httpx

    from tests.support.gateway import auth, create_conversation, send_and_collect

    responses: list[float] = []
    readings = [_run_time_s(pids)]
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=60) as client:
        headers = auth(settings, "long-conversation")
        conversation_id = await create_conversation(client, headers)
        seen = 0  # as a browser resumes its stream: from the last event it has, not the start
        for n in range(turns):
            started = time.perf_counter()
            events = await send_and_collect(client, headers, conversation_id, f"compute {n}*3", after=seen)
            seen = max(int(event["seq"]) for event in events)
            responses.append(time.perf_counter() - started)
            readings.append(_run_time_s(pids))
            if events[-1]["type"] != "message.completed":
                raise RuntimeError(f"turn {n + 1} ended with {events[-1]}")
    return responses, readings


def _run_time_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds each process tree has run, from the scheduler's nanosecond count
    (``/proc/PID/schedstat``) of its live processes: a turn's PostgreSQL statements are
    short bursts on several backends, which the 10 ms accounting tick of ``stat`` misses."""
    from a0ctl.load.processes import children_of

    children = children_of()
    seconds: dict[str, float] = {}
    for name, root in pids.items():
        total, todo = 0, [root]
        while todo:
            pid = todo.pop()
            try:
                total += int(open(f"/proc/{pid}/schedstat").read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            todo.extend(children.get(pid, []))
        seconds[name] = total / 1e9
    return seconds


def _window(responses: list[float], readings: list[dict[str, float]], first: int) -> dict[str, float]:
    """Turns ``first`` .. ``first + WINDOW - 1`` (0-based): median response, CPU ms per turn."""
    before, after = readings[first], readings[first + WINDOW]
    cpu = {name: (after[name] - before[name]) * 1000 / WINDOW for name in MEASURED if name in after}
    return {
        "response_s": statistics.median(responses[first : first + WINDOW]),
        **cpu,
        "cpu_ms": sum(cpu.values()),
    }


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
        pids = {s.name: s.pid for s in runtime.status() if s.pid and s.name in MEASURED}
        responses, readings = asyncio.run(_turns(load_settings(), pids, args.turns))
    finally:
        if not args.keep:
            (runtime or get_runtime(load_settings(), "local")).down(purge=True)
    early, late = _window(responses, readings, 1), _window(responses, readings, args.turns - WINDOW)
    summary = {
        key: {
            "early": round(early[key], 4),
            "late": round(late[key], 4),
            "ratio": round(late[key] / early[key], 2),
        }
        for key in early
    }
    for key, figures in summary.items():
        print(
            f"{key:<20} turns 2-{WINDOW + 1}: {figures['early']:>8}  last {WINDOW}: {figures['late']:>8}  ratio {figures['ratio']}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"long-conversation-{time.strftime('%Y%m%dT%H%M%S')}.json"
    report = {
        "turns": args.turns,
        "transcript_cache_mb": load_settings().worker.transcript_cache_mb,
        "machine": machine(),
        "summary": summary,
        "responses_s": responses,
    }
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
