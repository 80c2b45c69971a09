"""Alembic environment: runs on the connection handed in by ``store.db.migrate``.

Offline (SQL script) mode is not supported: migrations always run against a live database, from the
service at start-up or from ``tenantsearch migrate``.
"""

from __future__ import annotations

from alembic import context

from tenantsearch.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through tenantsearch.store.db.migrate()")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
