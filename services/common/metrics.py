"""Prometheus metrics shared by the services (one registry per process)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from services.common.ticks import sleep_to_tick, until_tick

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30)

REQUESTS = Counter("a0_gateway_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_LATENCY = Histogram(
    "a0_gateway_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS
)
EVENTS_FANNED_OUT = Counter("a0_gateway_events_total", "Outbound events delivered to clients", ["type"])
CLIENTS = Gauge("a0_gateway_clients", "Connected streaming clients", ["transport"])
SHED = Counter("a0_gateway_shed_total", "Requests refused with 429", ["reason"])
TURN_BUDGET = Gauge(
    "a0_gateway_turn_budget",
    "Open turns past which new messages are shed: what the stack ends in A0_GATEWAY_SHED_TURN_S "
    "at its measured rate, at least A0_GATEWAY_MAX_INFLIGHT_TURNS",
)

EVENT_LATENCY = Histogram(
    "a0_event_latency_seconds",
    "Time from an event's creation to its fan-out by the gateway",
    ["type"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_LAG_SECONDS = Histogram(
    "a0_consumer_lag_seconds",
    "Age of a record when its handler starts",
    ["group", "topic"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_INFLIGHT = Gauge("a0_consumer_inflight", "Records being handled", ["group"])
DEAD_LETTERS = Counter("a0_dead_letters_total", "Records sent to a dead-letter topic", ["group"])

TURNS = Counter("a0_turns_total", "Turns finished by the worker", ["outcome"])
TURNS_INFLIGHT = Gauge("a0_turns_inflight", "Turns the worker is running")
TURN_SECONDS = Histogram("a0_turn_seconds", "Turn duration in the worker", buckets=LATENCY_BUCKETS)
TRANSCRIPT_ROWS_READ = Counter(
    "a0_worker_transcript_rows_read_total",
    "Transcript rows a turn start read from PostgreSQL (the rest came from the worker's cache)",
)
TRANSCRIPTS_CACHED = Gauge("a0_worker_transcripts_cached", "Conversations whose transcript the worker keeps")
LLM_SECONDS = Histogram("a0_llm_call_seconds", "Upstream LLM call duration", buckets=LATENCY_BUCKETS)
TOOL_CALLS = Counter("a0_tool_calls_total", "Tool calls", ["tool", "outcome"])

# --- messaging: every record a0 sends or handles, by topic ----------------------------
MESSAGES_OUT = Counter("a0_messages_produced_total", "Records sent to Kafka", ["topic"])
MESSAGES_IN = Counter("a0_messages_consumed_total", "Records read from Kafka and handled", ["group", "topic"])
CONSUMER_LAG = Gauge(
    "a0_consumer_lag_records",
    "Records of a partition not handled yet by a consumer group (high watermark - handled)",
    ["group", "topic", "partition"],
)
TTFT_SECONDS = Histogram(
    "a0_llm_ttft_seconds",
    "Time from an LLM call's start to its first streamed chunk",
    buckets=LATENCY_BUCKETS,
)
TOOL_SECONDS = Histogram("a0_tool_seconds", "Tool run duration", ["tool"], buckets=LATENCY_BUCKETS)
TOOL_ERRORS = Counter("a0_tool_errors_total", "Tool calls answered with an error", ["tool", "code"])
LOOP_LAG_SECONDS = Histogram(
    "a0_event_loop_lag_seconds",
    "How late the process's event loop ran a timer: its backlog of ready work (CPU saturation)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# Often enough to see a saturated loop within a scrape (ten samples in one at the default
# 10 s), rarely enough that an idle service sleeps (ten wake-ups a second at 0.1 s, in
# every process of the stack).
LOOP_LAG_INTERVAL_S = 1.0
GC_PAUSE_SECONDS = Histogram(
    "a0_gc_pause_seconds",
    "Pauses of the process for Python's cyclic garbage collector, by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)

_produced: dict[str, Any] = {}


def produced(topic: str) -> None:
    """Count a record sent (a label lookup per topic, once: this is on every hop)."""
    child = _produced.get(topic)
    if child is None:
        child = _produced[topic] = MESSAGES_OUT.labels(topic)
    child.inc()


async def watch_loop_lag(interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Observe, every ``interval_s``, how much later than asked a timer fired."""
    loop = asyncio.get_running_loop()
    observe = LOOP_LAG_SECONDS.observe
    while True:
        delay = until_tick(interval_s)
        asked = loop.time() + delay
        await asyncio.sleep(delay)
        observe(max(0.0, loop.time() - asked))


# --- the cyclic garbage collector -----------------------------------------------------

# A collection of the young generation once 10 000 container objects more are alive than
# at the last one (Python's default: 700), of the middle one every 20 of those and of
# the whole heap every 10 of these, as by default: under a 500-session load about every
# seven minutes, so cycles that outlived the young collections are still freed. With
# the defaults, a gateway streaming to 500 sessions walked its whole heap several times
# a minute, each a pause of its event loop of up to 0.4 s (1.9 s of 40 s in
# collections); with these, 0.3 s in all and the longest pause 0.13 s. Garbage without
# cycles is freed at once, as before.
GC_THRESHOLDS = (10_000, 20, 10)


def tune_gc() -> None:
    """Set the collector up for a long-running service: what was loaded at start (the
    modules, the app) is frozen out of every later collection, collections are rarer
    (:data:`GC_THRESHOLDS`), and each pause is observed in ``a0_gc_pause_seconds``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if _observe_gc not in gc.callbacks:
        gc.callbacks.append(_observe_gc)


# How often a service looks whether it went quiet (:func:`collect_when_quiet`).
QUIET_COLLECT_INTERVAL_S = 5.0
# Quiet: it used at most this share of a core over that interval.
QUIET_CPU_SHARE = 0.02
# Worth a collection: at least this much CPU spent since the last one ...
QUIET_COLLECT_AFTER_CPU_S = 1.0
# ... and at least this many times what the last one cost.
QUIET_COLLECT_COST_RATIO = 20


async def let_go(release: Sequence[Callable[[], object]]) -> None:
    """Call each of ``release``, awaiting what returns an awaitable; one that fails is
    logged, and the others are still called."""
    for call in release:
        try:
            done = call()
            if inspect.isawaitable(done):
                await done
        except Exception as exc:
            log.warning("letting go of what a busy spell kept failed (%r): %s", call, exc)


async def collect_when_quiet(
    interval_s: float = QUIET_COLLECT_INTERVAL_S,
    after_cpu_s: float = QUIET_COLLECT_AFTER_CPU_S,
    release: Sequence[Callable[[], object]] = (),
) -> None:
    """Collect the whole heap once a busy spell is over, not minutes later.

    What lived through a spell (a connection, a stream and its tasks) is in the old
    generation by the time the spell ends, and the cycles among those objects (a
    transport and its protocol, an exception's traceback and the frames that hold it) are
    freed only by a collection of the whole heap, which :data:`GC_THRESHOLDS` makes rare.
    Nor does a young collection mark the spell: steady traffic frees what it allocates,
    and closing a thousand connections allocates next to nothing. So the measure is the
    process's CPU: once it has spent ``after_cpu_s`` (and 20 times what the last such
    collection cost) since the last one, and then an interval passes in which it used
    under 2 % of a core, the whole heap is collected. A busy process never collects
    here; one that went quiet collects once (figures: docs/messaging.md, "What a turn
    costs").

    Just before, each of ``release`` is called (and awaited, if it returns an awaitable):
    what the process kept only to serve the spell (the policy decisions cached for its
    requests, its PostgreSQL connections' backends) goes with it. Left until they
    expired and the next request swept them, a few thousand such entries, made while the
    heap was at its largest, kept tens of MiB of it from going back to the system."""
    cpu = time.process_time
    cost, at_full = 0.0, cpu()
    await sleep_to_tick(interval_s)  # the first interval is a part of one: only measure from here
    before = cpu()
    while True:
        await sleep_to_tick(interval_s)
        now = cpu()
        quiet = now - before <= interval_s * QUIET_CPU_SHARE
        if quiet and now - at_full >= max(after_cpu_s, QUIET_COLLECT_COST_RATIO * cost):
            started = now
            await let_go(release)
            gc.collect()
            now = at_full = cpu()
            cost = at_full - started
        before = now


_gc_started: list[float] = [0.0]
_gc_pauses = [GC_PAUSE_SECONDS.labels(str(generation)) for generation in range(3)]


def _observe_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _gc_pauses[info["generation"]].observe(time.perf_counter() - _gc_started[0])


# --- PostgreSQL connection pools: read from psycopg_pool's own counters at each scrape ----


class _StatsPool(Protocol):
    @property
    def name(self) -> str: ...

    def get_stats(self) -> dict[str, int]: ...


class _PoolCollector(Collector):
    """One collector for every pool of the process, a sample per pool."""

    def __init__(self) -> None:
        self.pools: list[_StatsPool] = []

    def collect(self) -> Iterator[Metric]:
        stats = [(pool.name, pool.get_stats()) for pool in self.pools]

        def family(
            kind: type[GaugeMetricFamily | CounterMetricFamily],
            name: str,
            doc: str,
            key: str,
            scale: float = 1,
        ) -> Metric:
            metric = kind(name, doc, labels=["pool"])
            for pool, values in stats:
                metric.add_metric([pool], values.get(key, 0) * scale)
            return metric

        yield family(GaugeMetricFamily, "a0_db_pool_connections", "Connections the pool holds", "pool_size")
        yield family(
            GaugeMetricFamily,
            "a0_db_pool_idle_connections",
            "Connections ready to be taken",
            "pool_available",
        )
        yield family(
            GaugeMetricFamily,
            "a0_db_pool_waiting",
            "Requests waiting for a connection now",
            "requests_waiting",
        )
        yield family(
            CounterMetricFamily, "a0_db_pool_requests", "Connections taken from the pool", "requests_num"
        )
        yield family(
            CounterMetricFamily,
            "a0_db_pool_wait_seconds",
            "Time requests spent waiting for a connection (the pool too small, or a slow start)",
            "requests_wait_ms",
            1 / 1000,
        )
        yield family(
            CounterMetricFamily, "a0_db_pool_connects", "Connections the pool opened", "connections_num"
        )


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def watch_pool(pool: _StatsPool) -> Callable[[], None]:
    """Export ``pool``'s use as ``a0_db_pool_*{pool=...}``; returns what stops it."""
    _POOLS.pools.append(pool)
    return lambda: _POOLS.pools.remove(pool)


# --- the /metrics endpoint of a service without an HTTP app of its own ----------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """No line per scrape."""


# The server thread is a daemon and never asked to stop, so it need not wake to check.
_SERVE_POLL_S = 3600.0


def serve_metrics(port: int, addr: str) -> None:
    """Serve this process's registry on ``http://addr:port/metrics`` from a daemon thread,
    as prometheus_client's ``start_http_server`` does, but with a thread that sleeps until
    a scrape: its own polls the listening socket twice a second to see if it should stop."""
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    httpd: ThreadingWSGIServer = make_server(
        addr, port, make_wsgi_app(REGISTRY), server_class, handler_class=_QuietHandler
    )
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": _SERVE_POLL_S}, name="metrics", daemon=True
    ).start()
