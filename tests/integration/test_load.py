"""``a0ctl load`` against the real stack: the report a release check would read."""

from __future__ import annotations

import json

import pytest

from a0ctl.runtime.local import LocalRuntime
from tests.support.cli import a0ctl

pytestmark = pytest.mark.integration


def test_load_report_counts_answers_and_finds_nothing_lost_or_repeated(stack: LocalRuntime) -> None:
    result = a0ctl("load", "--sessions", "8", "--duration", "6", "--think", "0.2", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"] is True, report
    assert report["completed"] >= 8 and report["completed"] == report["accepted"]
    assert report["lost"] == 0 and report["duplicate_events"] == 0 and report["missing_events"] == 0
    assert report["response_s"]["p50"] > 0 and report["delivery_ms"]["p99"] is not None
