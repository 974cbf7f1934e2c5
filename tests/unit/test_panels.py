"""The charts' one definition (services.common.panels) and its readers: the Grafana
dashboard file, ``a0ctl top`` and the ops page."""

from __future__ import annotations

import json
import re
from pathlib import Path

from a0ctl.observe import RATE_WINDOW, TOP_QUERIES
from a0ctl.roadmap.live import exported_metrics
from services.common.panels import PANELS, TARGETS, TOP_FIGURES, grafana_panels, promql

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "stack" / "grafana" / "dashboards" / "a0.json"


def test_the_dashboard_file_is_the_panels_module() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["panels"] == grafana_panels(), (
        "stack/grafana/dashboards/a0.json differs from services/common/panels.py: "
        "run `.venv/bin/python -m services.common.panels` and commit the file"
    )


def test_a_changed_panel_query_is_a_difference_the_check_sees() -> None:
    board = json.loads(DASHBOARD.read_text())
    board["panels"][0]["targets"][0]["expr"] = "sum(rate(a0_turns_total[5m]))"
    assert board["panels"] != grafana_panels()


def test_keys_are_unique_and_queries_name_exported_metrics() -> None:
    keys = [target.key for panel in PANELS for target in panel.targets]
    assert len(keys) == len(set(keys)) == len(TARGETS)
    assert len({panel.key for panel in PANELS}) == len(PANELS)
    named = {name for target in TARGETS.values() for name in re.findall(r"\ba0_[a-z0-9_]+", target.expr)}
    assert named and named <= exported_metrics()


def test_top_reads_the_dashboard_queries() -> None:
    assert list(TOP_QUERIES) == list(TOP_FIGURES)
    for key, expr in TOP_QUERIES.items():
        assert expr == promql(TARGETS[key].expr, RATE_WINDOW)
        assert "$__" not in expr


def test_the_ops_page_charts_throughput_errors_latency_lag_load_and_dead_letters() -> None:
    charted = {target.key for panel in PANELS if panel.ops for target in panel.targets}
    for key in (
        "turns_per_s",
        "messages_out_per_s",
        "error_rate",
        "turn_p95_s",
        "ttft_p99_s",
        "lag_records",
        "turns_in_flight",
        "shed_per_s",
        "dead_letters_per_s",
    ):
        assert key in charted
