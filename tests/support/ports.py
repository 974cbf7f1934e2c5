"""The ports of a private stack: the test tiers' (``tests/conftest.py``) and the bench's
(``bench/conversations.py``), each these plus its own offset."""

from __future__ import annotations

STACK_PORTS = {
    "A0_KAFKA_PORT": 29092,
    "A0_KAFKA_CONTROLLER_PORT": 29093,
    "A0_REDIS_PORT": 26379,
    "A0_POSTGRES_PORT": 25432,
    "A0_OPA_PORT": 28181,
    "A0_GATEWAY_PORT": 28080,
    "A0_LLM_SIM_PORT": 28000,
    "A0_WORKER_METRICS_PORT": 29101,
    "A0_TOOLS_METRICS_PORT": 29102,
    "A0_OTEL_JAEGER_OTLP_PORT": 24318,
    "A0_OTEL_JAEGER_QUERY_PORT": 26686,
    "A0_OTEL_JAEGER_GRPC_PORT": 26685,
    "A0_PROMETHEUS_PORT": 29090,
}


def stack_ports(offset: int) -> dict[str, int]:
    """Each of :data:`STACK_PORTS` plus ``offset``."""
    return {key: port + offset for key, port in STACK_PORTS.items()}
