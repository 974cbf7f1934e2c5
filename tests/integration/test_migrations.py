"""Schema migrations on the stack's real PostgreSQL, with data in every table: a database
made before migrations upgrades without a purge, each downgrade keeps every row the older
revision can hold, and the previous release's start-up runs on the new schema.

Each test works in a database of its own on the stack's server (the stack's own database
stays at head for the other tests), through ``a0ctl db`` as an operator would."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from a0ctl.runtime.local import LocalRuntime
from services.common.settings import Settings
from tests.support.cli import a0ctl

pytestmark = pytest.mark.integration

ENVELOPES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes" / "v1"
TABLES = ("conversations", "events", "messages", "turns", "tool_results", "credentials", "credential_audit")
# What the previous release ran at every start: the baseline revision is that SQL, unchanged.
PREVIOUS_RELEASE_SCHEMA: str = importlib.import_module(
    "services.common.migrations.versions.0001_baseline"
).SCHEMA


@pytest.fixture
def database(settings: Settings, stack: LocalRuntime) -> Iterator[str]:
    """An empty database of the app role, dropped afterwards."""
    name = f"a0_mig_{uuid.uuid4().hex[:8]}"
    admin = {
        "host": settings.stack.host,
        "port": settings.postgres.port,
        "user": settings.postgres.admin_user,
        "password": settings.postgres.admin_password.get_secret_value(),
        "dbname": "postgres",
        "autocommit": True,
    }
    with psycopg.connect(**admin) as conn:  # type: ignore[arg-type]
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(settings.postgres.user)
            )
        )
    yield name
    with psycopg.connect(**admin) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def db(*args: str, database: str) -> Any:
    result = a0ctl("db", *args, "--json", env={"A0_POSTGRES_DATABASE": database})
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def connect(settings: Settings, database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(settings.postgres_dsn, dbname=database, autocommit=True)


def fill(conn: psycopg.Connection[Any]) -> None:
    """A row in every table, the events recorded from a real turn."""
    records = [json.loads(path.read_text()) for path in sorted(ENVELOPES.glob("*.json"))]
    conversation_id, turn_id = records[0]["conversation_id"], records[0]["turn_id"]
    conn.execute(
        "INSERT INTO conversations (id, owner_id, title) VALUES (%s, 'alice', 'kept')", (conversation_id,)
    )
    for seq, record in enumerate(records, start=1):
        conn.execute(
            "INSERT INTO events (conversation_id, seq, event_key, envelope) VALUES (%s, %s, %s, %s)",
            (conversation_id, seq, record["id"], json.dumps(record)),
        )
    conn.execute(
        "INSERT INTO messages (conversation_id, message_key, turn_id, role, body) "
        'VALUES (%s, \'user:1\', %s, \'user\', \'{"role": "user", "content": "compute 6*7"}\')',
        (conversation_id, turn_id),
    )
    conn.execute(
        "INSERT INTO turns (turn_id, conversation_id, status) VALUES (%s, %s, 'running')",
        (turn_id, conversation_id),
    )
    conn.execute("INSERT INTO tool_results (call_key, envelope) VALUES ('t:c', '{}')")
    conn.execute(
        "INSERT INTO credentials (owner_id, provider, base_url, model, key_masked, nonce, ciphertext, kek_id) "
        "VALUES ('alice', 'openai', 'https://x.test/v1', 'm', 'sk-…abcd', '\\x00', '\\x01', 'k')"
    )
    conn.execute(
        "INSERT INTO credential_audit (actor, owner_id, provider, action, outcome) VALUES ('a', 'alice', 'openai', 'set', 'ok')"
    )


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order (the columns every revision has)."""
    columns = {
        "conversations": "id, owner_id, title, policy, last_seq",
        "events": "conversation_id, seq, event_key, envelope",
        "messages": "conversation_id, message_key, position, turn_id, role, body",
        "turns": "turn_id, conversation_id, status",
        "tool_results": "call_key, envelope",
        "credentials": "owner_id, provider, base_url, model, key_masked, nonce, ciphertext, kek_id",
        "credential_audit": "id, actor, owner_id, provider, action, outcome, detail",
    }
    return {
        table: conn.execute(f"SELECT {columns[table]} FROM {table} ORDER BY 1, 2").fetchall()
        for table in TABLES
    }


def indexes(conn: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}


def has_version_column(conn: psycopg.Connection[Any]) -> bool:
    found = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'events' AND column_name = 'envelope_version'"
    ).fetchone()
    return found is not None


def test_a_database_made_before_migrations_upgrades_to_head_keeping_every_row(
    settings: Settings, database: str
) -> None:
    with connect(settings, database) as conn:
        conn.execute(PREVIOUS_RELEASE_SCHEMA)  # what the previous release's start did
        fill(conn)
        before = snapshot(conn)
    status = db("status", database=database)
    assert status["current"] is None and not status["at_head"]
    assert [r["revision"] for r in status["pending"]] == ["0001", "0002", "0003", "0004"]

    result = db("migrate", database=database)
    assert result["from_revision"] is None and result["to_revision"] == "0004"
    assert [(s["revision"], s["direction"]) for s in result["steps"]] == [
        ("0001", "upgrade"),
        ("0002", "upgrade"),
        ("0003", "upgrade"),
        ("0004", "upgrade"),
    ]
    with connect(settings, database) as conn:
        assert snapshot(conn) == before
        assert all(count for count in map(len, before.values()))
        # At head, a turn's steps update no indexed column (HOT updates).
        assert {"turns_open_recent", "conversations_by_owner"} <= indexes(conn)
        assert not {"events_turn", "conversations_owner"} & indexes(conn)
        versions = conn.execute("SELECT envelope_version, count(*) FROM events GROUP BY 1").fetchall()
        assert versions == [(1, len(before["events"]))]
    assert db("status", database=database)["at_head"] is True


def test_each_downgrade_keeps_every_row_and_upgrading_again_restores_head(
    settings: Settings, database: str
) -> None:
    db("migrate", database=database)
    with connect(settings, database) as conn:
        fill(conn)
        before = snapshot(conn)

    down = db("migrate", "--to", "0002", database=database)
    assert [(s["revision"], s["direction"]) for s in down["steps"]] == [
        ("0004", "downgrade"),
        ("0003", "downgrade"),
    ]
    with connect(settings, database) as conn:
        assert {"events_turn", "conversations_owner"} <= indexes(conn)
        assert not has_version_column(conn)
        assert snapshot(conn) == before
    assert db("status", database=database)["current"] == "0002"

    db("migrate", "--to", "0001", database=database)
    with connect(settings, database) as conn:
        assert not {"turns_open_recent", "events_turn"} & indexes(conn)
        assert snapshot(conn) == before
        # The previous release writes to it as it always did.
        conn.execute(
            "INSERT INTO turns (turn_id, conversation_id, status) SELECT 'later', id, 'queued' FROM conversations"
        )

    up = db("migrate", database=database)
    assert [s["revision"] for s in up["steps"]] == ["0002", "0003", "0004"]
    with connect(settings, database) as conn:
        after = snapshot(conn)
        assert has_version_column(conn)
    assert len(after["turns"]) == len(before["turns"]) + 1
    assert {k: v for k, v in after.items() if k != "turns"} == {
        k: v for k, v in before.items() if k != "turns"
    }


def test_the_previous_release_starts_on_the_new_schema(settings: Settings, database: str) -> None:
    """Rolling code back before the schema: the old start-up SQL is a no-op on head."""
    db("migrate", database=database)
    with connect(settings, database) as conn:
        fill(conn)
        before = snapshot(conn)
        conn.execute(PREVIOUS_RELEASE_SCHEMA)
        assert snapshot(conn) == before
    assert db("status", database=database)["at_head"] is True


def test_below_the_baseline_unknown_and_newer_revisions_are_refused(
    settings: Settings, database: str
) -> None:
    env = {"A0_POSTGRES_DATABASE": database}
    db("migrate", database=database)
    base = a0ctl("db", "migrate", "--to", "base", env=env)
    assert base.returncode == 1 and "every table would be dropped" in base.stderr
    unknown = a0ctl("db", "migrate", "--to", "0999", env=env)
    assert unknown.returncode == 1 and "unknown schema revision '0999'" in unknown.stderr
    with connect(settings, database) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0042'")
    newer = a0ctl("db", "status", env=env)
    assert newer.returncode == 1
    assert "revision '0042', which this version of a0 does not know" in newer.stderr
    assert "a0ctl db migrate --to" in newer.stderr


def test_a_service_finding_its_schema_at_head_does_not_load_alembic(
    settings: Settings, database: str
) -> None:
    """A service's start migrates to head; one that finds the database there already
    does so without loading alembic and SQLAlchemy (memory it would hold for good), and
    one that finds it behind still migrates it."""
    start = (
        "import asyncio, json, sys\n"
        "from services.common.db import migrate\n"
        "from services.common.settings import load_settings\n"
        "asyncio.run(migrate(load_settings()))\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules} & {'alembic', 'sqlalchemy'})))\n"
    )

    def service_start() -> list[str]:
        result = subprocess.run(
            [sys.executable, "-c", start],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "A0_POSTGRES_DATABASE": database},
        )
        assert result.returncode == 0, result.stderr
        loaded: list[str] = json.loads(result.stdout)
        return loaded

    assert service_start() == ["alembic", "sqlalchemy"]  # an empty database: migrated
    assert db("status", database=database)["at_head"] is True
    assert service_start() == []  # at head: nothing loaded
    db("migrate", "--to", "0003", database=database)
    assert service_start() == ["alembic", "sqlalchemy"]  # behind: migrated again
    assert db("status", database=database)["at_head"] is True
