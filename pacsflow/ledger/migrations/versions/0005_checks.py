"""Pre-flight checks: what a C-FIND-only check found for a study, and when.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

``pacsflow check`` (the ``check-project`` flow) asks every source of a project about its
studies without retrieving anything (see ``pacsflow.check``). Per study it records the
class it found (``check_result``: primary, secondary, not_found, ambiguous,
date_mismatch, several, outside_window, unavailable), when (``checked_at``) and why, in
counts and dates only (``check_detail``). A found study also gets ``source``,
``found_study_uid`` and ``expected_instances``, as the extraction's own C-FIND would set
them, so the next extraction can trust a fresh check instead of asking again.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("check_result", sa.String(16)))
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("check_detail", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        for name in ("check_detail", "checked_at", "check_result"):
            batch.drop_column(name)
