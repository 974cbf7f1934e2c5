"""The local runtime's telemetry services: Jaeger (traces) and Prometheus (metrics),
with their generated configs and Prometheus' scrape targets."""

from __future__ import annotations

import json
from pathlib import Path

from a0ctl.runtime import artifacts, health
from a0ctl.runtime.service import LocalService, StackDirs, tools_metrics_port, worker_metrics_port
from services.common.settings import Settings

# Jaeger's Go heap grows to twice what it holds before it collects (GOGC=100); at 50, to
# one and a half. It holds the last A0_OTEL_JAEGER_MAX_TRACES traces, and its CPU is a
# hundredth of a millisecond per turn, so the extra collections cost nothing measurable.
JAEGER_ENV = {"GOGC": "50"}


def jaeger_service(settings: Settings, dirs: StackDirs) -> LocalService:
    """Jaeger v2 (built once with Go): OTLP/HTTP in, traces in memory, the query API."""
    telemetry = settings.telemetry
    config = dirs.run / "jaeger.yaml"

    def prepare() -> None:
        artifacts.ensure_jaeger(settings)
        config.write_text(
            jaeger_config_text(
                settings.stack.host,
                otlp_port=telemetry.jaeger_otlp_port,
                query_port=telemetry.jaeger_query_port,
                grpc_port=telemetry.jaeger_grpc_port,
                max_traces=telemetry.jaeger_max_traces,
            )
        )

    return LocalService(
        name="jaeger",
        port=telemetry.jaeger_query_port,
        extra_ports=(telemetry.jaeger_otlp_port, telemetry.jaeger_grpc_port),
        probe=health.jaeger_probe,
        prepare=prepare,
        command=lambda: [str(artifacts.jaeger_path(settings)), "--config", str(config)],
        env=JAEGER_ENV,
    )


def jaeger_config_text(host: str, *, otlp_port: int, query_port: int, grpc_port: int, max_traces: int) -> str:
    """Jaeger v2's configuration: OTLP/HTTP in, in-memory storage, the query API; every
    port on ``host`` and named (Jaeger's defaults would open others on all addresses)."""
    config = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
        },
        "extensions": {
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": max_traces}}}},
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                "enable_tracing": False,  # its own spans would go to localhost:4317
                "http": {"endpoint": f"{host}:{query_port}"},
                "grpc": {"endpoint": f"{host}:{grpc_port}"},
            },
        },
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"{host}:{otlp_port}"}}}},
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def prometheus_service(settings: Settings, dirs: StackDirs, scaled: dict[str, int]) -> LocalService:
    """Debian's Prometheus, scraping every a0 service (targets follow `a0ctl scale`)."""
    config = dirs.run / "prometheus.yml"
    targets = dirs.run / "prometheus-targets.json"
    storage = dirs.data / "prometheus"
    host = settings.stack.host

    def prepare() -> None:
        """Also run by `a0ctl scale`, so the targets follow the replicas."""
        storage.mkdir(parents=True, exist_ok=True)
        config.write_text(prometheus_config_text(settings, targets))
        staging = targets.with_suffix(".tmp")
        staging.write_text(prometheus_targets_text(settings, scaled))
        staging.rename(targets)  # Prometheus never reads half a file

    return LocalService(
        name="prometheus",
        port=settings.prometheus.port,
        probe=health.prometheus_probe,
        prepare=prepare,
        command=lambda: [
            artifacts.require_binary("prometheus", "prometheus", "apt-get install prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            f"--storage.tsdb.retention.time={settings.prometheus.retention}",
            f"--web.listen-address={host}:{settings.prometheus.port}",
            "--log.level=warn",
        ],
    )


def scrape_targets(settings: Settings, replicas: dict[str, int]) -> dict[str, list[str]]:
    """Every a0 service's metrics address, by job (one per service, replicas as targets)."""
    host = settings.stack.host
    return {
        "gateway": [f"{host}:{settings.gateway.port}"],
        "conversation-worker": [
            f"{host}:{worker_metrics_port(settings, r)}" for r in range(replicas["conversation-worker"])
        ],
        "tool-executor": [
            f"{host}:{tools_metrics_port(settings, r)}" for r in range(replicas["tool-executor"])
        ],
    }


def prometheus_config_text(settings: Settings, targets_file: Path) -> str:
    """Prometheus's configuration in the local runtime: scrape what ``targets_file`` lists
    (Prometheus re-reads it when it changes, so `a0ctl scale` needs no restart)."""
    interval = f"{settings.prometheus.scrape_interval_s}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "a0",
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
            }
        ],
    }
    return json.dumps(config, indent=2)


def prometheus_targets_text(settings: Settings, replicas: dict[str, int]) -> str:
    """The scrape targets (file_sd format): one job per a0 service, replicas as targets."""
    return json.dumps(
        [
            {"targets": targets, "labels": {"job": job, "service": job}}
            for job, targets in scrape_targets(settings, replicas).items()
        ],
        indent=2,
    )
