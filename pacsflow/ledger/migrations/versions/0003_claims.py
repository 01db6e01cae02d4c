"""Claims: which source a study waits for, who works on it, until when.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

The ledger is the queue between flow runs and workers (see ``pacsflow.ledger.claims``):
``source_index`` is the position, in the project's list of sources, of the source to ask
next; ``claimed_by`` and ``claim_expires`` are a lease, so two runs never work on one study
and a killed worker's studies come back; ``pull`` is the extraction that last attempted
the study, so a study that failed in a pull is not retried by that same pull.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(
            sa.Column("source_index", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("claimed_by", sa.String(96)))
        batch.add_column(sa.Column("claim_expires", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("pull", sa.String(32)))
        batch.add_column(sa.Column("tries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("error_type", sa.String(64)))
        batch.create_index("ix_studies_claimable", ["project", "source_index", "status"])


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_claimable")
        for name in ("error_type", "tries", "pull", "claim_expires", "claimed_by", "source_index"):
            batch.drop_column(name)
