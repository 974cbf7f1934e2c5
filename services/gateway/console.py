"""What the ops page shows, read server-side: Prometheus and Jaeger stay on their private
ports, and the gateway asks them for an admin (routes_console says who may).

- charts: the panels of :mod:`services.common.panels` marked ``ops``, as range queries;
- services: each scraped a0 process from Prometheus (``up``, its start time, how often
  it started again) and each dependency from the gateway's own readiness checks. Nothing
  new is opened to the gateway: Prometheus already knows the processes, and the
  gateway already probes its dependencies;
- topics: partitions, end offsets and each group's committed offset and lag, from Kafka
  as the ``ops`` principal (Describe only on these topics and groups);
- traces: from Jaeger's query API (:mod:`services.common.traces`);
- dead letters: :mod:`services.common.dlq`, as the ``ops`` principal, recorded with the
  admin's user id as who.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import aiohttp
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from services.common import dlq
from services.common.http import LazySession
from services.common.kafka import MissingTopics, client_options, topic_partitions
from services.common.panels import PANELS, legend, promql
from services.common.settings import Settings
from services.common.topics import CONSUMER_GROUPS, TURN_TOPICS
from services.common.traces import TRACES_PATH, parse_traces, trace_query
from services.gateway.errors import ApiError, NotFound

TIMEOUT_S = 8.0
KAFKA_TIMEOUT_MS = 8000

RangeName = Literal["5m", "1h", "6h"]
# Each range the page offers: its length and the step between points (about 120 a chart).
RANGES: dict[str, tuple[int, int]] = {"5m": (300, 5), "1h": (3600, 30), "6h": (6 * 3600, 180)}
# How far back a service's restarts are counted.
RESTARTS_WINDOW = "6h"


class UpstreamUnavailable(ApiError):
    """Prometheus, Jaeger or Kafka did not answer the gateway."""

    code, status = "upstream_unavailable", 502


def rate_window(step_s: int, scrape_s: int) -> str:
    """Grafana's ``$__rate_interval``: four scrapes, or a step and a scrape, whichever is longer."""
    return f"{max(4 * scrape_s, step_s + scrape_s)}s"


def ops_settings(settings: Settings) -> Settings:
    """The settings as the ops principal: its name and password for Kafka."""
    kafka = settings.kafka.model_copy(
        update={"sasl_username": settings.kafka.ops_username, "sasl_password": settings.kafka.ops_password}
    )
    return settings.model_copy(update={"kafka": kafka})


class Console:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ops = ops_settings(settings)
        self.prometheus_url = settings.prometheus.base_url(settings.stack.host)
        self.jaeger_url = settings.telemetry.query_url(settings.stack.host)
        self._http = LazySession(connections=8, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- Prometheus -----------------------------------------------------------------

    async def _prometheus(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.prometheus_url}{path}"
        try:
            async with self._http.get().get(url, params=params) as response:
                body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise UpstreamUnavailable(
                f"Prometheus does not answer at {self.prometheus_url} ({type(exc).__name__}); "
                "is it running? (`a0ctl status`)"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise UpstreamUnavailable(f"Prometheus refused {params.get('query')!r}: {error or 'no answer'}")
        return body["data"]["result"]

    async def instant(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._prometheus("/api/v1/query", {"query": expr})
        return result

    async def charts(self, range_name: str, *, now_s: float | None = None) -> dict[str, Any]:
        """Every ops panel's series over the range, on one time axis (Unix seconds)."""
        length_s, step_s = RANGES[range_name]
        end = int(now_s if now_s is not None else time.time())
        start = end - length_s
        window = rate_window(step_s, self.settings.prometheus.scrape_interval_s)
        panels = [panel for panel in PANELS if panel.ops]
        targets = [(panel, target) for panel in panels for target in panel.targets]
        params = {"start": str(start), "end": str(end), "step": str(step_s)}
        results = await asyncio.gather(
            *(
                self._prometheus("/api/v1/query_range", {**params, "query": promql(target.expr, window)})
                for _, target in targets
            )
        )
        timestamps = list(range(start, end + 1, step_s))
        index = {t: i for i, t in enumerate(timestamps)}
        series: dict[str, list[dict[str, Any]]] = {panel.key: [] for panel in panels}
        for (panel, target), result in zip(targets, results, strict=True):
            for item in result:
                values: list[float | None] = [None] * len(timestamps)
                for at, value in item.get("values") or ():
                    position = index.get(int(float(at)))
                    number = float(value)
                    if position is not None and number == number and abs(number) != float("inf"):
                        values[position] = number
                series[panel.key].append(
                    {
                        "target": target.key,
                        "label": legend(target, item.get("metric") or {}),
                        "values": values,
                    }
                )
        return {
            "range": range_name,
            "step_s": step_s,
            "rate_window": window,
            "timestamps": timestamps,
            "panels": [
                {"key": p.key, "title": p.title, "unit": p.unit, "series": series[p.key]} for p in panels
            ],
        }

    async def processes(self) -> list[dict[str, Any]]:
        """Each a0 process Prometheus scrapes: up or down, since when, restarts lately."""
        up, started, restarts = await asyncio.gather(
            self.instant("up"),
            self.instant("process_start_time_seconds"),
            self.instant(f"changes(process_start_time_seconds[{RESTARTS_WINDOW}])"),
        )

        def key(item: dict[str, Any]) -> tuple[str, str]:
            metric = item.get("metric") or {}
            return metric.get("service") or metric.get("job", "?"), metric.get("instance", "?")

        since = {key(item): float(item["value"][1]) for item in started}
        changes = {key(item): int(float(item["value"][1])) for item in restarts}
        rows = []
        for item in up:
            name = key(item)
            if name[0] == "prometheus":
                continue
            healthy = item["value"][1] == "1"
            rows.append(
                {
                    "service": name[0],
                    "instance": name[1],
                    "state": "running" if healthy else "down",
                    "restarts": changes.get(name, 0),
                    "since": since.get(name) if healthy else None,
                    "health": "ok" if healthy else "Prometheus cannot scrape it",
                }
            )
        return sorted(rows, key=lambda r: (r["service"], r["instance"]))

    # --- Jaeger ---------------------------------------------------------------------

    async def jaeger_health(self) -> str:
        try:
            async with self._http.get().get(f"{self.jaeger_url}/api/services") as response:
                return "ok" if response.status == 200 else f"HTTP {response.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"no answer ({type(exc).__name__})"

    async def traces(self, conversation_id: str | None, turn_id: str | None) -> list[dict[str, Any]]:
        params = trace_query(conversation_id=conversation_id, turn_id=turn_id)
        url = f"{self.jaeger_url}{TRACES_PATH}"
        try:
            async with self._http.get().get(url, params=params) as response:
                if response.status != 200:
                    raise UpstreamUnavailable(f"Jaeger answered HTTP {response.status} at {self.jaeger_url}")
                body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise UpstreamUnavailable(
                f"Jaeger does not answer at {self.jaeger_url} ({type(exc).__name__}); is it running? "
                "(it runs unless A0_OTEL_JAEGER=false)"
            ) from None
        found = parse_traces(body, turn_id)
        if not found:
            what = f"turn {turn_id}" if turn_id else f"conversation {conversation_id}"
            raise NotFound(
                f"no trace of {what} in Jaeger: spans reach it a second or two after a turn, "
                "and Jaeger keeps traces in memory until it restarts"
            )
        return found

    # --- Kafka ----------------------------------------------------------------------

    async def topics(self) -> list[dict[str, Any]]:
        """Each partition of the turn's topics: its end offset, and each group's committed
        offset and lag on it."""
        options = client_options(self.ops)
        consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, request_timeout_ms=KAFKA_TIMEOUT_MS)
        admin = AIOKafkaAdminClient(**options, request_timeout_ms=KAFKA_TIMEOUT_MS)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await consumer.start()
                await admin.start()
                tps = await topic_partitions(admin, list(TURN_TOPICS))
                ends = await consumer.end_offsets(tps)
                committed = {
                    group: await admin.list_consumer_group_offsets(group) for group in CONSUMER_GROUPS
                }
        except MissingTopics as exc:
            raise UpstreamUnavailable(f"{exc} (run `a0ctl topics apply`)") from None
        except (TimeoutError, KafkaError) as exc:
            raise UpstreamUnavailable(
                f"Kafka does not answer the ops principal at {self.settings.kafka_bootstrap}: "
                f"{type(exc).__name__}"
            ) from None
        finally:
            await asyncio.gather(consumer.stop(), admin.close(), return_exceptions=True)
        rows = []
        for tp in tps:
            groups = {}
            for group, offsets in committed.items():
                meta = offsets.get(tp)
                if meta is not None and meta.offset >= 0:
                    groups[group] = {"committed": meta.offset, "lag": max(0, ends[tp] - meta.offset)}
            rows.append(
                {"topic": tp.topic, "partition": tp.partition, "end_offset": ends[tp], "groups": groups}
            )
        return rows

    # --- dead letters -----------------------------------------------------------------

    async def dead_letters(self, handled: bool) -> list[dlq.DeadLetter]:
        return await dlq.list_dead_letters(self.ops, handled=handled)

    async def dead_letter(self, entry: str) -> dlq.DeadLetter:
        return await dlq.show_dead_letter(self.ops, entry)

    async def act(
        self, entry: str, action: Literal["replay", "discard"], by: str, force: bool
    ) -> dlq.ActionResult:
        client_id = f"gateway-{self.settings.gateway.replica}-ops"
        if action == "replay":
            return await dlq.replay(self.ops, entry, by=by, client_id=client_id, force=force)
        return await dlq.discard(self.ops, entry, by=by, client_id=client_id)
