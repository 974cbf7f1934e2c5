"""The a0 services' Prometheus metrics, read as a test reads them: scraped, summed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from a0ctl.runtime.telemetry_services import scrape_targets
from services.common.settings import Settings


def families(settings: Settings) -> Iterator[Metric]:
    """Every metric family of every a0 service, as each exports it now."""
    for targets in scrape_targets(settings, {"conversation-worker": 1, "tool-executor": 1}).values():
        for target in targets:
            yield from text_string_to_metric_families(httpx.get(f"http://{target}/metrics", timeout=5).text)


def scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample every a0 service exports now, summed over the services."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in families(settings):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(dict(have).items())
    )


def exported_names(settings: Settings) -> set[str]:
    """Every metric name any a0 service exposes (with its sample suffixes), samples or not."""
    names: set[str] = set()
    for family in families(settings):
        names |= {family.name, *(f"{family.name}{s}" for s in ("_total", "_bucket", "_sum", "_count"))}
        names |= {sample.name for sample in family.samples}
    return names
