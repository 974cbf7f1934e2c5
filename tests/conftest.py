"""Test-wide set-up: every tier shares one test stack configuration, on its own ports
and state directory, so a developer's running stack is never touched."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_STATE = ROOT / ".a0-test"

TEST_ENV = {
    "A0_HOME": str(ROOT),
    "A0_STATE_DIR": str(TEST_STATE),
    "A0_CONF_DIR": str(TEST_STATE / "conf"),
    "A0_KAFKA_PORT": "29092",
    "A0_KAFKA_CONTROLLER_PORT": "29093",
    "A0_REDIS_PORT": "26379",
    "A0_POSTGRES_PORT": "25432",
    "A0_OPA_PORT": "28181",
    "A0_GATEWAY_PORT": "28080",
    "A0_LLM_SIM_PORT": "28000",
    "A0_WORKER_METRICS_PORT": "29101",
    "A0_TOOLS_METRICS_PORT": "29102",
    "A0_RUNTIME": "local",
}
# Set before any settings are read, and inherited by every process the tests start.
os.environ.update(TEST_ENV)
for key in ("A0_LLM_BASE_URL", "A0_LLM_API_KEY", "A0_GATEWAY_JWT_SECRET"):
    os.environ.pop(key, None)
