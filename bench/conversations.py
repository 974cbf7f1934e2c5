"""Benchmark: a0 against the same turn done in one process, in one run.

Brings up a private stack and, for each size N, runs N closed-loop conversations twice:
in-process with no messaging (:mod:`bench.baseline`), then through the gateway with
``a0ctl load``'s code; with tracing off, then on (``--tracing both``). It prints both
runs' turns/s, response times, a0's overhead per turn, CPU per turn of every process
and the run's account (:mod:`a0ctl.load.account`), and writes JSON to
``bench/results/``. What it measures: README.md, "Benchmark".

    .venv/bin/python -m bench.conversations --sizes 1,50 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from tests.support.ports import stack_ports

ROOT = Path(__file__).resolve().parents[1]
# The bench's private stack listens on the test stack's ports plus this: clear of the
# test stack and below Linux's ephemeral range (32768-60999), where any outgoing
# connection (thousands in a load run) may hold the port a service is about to bind.
PORT_OFFSET = 2000


def configure_env(offset: int, latency_ms: int, tokens_per_s: float) -> None:
    """Point every setting at the private bench stack of ``offset`` (ports, state dir)."""
    state = ROOT / f".a0-bench-{offset}"
    os.environ.update({key: str(port) for key, port in stack_ports(offset).items()})
    os.environ.update(
        {
            "A0_HOME": str(ROOT),
            "A0_STATE_DIR": str(state),
            "A0_CONF_DIR": str(state / "conf"),
            "A0_RUNTIME": "local",
            "A0_LLM_SIM_LATENCY_MS": str(latency_ms),
            "A0_LLM_SIM_TOKENS_PER_S": str(tokens_per_s),
            "A0_GATEWAY_RATE_PER_USER_PER_MIN": "100000",
        }
    )
    for key in ("A0_LLM_BASE_URL", "A0_LLM_API_KEY", "A0_OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(key, None)


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process and all its descendants (reaped or alive)."""
    from a0ctl.load.processes import children_of, tree_cpu_s

    children = children_of()
    return {name: tree_cpu_s(pid, children) or 0.0 for name, pid in pids.items()}


def _stack_pids(runtime: Any) -> dict[str, int]:
    return {status.name: status.pid for status in runtime.status() if status.pid}


def _per_turn(before: dict[str, float], after: dict[str, float], turns: int) -> dict[str, float]:
    return {
        name: round((after[name] - before.get(name, 0.0)) / turns * 1000, 2)
        for name in sorted(after)
        if turns and name in before
    }


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# Long on purpose: one linear script per size (the baseline run, the a0 run, the comparison).
def run_size(
    settings: Any, runtime: Any, size: int, duration_s: float, prompt: str, idle_s: float
) -> dict[str, Any]:
    from a0ctl.load import run_load
    from a0ctl.load.probe import AccountProbe
    from a0ctl.load.processes import own_cpu_s
    from bench.baseline import run_baseline

    pids = _stack_pids(runtime)
    sim_pid = pids["llm-sim"]

    own_before, sim_before = own_cpu_s(), _cpu_seconds({"llm-sim": sim_pid})["llm-sim"]
    baseline = asyncio.run(run_baseline(settings, sessions=size, duration_s=duration_s, prompt=prompt))
    baseline["cpu_ms_per_turn"] = {
        "bench process": round((own_cpu_s() - own_before) / max(1, baseline["turns"]) * 1000, 2),
        "llm-sim": round(
            (_cpu_seconds({"llm-sim": sim_pid})["llm-sim"] - sim_before) / max(1, baseline["turns"]) * 1000, 2
        ),
    }

    async def a0_run() -> tuple[Any, dict[str, float], dict[str, float], float]:
        # The account's idle window and settle time lie outside the gross CPU figures.
        async with AccountProbe(settings, runtime) as probe:
            own: list[float] = []
            before: dict[str, float] = {}

            def started() -> None:
                before.update(_cpu_seconds(pids))
                own.append(own_cpu_s())

            def ended() -> None:
                after.update(_cpu_seconds(pids))
                own.append(own_cpu_s())

            after: dict[str, float] = {}
            report = await run_load(
                settings,
                sessions=size,
                duration_s=duration_s,
                think_s=0.0,
                prompt=prompt,
                ramp_s=0.5,
                account=probe,
                idle_s=idle_s,
                on_start=started,
                on_end=ended,
            )
        return report, before, after, own[1] - own[0]

    report, before, after, own_cpu = asyncio.run(a0_run())
    cpu = _per_turn(before, after, report.completed)
    cpu["load client (bench process)"] = round(own_cpu / max(1, report.completed) * 1000, 2)
    a0 = {
        "turns": report.completed,
        "turns_per_s": report.throughput_per_s,
        "response_s": report.response_s.model_dump(),
        "failed": report.failed,
        "lost": report.lost,
        "duplicate_events": report.duplicate_events,
        "shed": report.shed,  # messages refused with 429 at the turn limit, then retried
        "cpu_ms_per_turn": cpu,
        "account": report.account.model_dump() if report.account else None,
    }
    ratio = a0["turns_per_s"] / baseline["turns_per_s"] if baseline["turns_per_s"] else 0.0
    overhead = None
    if report.response_s.mean is not None and baseline["response_s"]["mean"] is not None:
        overhead = round((report.response_s.mean - baseline["response_s"]["mean"]) * 1000, 1)
    return {
        "sessions": size,
        "duration_s": duration_s,
        "baseline": baseline,
        "a0": a0,
        "ratio_turns_per_s": round(ratio, 3),
        "mean_overhead_ms": overhead,
    }


def _print(result: dict[str, Any]) -> None:
    base, a0 = result["baseline"], result["a0"]
    print(
        f"tracing {result.get('tracing', 'off'):>3} "
        f"{result['sessions']:>4} sessions: in-process {base['turns_per_s']:>7.1f} turns/s "
        f"mean {base['response_s']['mean']} s | a0 {a0['turns_per_s']:>7.1f} turns/s "
        f"mean {a0['response_s']['mean']} s p99 {a0['response_s']['p99']} s | "
        f"ratio {result['ratio_turns_per_s']:.2f} | overhead {result['mean_overhead_ms']} ms/turn | "
        f"failed {a0['failed']} lost {a0['lost']} dup {a0['duplicate_events']} shed {a0['shed']}"
    )
    print("      CPU ms/turn: " + ", ".join(f"{k} {v}" for k, v in a0["cpu_ms_per_turn"].items()))
    account = a0.get("account")
    if account:
        print(
            f"      account, net of idle ({account['idle_cpu_ms_per_s']} ms/s over {account['idle_s']} s): "
            f"{account['cpu_ms_per_turn']} CPU ms/turn, whole stack and load client"
        )
        for row in account["rows"]:
            print(f"        {row['group']:>15} {row['name']:<28} {row['per_turn']!s:>9} per turn")
        if account.get("memory"):
            print(
                f"      memory (PSS, MiB): whole stack {account['pss_before_mib']} at the start, "
                f"{account['pss_after_mib']} after the run"
            )
            for memory in account["memory"]:
                print(
                    f"        {memory['name']:<44} {memory['before_mib']!s:>9} -> {memory['after_mib']!s:>9}"
                )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,50", help="comma-separated concurrent conversation counts")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument(
        "--prompt", default="compute 6*7", help="what each conversation sends (default: a tool call)"
    )
    parser.add_argument("--sim-latency-ms", type=int, default=20, help="simulator's time to first token")
    parser.add_argument("--sim-tokens-per-s", type=float, default=400.0, help="simulator's pace (0: no wait)")
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running afterwards")
    parser.add_argument(
        "--idle",
        type=float,
        default=15.0,
        help="seconds of no traffic before each a0 run: the account's idle rate",
    )
    parser.add_argument(
        "--port-offset",
        type=int,
        default=PORT_OFFSET,
        help="the private stack's ports: the test stack's plus this (keep them below 32768)",
    )
    parser.add_argument(
        "--tracing",
        choices=("both", "off", "on"),
        default="both",
        help="measure with tracing off (no exporter: no spans), on (as a0ctl up runs it, to the stack's Jaeger), "
        "or both, one after the other in the same run (default)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    configure_env(args.port_offset, args.sim_latency_ms, args.sim_tokens_per_s)

    from a0ctl.runtime import get_runtime
    from a0ctl.runtime.stack import bring_up
    from services.common.settings import load_settings

    modes = ("off", "on") if args.tracing == "both" else (args.tracing,)
    report: dict[str, Any] = {
        "prompt": args.prompt,
        "upstream": f"llm_sim, first token {args.sim_latency_ms} ms, {args.sim_tokens_per_s} tokens/s",
        "machine": machine(),
        "runs": [],
    }
    runtime = None
    try:
        from a0ctl.load import run_load
        from services.common.metrics import tune_gc

        tune_gc()  # as a0's services and a0ctl load do: the baseline and the load client alike
        for mode in modes:
            # The same stack: switching restarts a0's services with or without an exporter.
            os.environ["A0_OTEL_JAEGER"] = "true" if mode == "on" else "false"
            runtime, _ = bring_up(load_settings(), runtime_name="local")
            settings = load_settings()
            print(f"tracing {mode}")
            asyncio.run(
                run_load(settings, sessions=5, duration_s=3, think_s=0, prompt=args.prompt)
            )  # warm-up
            for size in (int(s) for s in args.sizes.split(",")):
                result = {
                    "tracing": mode,
                    **run_size(settings, runtime, size, args.duration, args.prompt, args.idle),
                }
                report["runs"].append(result)
                _print(result)
    finally:
        if not args.keep:  # a stack that failed to come up too: what did start is stopped
            (runtime or get_runtime(load_settings(), "local")).down(purge=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"conversations-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
