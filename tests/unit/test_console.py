"""The ops page's server side, in what needs no stack: which groups it reads, how it
names series, the rate window of each range, and the principal it acts as."""

from __future__ import annotations

from pydantic import SecretStr

from services.common.panels import TARGETS, legend
from services.common.settings import load_settings
from services.common.topics import CONSUMER_GROUPS
from services.conversation_worker.main import GROUP as WORKER_GROUP
from services.gateway.console import RANGES, ops_settings, rate_window
from services.tool_executor.main import GROUP as EXECUTOR_GROUP


def test_the_groups_read_are_the_services_own() -> None:
    assert set(CONSUMER_GROUPS) == {WORKER_GROUP, EXECUTOR_GROUP}


def test_series_are_named_as_grafana_names_them() -> None:
    labels = {"group": "a0-conversation-worker", "topic": "conversation.inbound", "partition": "3"}
    assert legend(TARGETS["lag_records"], labels) == "a0-conversation-worker conversation.inbound[3]"
    assert legend(TARGETS["shed_per_s"], {"reason": "inflight"}) == "shed /s inflight"
    assert legend(TARGETS["shed_per_s"], {}) == "shed /s"


def test_each_range_rates_over_at_least_four_scrapes_and_a_step() -> None:
    assert rate_window(5, 10) == "40s"
    assert rate_window(180, 10) == "190s"
    for length_s, step_s in RANGES.values():
        assert 60 <= length_s // step_s <= 200  # enough points to draw, few enough to fetch


def test_the_console_acts_as_the_ops_principal_and_leaves_the_settings_alone() -> None:
    settings = load_settings()
    settings.kafka.ops_password = SecretStr("ops-secret")
    ops = ops_settings(settings)
    assert ops.kafka.sasl_username == settings.kafka.ops_username == "ops"
    assert ops.kafka.sasl_password.get_secret_value() == "ops-secret"
    assert settings.kafka.sasl_username != "ops"  # the gateway's own clients are unchanged
