"""PostgreSQL of the local runtime: SCRAM passwords, no trust rule, services on a
least-privilege role; and a data dir made by an older a0ctl with trust is upgraded by
``up`` in place, its data kept."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from a0ctl.runtime.local import LocalRuntime
from a0ctl.runtime.postgres import pg_bin
from a0ctl.runtime.service import run_as
from services.common.secrets_env import apply_generated_secrets, ensure_generated_secrets
from services.common.settings import Settings, load_settings
from tests.conftest import TEST_STATE
from tests.support.processes import free_port

pytestmark = pytest.mark.integration


def _hba_rules(pg_dir: Path) -> list[str]:
    lines = (pg_dir / "pg_hba.conf").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


async def test_services_use_a_password_and_a_role_that_is_not_superuser(
    settings: Settings, stack: LocalRuntime
) -> None:
    assert not any(
        "trust" in rule.split() for rule in _hba_rules(settings.stack.state_path / "data" / "postgres")
    )
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            )
        ).fetchone()
        assert row == (False, False, False, False)
        owners = await (
            await conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
        ).fetchall()
        assert owners == [(settings.postgres.user,)]
    wrong = settings.postgres_dsn.replace(settings.postgres.password.get_secret_value(), "wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(wrong)
    no_password = f"postgresql://{settings.postgres.user}@{settings.stack.host}:{settings.postgres.port}/a0"
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(no_password)


@pytest.fixture
def old_stack_settings() -> Iterator[Settings]:
    """Settings of a second, PostgreSQL-only stack in its own state dir and port."""
    state = TEST_STATE / "pg-upgrade"
    shutil.rmtree(state, ignore_errors=True)
    base = load_settings()
    stack = base.stack.model_copy(update={"state_dir": state, "conf_dir": state / "conf"})
    postgres = base.postgres.model_copy(update={"port": free_port()})
    postgres.password = postgres.password.__class__("")
    postgres.admin_password = postgres.admin_password.__class__("")
    settings = base.model_copy(update={"stack": stack, "postgres": postgres})
    ensure_generated_secrets(settings.stack.conf_path)
    yield apply_generated_secrets(settings)
    LocalRuntime(settings).down(purge=True)
    shutil.rmtree(state, ignore_errors=True)


def _old_a0ctl_initdb(settings: Settings, runtime: LocalRuntime) -> None:
    """What a0ctl did before: initdb --auth=trust with the app role as superuser, and data."""
    service = runtime.services["postgres"]
    pg_dir = settings.stack.state_path / "data" / "postgres"
    service.prepare()  # directories and ownership; makes a SCRAM data dir: replace it
    shutil.rmtree(pg_dir)
    pg_dir.mkdir()
    shutil.chown(pg_dir, "postgres", "postgres")
    pg_dir.chmod(0o700)
    argv = [
        pg_bin("initdb"),
        "-D",
        str(pg_dir),
        "-U",
        "a0",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
    ]
    subprocess.run(argv, check=True, capture_output=True, **run_as("postgres"))
    sock = settings.stack.state_path / "run" / "postgres"
    log = sock / "old-server.log"  # somewhere PostgreSQL's user may write
    start = [
        pg_bin("pg_ctl"),
        "-D",
        str(pg_dir),
        "-l",
        str(log),
        "-w",
        "-o",
        f"-p {settings.postgres.port} -k {sock}",
    ]
    subprocess.run([*start, "start"], check=True, capture_output=True, **run_as("postgres"))
    try:
        with psycopg.connect(
            host=str(sock), port=settings.postgres.port, user="a0", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE a0")
        with psycopg.connect(
            host=str(sock), port=settings.postgres.port, user="a0", dbname="a0", autocommit=True
        ) as conn:
            conn.execute("CREATE TABLE conversations (id TEXT PRIMARY KEY, seq BIGSERIAL)")
            conn.execute("INSERT INTO conversations (id) VALUES ('kept')")
    finally:
        subprocess.run([*start[:3], "-w", "stop"], check=True, capture_output=True, **run_as("postgres"))
    assert any("trust" in rule.split() for rule in _hba_rules(pg_dir))


def test_up_upgrades_a_trust_data_dir_without_a_purge(
    old_stack_settings: Settings, stack: LocalRuntime
) -> None:
    settings = old_stack_settings
    runtime = LocalRuntime(settings)
    _old_a0ctl_initdb(settings, runtime)
    # The stack of the other tests runs the same services on the same ports under its own
    # supervisord: this second stack's up must not take them over as its own.
    running = {s.name: s.pid for s in stack.status() if s.pid}
    statuses = runtime.up(services=("postgres",))
    assert all(s.healthy for s in statuses), statuses
    assert {s.name: s.pid for s in stack.status() if s.pid} == running
    pg_dir = settings.stack.state_path / "data" / "postgres"
    assert not any("trust" in rule.split() for rule in _hba_rules(pg_dir)), _hba_rules(pg_dir)
    with psycopg.connect(settings.postgres_dsn) as conn:
        assert conn.execute("SELECT id FROM conversations").fetchall() == [("kept",)]
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False,)
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'conversations'").fetchone()
        assert owner == ("a0",)
        conn.execute("INSERT INTO conversations (id) VALUES ('new')")  # the sequence is its own too
    # The old superuser can no longer log in, trusted or not.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host=settings.stack.host,
            port=settings.postgres.port,
            user="a0_bootstrap",
            dbname="a0",
            password="x",
        )
    # A second up (already upgraded) is a no-op that still works.
    runtime.stop_service("postgres")
    assert all(s.healthy for s in runtime.up(services=("postgres",)))
    # Nor may its down.
    runtime.down(purge=True)
    assert {s.name: s.pid for s in stack.status() if s.pid} == running
