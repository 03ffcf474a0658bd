"""Alembic environment: migrations run on the connection the service hands over.

On PostgreSQL a transaction-level advisory lock serialises processes that start together
(the API and workers on several hosts after an upgrade): the first migrates, the others then
find the schema at head and do nothing.
"""

from alembic import context
from sqlalchemy import text

from service.db import MIGRATION_LOCK, Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
    context.run_migrations()
