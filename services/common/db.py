"""PostgreSQL: the database, its schema brought to head (by ``a0ctl up`` and at each
service's start, with :mod:`services.common.schema`, loaded only when the database is
not at head already) and the async connection pool factory (psycopg 3)."""

from __future__ import annotations

import ast
import asyncio
import logging
import weakref
from collections import deque
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.common.logging import register_secret
from services.common.migrations import MIGRATIONS
from services.common.settings import Settings

log = logging.getLogger(__name__)

# JSON and JSONB columns are read and written with orjson, in every service.
set_json_loads(orjson.loads)
set_json_dumps(lambda value: orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode())


def _with_generic_plans(dsn: str) -> str:
    """The DSN's own ``options`` (a URL in A0_POSTGRES_URL may carry some), plus ours."""
    own = conninfo_to_dict(dsn).get("options")
    return " ".join(part for part in (str(own or ""), "-c plan_cache_mode=force_generic_plan") if part)


async def ensure_database(settings: Settings) -> None:
    """Create the application database if the server does not have it yet."""
    async with await psycopg.AsyncConnection.connect(
        settings.postgres_dsn, dbname="postgres", autocommit=True
    ) as conn:
        name = settings.postgres.database
        found = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))).fetchone()
        if not found:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def script_heads() -> set[str]:
    """The revisions no other script builds on (alembic's heads), read from each script's
    own ``revision`` and ``down_revision`` lines without loading alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        values = {}
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:  # revision: str = "..."
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                values[target.id] = ast.literal_eval(value)
        if "revision" in values:
            revisions.add(values["revision"])
            down = values.get("down_revision") or ()
            parents.update([down] if isinstance(down, str) else down)
    return revisions - parents


async def schema_at_head(settings: Settings) -> bool:
    """Whether the database records exactly the scripts' head, so that there is nothing
    to migrate. A service that finds so does not load alembic and SQLAlchemy (22 MiB it
    would hold for good); anything else (no database yet, no table, another revision,
    a server that cannot be reached) goes the whole way, which says what is wrong."""
    try:
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
            rows = await (await conn.execute("SELECT version_num FROM alembic_version")).fetchall()
    except psycopg.Error:
        return False
    return {row[0] for row in rows} == script_heads()


async def migrate(settings: Settings) -> None:
    """Create the database if needed and upgrade its schema to this version's head
    (nothing to load when it is there already: :func:`schema_at_head`)."""
    if await schema_at_head(settings):
        return
    from services.common.schema import migrate_to  # alembic: only where a schema is migrated

    await ensure_database(settings)
    await asyncio.to_thread(migrate_to, settings, "head")


# This process's open pools, each with its last check, if one was started.
_pools: weakref.WeakKeyDictionary[AsyncConnectionPool, asyncio.Task[None] | None] = (
    weakref.WeakKeyDictionary()
)


async def open_pool(
    settings: Settings, *, name: str, min_size: int = 2, max_size: int = 20
) -> AsyncConnectionPool:
    """A pool of ``name``'s connections (``application_name`` ``a0-<name>``, as
    ``pg_stat_activity`` shows them), opened with ``min_size`` of them. It grows one
    connection at a time while requests wait: the time they wait is in
    ``a0_db_pool_wait_seconds`` (:func:`services.common.metrics.watch_pool`)."""
    register_secret(settings.postgres.password.get_secret_value())
    pool = AsyncConnectionPool(
        settings.postgres_dsn,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        # A statement run again is prepared on its connection (from its 2nd run, below)
        # and then planned once: a turn's steps are a few large statements that PostgreSQL
        # would otherwise plan again on every run (its default keeps custom plans when
        # they look cheaper). Measured: a third less PostgreSQL CPU per turn.
        kwargs={
            "autocommit": True,
            "options": _with_generic_plans(settings.postgres_dsn),
            "application_name": f"a0-{name}",
            # Prepared from its second run on a connection (psycopg's default: the fifth).
            # Each new connection runs every statement unprepared until then: with the
            # default, after the pools were renewed (renew_when_idle) a trickle of 30
            # sessions cost PostgreSQL 7.2 ms per turn; from the second run, 6.2 (one run
            # each; 4.7 on connections that had long prepared everything).
            "prepare_threshold": 1,
        },
    )
    pool._pool = MostRecentFirst()  # type: ignore[assignment]  # see the class
    await pool.open(wait=True, timeout=30)
    _pools[pool] = None
    return pool


class MostRecentFirst(deque[Any]):
    """A pool's idle connections, lent most recently returned first.

    psycopg_pool keeps them in a deque, takes them from its left (``popleft``) and puts
    them back on its right: a round robin, in which each request gets the connection
    idle longest. The pools are fixed at their size under load (18 to 40 connections),
    so at a trickle every statement went to another backend, each of them cold (its
    process, caches and prepared statements untouched for seconds) and preparing each
    statement anew after a renewal (:func:`renew_when_idle`). Taken from the right
    instead, a trickle keeps to the one or two backends it needs, and a load that lends
    every connection is served as before. At 30 sessions with think 5 (four runs, old
    and new alternated) PostgreSQL spent 7.7-7.9 ms a turn against 10.0-11.2.

    It takes the place of psycopg_pool's private ``_pool`` (the version is pinned in
    ``uv.lock``); a release that changed it fails
    ``tests/integration/test_stack.py::test_a_pool_lends_the_connection_returned_last_so_a_trickle_keeps_to_one_backend``.
    A pool that may shrink (``min_size`` below ``max_size``) closes the connection used
    last rather than the one idle longest."""

    def popleft(self) -> Any:
        return self.pop()


async def renew_when_idle(pool: AsyncConnectionPool) -> None:
    """Replace each of ``pool``'s connections with a new one, if all of them are idle in
    it: called when the process goes quiet after a busy spell
    (:attr:`services.common.bootstrap.ServiceStack.release_when_quiet`).

    A backend keeps what serving the spell made it load (its catalog and plan caches, the
    heap its statements grew) for as long as its connection lives: after 2,000 sessions
    PostgreSQL held 295-315 MiB with the stack's 90 backends, 171-174 with new ones. A
    pool that is busy, waits for PostgreSQL or has a connection lent out is left as it
    is. The new connections are opened by the pool's workers while the process is
    quiet; a request that comes meanwhile waits for the first, and each statement runs
    once unprepared on each new connection (``prepare_threshold`` in :func:`open_pool`)."""
    stats = pool.get_stats()
    if pool.closed or stats["requests_waiting"] or stats["pool_available"] < stats["pool_size"]:
        return
    await pool.drain()


def recheck_if_lost(exc: BaseException) -> None:
    """When ``exc`` says a PostgreSQL connection was lost (PostgreSQL restarted, say),
    check every idle connection of this process's pools now, in the background (a pool
    whose check still runs is left to it).

    The pools' other connections were most likely lost with it, and each would otherwise
    fail a request or a handler attempt of its own before its pool replaced it. While a
    check runs, requests wait for a connection it has verified or opened afresh. A pool
    merely busy (``PoolTimeout``) is no such sign."""
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, PoolTimeout):
        return
    for pool, running in list(_pools.items()):
        if pool.closed or (running is not None and not running.done()):
            continue
        task = asyncio.get_running_loop().create_task(pool.check(), name=f"recheck-{pool.name}")
        task.add_done_callback(_checked)
        _pools[pool] = task


def _checked(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("%s: checking the pool's connections failed: %s", task.get_name(), exc)
