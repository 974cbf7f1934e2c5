"""Envelope versions: release N writes version N and reads N-1, checked against records
recorded from a real stack of each version (tests/fixtures/envelopes/v<version>/,
made by ``python -m tests.support.record_envelopes``); the JSON schema in docs/ is the
one the model exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from services.common.envelope import (
    CLIENT_EVENTS,
    MIN_READ_VERSION,
    SCHEMA_VERSION,
    Envelope,
    EnvelopeError,
    EventType,
    export_schema,
    roles_of,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "envelopes"
READABLE = range(MIN_READ_VERSION, SCHEMA_VERSION + 1)
RECORDED = sorted(path for version in READABLE for path in (FIXTURES / f"v{version}").glob("*.json"))


def test_the_previous_version_is_still_read() -> None:
    assert MIN_READ_VERSION == max(1, SCHEMA_VERSION - 1)


@pytest.mark.parametrize("version", READABLE)
def test_every_readable_version_has_recorded_records_of_every_topic(version: int) -> None:
    recorded = {path.stem for path in (FIXTURES / f"v{version}").glob("*.json")}
    # conversation.inbound, conversation.outbound, tool.requests, tool.results
    assert {"message.user", "message.completed", "tool.request", "tool.response"} <= recorded, recorded


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_recorded_record_is_read_as_the_consumers_read_it(path: Path) -> None:
    raw = path.read_bytes().strip()
    envelope = Envelope.from_bytes(raw)  # what every consumer (worker, tool executor, gateway) calls
    recorded = json.loads(raw)
    assert envelope.v == recorded["v"] and envelope.type == EventType(recorded["type"]) == path.stem
    assert envelope.model_dump(mode="json", exclude={"ts"}) == {
        k: v for k, v in recorded.items() if k != "ts"
    }
    if envelope.type in CLIENT_EVENTS:  # the gateway hands it to clients without the version
        event = envelope.client_event()
        assert (
            "v" not in event and event["seq"] == recorded["seq"] and event["payload"] == recorded["payload"]
        )
    jsonschema.validate(recorded, export_schema())


def test_an_envelope_is_written_with_the_current_version() -> None:
    envelope = Envelope(type=EventType.USER_MESSAGE, conversation_id="c", turn_id="t", user_id="u")
    assert json.loads(envelope.to_bytes())["v"] == SCHEMA_VERSION


def test_a_newer_version_is_refused_with_what_to_do() -> None:
    raw = json.loads((FIXTURES / f"v{SCHEMA_VERSION}" / "message.user.json").read_text())
    with pytest.raises(
        EnvelopeError, match=f"envelope version {SCHEMA_VERSION + 1} is newer.*upgrade consumers"
    ):
        Envelope.from_bytes(json.dumps({**raw, "v": SCHEMA_VERSION + 1}).encode())
    if MIN_READ_VERSION > 1:
        with pytest.raises(EnvelopeError, match="is older than this release reads"):
            Envelope.from_bytes(json.dumps({**raw, "v": MIN_READ_VERSION - 1}).encode())


def test_the_published_json_schema_is_the_models() -> None:
    published = json.loads((ROOT / "docs" / "envelope.schema.json").read_text())
    assert published == export_schema(), (
        "regenerate: python -m services.common.envelope > docs/envelope.schema.json"
    )


def test_the_ui_event_names_are_the_schemas() -> None:
    # The chat UI names event types from services/gateway/static/events.js, generated from
    # EventType: one list of names for the model, the published schema and the browser.
    published = json.loads((ROOT / "docs" / "envelope.schema.json").read_text())
    assert published["$defs"]["EventType"]["enum"] == [member.value for member in EventType]
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "events_js.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    generated = (ROOT / "services" / "gateway" / "static" / "events.js").read_text()
    assert generated == rendered, (
        "regenerate: .venv/bin/python scripts/events_js.py > services/gateway/static/events.js"
    )


@pytest.mark.parametrize("type_", ["message.user", "tool.request"])
def test_a_recorded_turn_without_roles_reads_as_the_least_privilege(type_: str) -> None:
    raw = (FIXTURES / f"v{MIN_READ_VERSION}" / f"{type_}.json").read_bytes()
    assert roles_of(Envelope.from_bytes(raw)) == ["user"]


@pytest.mark.parametrize(
    ("roles", "read"),
    [
        (["mcp-admin", "user"], ["mcp-admin", "user"]),
        ([], ["user"]),
        ("mcp-admin", ["user"]),
        (["mcp-admin", 7], ["user"]),
        (None, ["user"]),
    ],
)
def test_the_roles_a_turn_carries(roles: object, read: list[str]) -> None:
    envelope = Envelope(
        type=EventType.TOOL_REQUEST, conversation_id="c", turn_id="t", user_id="u", payload={"roles": roles}
    )
    assert roles_of(envelope) == read
