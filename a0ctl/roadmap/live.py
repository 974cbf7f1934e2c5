"""The roadmap's M4 checks that look at a running stack: real turns, then their trace in
Jaeger (read as ``a0ctl trace`` reads it) and their figures in every panel's query of
the Grafana dashboard (run against Prometheus). Each can fail: Jaeger down, a trace
missing a service, a panel naming a metric no service exports, a panel with no answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import REGISTRY

import services.common.metrics  # noqa: F401  (registers every metric a0's services export)
from a0ctl.checks import Check, timed
from a0ctl.observe import prometheus_query, query_traces
from services.common.retry import WaitTimeout, wait_until
from services.common.settings import Settings

TRACE_SERVICES = ("gateway", "conversation-worker", "tool-executor")
TURN_PROMPT = "compute 6*7"  # a tool turn: gateway, worker and tool executor all take part
DASHBOARDS = Path("stack") / "grafana" / "dashboards"
# Grafana's interval variables, for an instant query: wide enough for the turns just run
# and for four scrapes at compose's 15 s.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m"}
METRIC_NAME = re.compile(r"\ba0_[a-z0-9_]+")
WAIT_S = 45.0
TURNS = 3  # turns tried, each waited for WAIT_S / TURNS

# Runs one turn and returns its (conversation id, turn id).
TurnRunner = Callable[[], tuple[str, str]]


def real_turn(settings: Settings) -> tuple[str, str]:
    """A tool turn through the gateway, as a user sends one; it must complete."""
    from a0ctl.client import GatewayClient

    async def run() -> tuple[str, str]:
        async with GatewayClient.for_user(settings, "a0-roadmap") as client:
            conversation_id = await client.create_conversation("roadmap")
            events = await client.send_and_collect(conversation_id, TURN_PROMPT, timeout=30)
        if not events or events[-1]["type"] != "message.completed":
            raise RuntimeError(f"the turn did not complete: {[e['type'] for e in events]}")
        return conversation_id, str(events[-1]["turn_id"])

    return asyncio.run(run())


# --- a turn's trace ----------------------------------------------------------------------
def judge_trace(traces: list[dict[str, Any]]) -> tuple[bool, str]:
    """One trace holds spans of the gateway, the worker and the tool executor."""
    if not traces:
        return False, "no trace of the turn in Jaeger"
    best = max(traces, key=lambda t: len({s["service"] for s in t["spans"]}))
    services = {span["service"] for span in best["spans"]}
    missing = [s for s in TRACE_SERVICES if s not in services]
    detail = f"trace {best['trace_id']}: {len(best['spans'])} spans from {', '.join(sorted(services))}"
    if missing:
        return False, f"{detail}; none from {', '.join(missing)}"
    return True, detail


def turn_trace_check(
    settings: Settings, turn: TurnRunner | None = None, wait_s: float = WAIT_S, turns: int = TURNS
) -> Check:
    def run() -> tuple[bool, str]:
        verdict, turn_id = (False, ""), ""
        # New traces are sampled within a budget (services/common/telemetry.py) that a
        # load run just before may have spent: a turn untraced is followed by another.
        for _ in range(turns):
            conversation_id, turn_id = (turn or (lambda: real_turn(settings)))()

            def judged(conversation_id: str = conversation_id, turn_id: str = turn_id) -> bool:
                nonlocal verdict
                verdict = judge_trace(query_traces(settings, conversation_id, turn_id))
                return verdict[0]

            # Spans are exported in batches: wait for the last service's.
            with contextlib.suppress(WaitTimeout):
                wait_until(judged, timeout=wait_s / turns, interval=1.0, describe="the turn's whole trace")
            if verdict[0]:
                break
        return verdict[0], f"turn {turn_id}: {verdict[1]}"

    return timed("a0ctl trace shows a turn's trace", run)


# --- the dashboard's panels ----------------------------------------------------------------
def exported_metrics() -> set[str]:
    """Every series name a0's services export (``_total``, ``_bucket`` ... included)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
    }
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("a0_"):
            names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def panel_queries(home: Path) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every dashboard, Grafana's variables set."""
    queries = []
    for path in sorted((home / DASHBOARDS).glob("*.json")):
        for panel in json.loads(path.read_text()).get("panels", []):
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                if expr:
                    queries.append((panel.get("title", "?"), expr))
    return queries


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(item["value"][1]) for item in result]


def judge_answers(answers: list[tuple[str, str, list[dict[str, Any]]]]) -> tuple[bool, str]:
    """Throughput panels answer with a non-zero rate, the error rate with a series (zero is
    fine), every other panel with a series."""
    problems = []
    throughput = errors = False
    for title, expr, result in answers:
        lowered = title.lower()
        if lowered.startswith("throughput"):
            throughput = True
            if not any(v > 0 for v in _values(result)):
                problems.append(f"{title}: no non-zero answer to {expr}")
        elif not result:
            problems.append(f"{title}: no series for {expr}")
        if "error rate" in lowered:
            errors = True
    if not throughput:
        problems.append("no throughput panel")
    if not errors:
        problems.append("no error-rate panel")
    if problems:
        return False, "; ".join(problems)
    panels = len({title for title, _, _ in answers})
    rates = [
        v for title, _, result in answers if title.lower().startswith("throughput") for v in _values(result)
    ]
    return True, f"{panels} panels, {len(answers)} queries answered; throughput up to {max(rates):.2f}/s"


def dashboard_check(
    settings: Settings, home: Path, turn: TurnRunner | None = None, turns: int = 3, wait_s: float = WAIT_S
) -> Check:
    def run() -> tuple[bool, str]:
        queries = panel_queries(home)
        if not queries:
            return False, f"no panel queries in {DASHBOARDS}/*.json"
        known = exported_metrics()
        unknown = sorted(
            {
                f"{title}: {name}"
                for title, expr in queries
                for name in METRIC_NAME.findall(expr)
                if name not in known
            }
        )
        if unknown:
            return False, "metrics no a0 service exports: " + "; ".join(unknown)
        for _ in range(turns):
            (turn or (lambda: real_turn(settings)))()
        verdict = (False, "")
        with httpx.Client() as client:

            def judged() -> bool:
                nonlocal verdict
                answers = [(title, expr, prometheus_query(settings, expr, client)) for title, expr in queries]
                verdict = judge_answers(answers)
                return verdict[0]

            # The turns show once Prometheus has scraped them twice.
            with contextlib.suppress(WaitTimeout):
                wait_until(judged, timeout=wait_s, interval=2.0, describe="the panels' answers")
        return verdict

    return timed("dashboard panels for throughput and error rate", run)
