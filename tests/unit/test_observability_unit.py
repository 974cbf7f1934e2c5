"""Tracing and metrics pieces without services: the sampler that keeps streamed text out
of traces, the generated Jaeger and Prometheus configurations, the trace tree."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from a0ctl.commands.observe import trace_tree
from a0ctl.runtime.telemetry_services import (
    jaeger_config_text,
    prometheus_config_text,
    prometheus_targets_text,
)
from services.common import metrics, telemetry
from services.common.settings import load_settings
from services.common.traces import span_children

pytestmark = pytest.mark.unit


def test_spans_under_untraced_are_dropped_with_their_children_and_others_kept() -> None:
    exporter = InMemorySpanExporter()
    # A budget of one new trace (and a clock that stands still): children of the first
    # are kept, a second new trace is not started.
    provider = TracerProvider(sampler=telemetry._sampler(telemetry.TraceBudget(1, clock=lambda: 0.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("llm call"):
        token = otel_context.attach(otel_context.set_value(telemetry._UNTRACED, True))
        try:
            with tracer.start_as_current_span("conversation.outbound send") as dropped:
                assert not dropped.is_recording()
                assert not dropped.get_span_context().trace_flags.sampled  # so downstream drops too
        finally:
            otel_context.detach(token)
        with tracer.start_as_current_span("tool.requests send"):
            pass
    with tracer.start_as_current_span("next turn") as over_budget:
        assert not over_budget.is_recording()
    assert sorted(span.name for span in exporter.get_finished_spans()) == ["llm call", "tool.requests send"]


def test_a_client_call_outside_any_span_starts_no_trace() -> None:
    provider = TracerProvider(sampler=telemetry._sampler(telemetry.TraceBudget(0)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as background_query:
        assert not background_query.is_recording()
    with tracer.start_as_current_span("POST /v1/conversations", kind=SpanKind.SERVER) as request:
        assert request.is_recording()
        with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as query:
            assert query.is_recording()


def test_unsampled_work_runs_without_client_instrumentation_and_passes_its_context_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(telemetry, "_enabled", True)
    provider = TracerProvider(sampler=telemetry._sampler(telemetry.TraceBudget(1, clock=lambda: 0.0)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("sampled turn") as sampled:
        with telemetry.follow_sampling():
            assert is_instrumentation_enabled()  # its queries and sends get spans
            assert telemetry.kafka_headers() == []  # the aiokafka instrumentation adds them
            with telemetry.untraced():
                assert not is_instrumentation_enabled()
                flags = dict(telemetry.kafka_headers())["traceparent"].decode().split("-")
    trace_id = f"{sampled.get_span_context().trace_id:032x}"
    assert flags[1] == trace_id and not int(flags[3], 16) & 1  # the same trace, not sampled downstream
    with tracer.start_as_current_span("over budget") as unsampled:
        assert not unsampled.is_recording()
        with telemetry.follow_sampling():
            assert not is_instrumentation_enabled()
            flags = dict(telemetry.kafka_headers())["traceparent"].decode().split("-")
    assert flags[1] == f"{unsampled.get_span_context().trace_id:032x}" and not int(flags[3], 16) & 1
    assert is_instrumentation_enabled()


def test_without_an_exporter_nothing_is_recorded_and_context_is_passed_on() -> None:
    assert not telemetry.enabled()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = type("Record", (), {"headers": [("traceparent", parent.encode())], "topic": "t"})()
    envelope = type("Envelope", (), {"conversation_id": "c", "turn_id": "t", "type": "x"})()
    with telemetry.consume_span("consume", record, envelope) as span:
        assert span is not None and not span.is_recording()
        headers = dict(telemetry.kafka_headers())
    assert headers["traceparent"].decode().split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


def test_jaeger_listens_only_where_it_is_told() -> None:
    config = json.loads(
        jaeger_config_text("127.0.0.1", otlp_port=1, query_port=2, grpc_port=3, max_traces=100)
    )
    assert config["receivers"] == {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:1"}}}}
    query = config["extensions"]["jaeger_query"]
    assert query["http"]["endpoint"] == "127.0.0.1:2" and query["grpc"]["endpoint"] == "127.0.0.1:3"
    assert config["service"]["telemetry"]["metrics"]["level"] == "none"  # no :8888
    assert config["extensions"]["jaeger_storage"]["backends"]["memstore"]["memory"]["max_traces"] == 100


def test_prometheus_scrapes_every_replica_of_every_service(tmp_path) -> None:
    settings = load_settings()
    targets = json.loads(prometheus_targets_text(settings, {"conversation-worker": 2, "tool-executor": 1}))
    jobs = {group["labels"]["job"]: group["targets"] for group in targets}
    assert set(jobs) == {"gateway", "conversation-worker", "tool-executor"}
    worker = settings.worker.metrics_port
    assert jobs["conversation-worker"] == [
        f"{settings.stack.host}:{worker}",
        f"{settings.stack.host}:{worker + 10}",
    ]
    config = json.loads(prometheus_config_text(settings, tmp_path / "targets.json"))
    assert config["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path / "targets.json")]


def test_trace_tree_nests_children_under_parents_across_services() -> None:
    spans: list[dict[str, Any]] = [
        {
            "span_id": "a",
            "parent_id": None,
            "service": "gateway",
            "name": "POST",
            "start": "2026-01-01T00:00:00+00:00",
            "duration_ms": 9.0,
            "attributes": {},
        },
        {
            "span_id": "b",
            "parent_id": "a",
            "service": "gateway",
            "name": "conversation.inbound send",
            "start": "2026-01-01T00:00:00.001000+00:00",
            "duration_ms": 1.0,
            "attributes": {"messaging.destination.name": "conversation.inbound"},
        },
        {
            "span_id": "c",
            "parent_id": "b",
            "service": "conversation-worker",
            "name": "llm call",
            "start": "2026-01-01T00:00:00.002000+00:00",
            "duration_ms": 5.0,
            "attributes": {},
            "events": [{"event": "first token", "at_ms": 2.5, "a0.ttft_ms": 2.5}],
        },
    ]
    roots, children = span_children(spans)
    assert [r["span_id"] for r in roots] == ["a"] and [c["span_id"] for c in children["b"]] == ["c"]
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(trace_tree({"trace_id": "t1", "spans": spans}))
    text = console.export_text()
    assert "trace t1  3 spans" in text and "topic=conversation.inbound" in text
    assert text.index("conversation.inbound send") < text.index("llm call") < text.index("first token")


def test_new_traces_are_rate_limited_and_refill_over_time() -> None:
    from services.common.telemetry import TraceBudget

    now = [0.0]
    budget = TraceBudget(2.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(3)] == [True, True, False]  # a burst of 2, then none
    now[0] += 0.5
    assert [budget.take() for _ in range(2)] == [True, False]  # one more after half a second
    now[0] += 10
    assert [budget.take() for _ in range(3)] == [True, True, False]  # never more than the burst
    assert all(TraceBudget(0).take() for _ in range(100))  # 0: no limit


def test_a_quiet_process_traces_a_burst_of_new_requests_then_keeps_to_its_rate() -> None:
    from services.common.telemetry import TraceBudget

    now = [0.0]
    budget = TraceBudget(1.0, clock=lambda: now[0], burst=4)
    assert [budget.take() for _ in range(5)] == [True, True, True, True, False]
    now[0] += 1.0
    assert [budget.take() for _ in range(2)] == [True, False]  # refilled at 1 a second


async def test_event_loop_lag_is_what_a_blocked_loop_made_a_timer_wait() -> None:
    def observed() -> tuple[float, float]:
        (family,) = metrics.LOOP_LAG_SECONDS.collect()
        samples = {s.name: s.value for s in family.samples}
        return samples["a0_event_loop_lag_seconds_count"], samples["a0_event_loop_lag_seconds_sum"]

    count, total = observed()
    watcher = asyncio.create_task(metrics.watch_loop_lag(interval_s=0.05))
    await asyncio.sleep(0.01)
    time.sleep(0.3)  # noqa: ASYNC251 -- blocking the loop is the point: the timer fires ~0.25 s late
    await asyncio.sleep(0.12)
    watcher.cancel()
    after_count, after_total = observed()
    assert after_count - count >= 2
    assert 0.2 <= after_total - total < 0.6


class _Stats:
    """A pool's name and counters, shaped as psycopg_pool's ``get_stats()`` returns them."""

    def __init__(self, name: str, stats: dict[str, int]) -> None:
        self.name = name
        self.stats = stats

    def get_stats(self) -> dict[str, int]:
        return self.stats


def test_pool_metrics_have_a_sample_per_pool_until_it_closes() -> None:
    def samples() -> dict[tuple[str, str], float]:
        text = generate_latest(REGISTRY).decode()
        return {
            (s.name, s.labels["pool"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("a0_db_pool")
            for s in family.samples
        }

    front = _Stats(
        "front", {"pool_size": 40, "pool_available": 38, "requests_num": 7, "requests_wait_ms": 1500}
    )
    back = _Stats("back", {"pool_size": 4, "requests_waiting": 2})
    stop_front, stop_back = metrics.watch_pool(front), metrics.watch_pool(back)
    try:
        seen = samples()
        assert seen[("a0_db_pool_connections", "front")] == 40
        assert seen[("a0_db_pool_idle_connections", "front")] == 38
        assert seen[("a0_db_pool_requests_total", "front")] == 7
        assert seen[("a0_db_pool_wait_seconds_total", "front")] == 1.5
        assert seen[("a0_db_pool_connections", "back")] == 4
        assert seen[("a0_db_pool_waiting", "back")] == 2
    finally:
        stop_front()
    assert {pool for _, pool in samples()} == {"back"}
    stop_back()
    assert samples() == {}


def test_tuned_collector_freezes_what_was_loaded_and_times_each_pause() -> None:
    def pauses(generation: str) -> float:
        (family,) = metrics.GC_PAUSE_SECONDS.collect()
        return next(
            s.value
            for s in family.samples
            if s.name == "a0_gc_pause_seconds_count" and s.labels["generation"] == generation
        )

    thresholds = gc.get_threshold()
    try:
        metrics.tune_gc()
        assert gc.get_threshold() == metrics.GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # the modules this process had loaded
        young, full = pauses("0"), pauses("2")
        gc.collect(0)
        gc.collect()
        assert (pauses("0"), pauses("2")) == (young + 1, full + 1)
    finally:
        gc.callbacks.remove(metrics._observe_gc)
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class _Cycle:
    """An object in a reference cycle with itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


async def test_the_old_generation_is_collected_once_the_process_goes_quiet() -> None:
    """Cycles that reached the old generation during a busy spell are freed once the
    process has spent little CPU over an interval, and not while it is busy; what was
    kept for the spell is released just before."""
    import weakref

    holder = [_Cycle()]
    freed = weakref.ref(holder[0])

    def fulls() -> int:
        return int(gc.get_stats()[2]["collections"])

    async def busy() -> None:
        while True:  # a core's worth of work, the loop still turning
            started = time.process_time()
            while time.process_time() - started < 0.02:
                pass
            await asyncio.sleep(0)

    gc.disable()  # only the collections this test makes and watches
    try:
        gc.collect()  # the cycle is now in the old generation, held by ``holder``
        released: list[bool] = []  # at each release: was the cycle still there?

        async def renew() -> None:  # a release that returns an awaitable is awaited
            await asyncio.sleep(0)
            released.append(freed() is not None)

        watcher = asyncio.create_task(
            metrics.collect_when_quiet(
                interval_s=0.1,
                after_cpu_s=0.2,
                release=[lambda: released.append(freed() is not None), renew],
            )
        )
        load = asyncio.create_task(busy())
        holder.clear()  # the cycle is garbage in the old generation
        await asyncio.sleep(0.6)
        assert freed() is not None and released == []  # busy all along: never collected here
        load.cancel()
        await asyncio.sleep(0.35)
        assert freed() is None  # quiet for an interval after 0.6 s of CPU: collected
        assert released == [True, True]  # released first, then collected
        full = fulls()
        await asyncio.sleep(0.5)
        assert fulls() == full and released == [True, True]  # once, not at every quiet interval
        watcher.cancel()
    finally:
        gc.enable()
