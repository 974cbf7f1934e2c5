"""Test-wide set-up: every tier shares one test stack configuration, on its own ports
and state directory, so a developer's running stack is never touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.ports import stack_ports

ROOT = Path(__file__).resolve().parents[1]
# Several test stacks can run side by side on one machine: each offset gets its own ports
# and state directory.
PORT_OFFSET = int(os.environ.get("A0_TEST_PORT_OFFSET", "0"))
TEST_STATE = ROOT / (".a0-test" + (f"-{PORT_OFFSET}" if PORT_OFFSET else ""))


def _port(base: int) -> str:
    return str(base + PORT_OFFSET)


TEST_ENV = {
    "A0_HOME": str(ROOT),
    "A0_STATE_DIR": str(TEST_STATE),
    "A0_CONF_DIR": str(TEST_STATE / "conf"),
    **{key: str(port) for key, port in stack_ports(PORT_OFFSET).items()},
    # Nodes 2 and 3 of the cluster tier (29140-29143).
    "A0_KAFKA_CLUSTER_PORT": _port(29140),
    "A0_RUNTIME": "local",
    # Slow enough that a test can cancel or disconnect mid-answer.
    "A0_LLM_SIM_TOKENS_PER_S": "80",
    "A0_LLM_SIM_LATENCY_MS": "20",
    # Every turn traced: the tests read each one back.
    "A0_OTEL_TRACES_PER_S": "0",
    # The reference MCP servers, with the allow-lists the tests need.
    "A0_TOOLS_MCP_FILE": "tests/support/mcp.yaml",
    # Short enough for the fault tier to see the watchdog act.
    "A0_WATCHDOG_UNHEALTHY_S": "15",
}
# Local upstreams started by tests (the recorded-stream replay, an OpenAI-compatible server
# from PyPI), allowed as an operator allows a local model server.
REPLAY_PORT = 28010 + PORT_OFFSET
PROVIDER_PORT = 28011 + PORT_OFFSET
TEST_ENV["A0_EGRESS_ALLOW"] = f"127.0.0.1:{REPLAY_PORT},127.0.0.1:{PROVIDER_PORT}"
# A provider that sends nothing fails the turn in this time (the conformance suite waits it out).
TEST_ENV["A0_WORKER_LLM_FIRST_CONTENT_S"] = "20"
# Set before any settings are read, and inherited by every process the tests start.
os.environ.update(TEST_ENV)
for key in (
    "A0_LLM_BASE_URL",
    "A0_LLM_API_KEY",
    "A0_GATEWAY_JWT_SECRET",
    "A0_OTEL_EXPORTER_OTLP_ENDPOINT",
    "A0_OTEL_JAEGER_URL",
    "A0_PROMETHEUS_URL",
):
    os.environ.pop(key, None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked ``@pytest.mark.milestone("M3")`` proves that milestone of
    docs/roadmap.md: its JUnit case carries the property, which ``a0ctl roadmap`` reads."""
    for item in items:
        for mark in item.iter_markers("milestone"):
            item.user_properties.append(("milestone", mark.args[0]))
