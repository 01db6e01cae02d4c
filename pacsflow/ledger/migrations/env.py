"""Alembic environment: runs on the connection handed in by ``pacsflow.ledger.migrate``."""

from alembic import context

from pacsflow.ledger.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through pacsflow.ledger.migrate(engine)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
