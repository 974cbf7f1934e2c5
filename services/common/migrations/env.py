"""alembic's environment for a0: the migrations run on the connection (and inside the
transaction) that :func:`services.common.db.migrate_to` opened, never on one of their own."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
