"""Versioned schema migrations of a0's PostgreSQL database, with alembic.

Revisions live in ``services/common/migrations/versions/`` (plain SQL through
``op.execute``: a0 has no ORM models). ``0001`` is the schema as it was before
migrations, idempotent, so a database made then adopts the history on its first upgrade
without a purge. :func:`schema_status` and :func:`migrate_to` serve ``a0ctl db status``
and ``a0ctl db migrate``; ``a0ctl up`` and each service's start upgrade to head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util.exc import CommandError
from pydantic import BaseModel
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from services.common.errors import SchemaError, TransientError
from services.common.logging import register_secret
from services.common.migrations import MIGRATIONS
from services.common.settings import Settings

# One migrator at a time, even when several services start together (held to the commit).
LOCK_KEY = 7411


class Revision(BaseModel):
    revision: str
    description: str


class SchemaStatus(BaseModel):
    current: str | None  # None: no revision recorded (an empty database, or one made before migrations)
    head: str
    at_head: bool
    applied: list[Revision]
    pending: list[Revision]


class MigrationStep(Revision):
    direction: Literal["upgrade", "downgrade"]


class MigrationResult(BaseModel):
    from_revision: str | None
    to_revision: str
    steps: list[MigrationStep]


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def history() -> list[Script]:
    """Every revision, oldest first (the history is linear)."""
    return list(reversed(list(script_directory().walk_revisions())))


def _revision(script: Script) -> Revision:
    return Revision(revision=script.revision, description=(script.doc or "").splitlines()[0])


@contextmanager
def _connection(settings: Settings) -> Iterator[Connection]:
    """A transaction on a0's database, as the app role (it owns the schema)."""
    register_secret(settings.postgres.password.get_secret_value())
    dsn = settings.postgres_dsn
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            yield connection
    except (SQLAlchemyError, psycopg.Error) as exc:
        cause = getattr(exc, "orig", None) or exc
        unreachable = isinstance(cause, psycopg.OperationalError)
        raise (TransientError if unreachable else SchemaError)(
            f"PostgreSQL at {settings.stack.host}:{settings.postgres.port}: {cause}".strip()
            if unreachable
            else f"the schema migration failed, nothing was changed (one transaction): {cause}".strip(),
            hint="is the stack up? `a0ctl up --infra-only` starts PostgreSQL"
            if unreachable
            else "fix the cause named here, then run it again; `a0ctl db status` shows where the schema is",
        ) from None
    finally:
        engine.dispose()


def _current(connection: Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if heads else None


def _status(connection: Connection) -> SchemaStatus:
    scripts = history()
    known = [s.revision for s in scripts]
    current = _current(connection)
    if current is not None and current not in known:
        raise SchemaError(
            f"the database is at schema revision {current!r}, which this version of a0 does not know "
            f"(it knows {', '.join(known)})",
            hint="a newer a0 migrated it: run `a0ctl db migrate --to "
            f"{known[-1]}` with that version before going back (docs/rollback.md)",
        )
    done = known.index(current) + 1 if current else 0
    return SchemaStatus(
        current=current,
        head=known[-1],
        at_head=current == known[-1],
        applied=[_revision(s) for s in scripts[:done]],
        pending=[_revision(s) for s in scripts[done:]],
    )


def schema_status(settings: Settings) -> SchemaStatus:
    with _connection(settings) as connection:
        return _status(connection)


def migrate_to(settings: Settings, target: str = "head") -> MigrationResult:
    """Upgrade or downgrade the database to ``target`` (a revision id, or ``head``)."""
    scripts = history()
    known = [s.revision for s in scripts]
    if target == "base":
        raise SchemaError(
            f"below the baseline ({known[0]}) there is no schema: every table would be dropped",
            hint="`a0ctl down --purge` deletes the data; `a0ctl db migrate --to REVISION` goes back one release",
        )
    try:
        wanted = script_directory().get_revision(target)
    except CommandError:
        wanted = None
    if wanted is None:
        raise SchemaError(
            f"unknown schema revision {target!r}",
            hint=f"one of: {', '.join(known)} or head (see `a0ctl db status`)",
        )
    with _connection(settings) as connection:
        status = _status(connection)
        have = known.index(status.current) if status.current else -1
        want = known.index(wanted.revision)
        config = _config(connection)
        if want >= have:
            steps = [
                MigrationStep(direction="upgrade", **_revision(s).model_dump())
                for s in scripts[have + 1 : want + 1]
            ]
            command.upgrade(config, wanted.revision)
        else:
            steps = [
                MigrationStep(direction="downgrade", **_revision(s).model_dump())
                for s in reversed(scripts[want + 1 : have + 1])
            ]
            command.downgrade(config, wanted.revision)
    return MigrationResult(from_revision=status.current, to_revision=wanted.revision, steps=steps)
