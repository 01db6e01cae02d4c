"""Expanded rows: one manifest row that matched several studies, retrieved as several rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Under the ambiguity policy ``all`` every study matching a row is retrieved, each as a
ledger row of its own (see ``pacsflow.ledger.repository.expand``). Those rows share the
manifest row's MRN and accession number, so the uniqueness of (project, MRN, accession)
now holds for manifest rows only (``expanded_from IS NULL``); an expanded row is unique by
(project, study UID), as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_MANIFEST_ROWS = sa.text("expanded_from IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("expanded_from", sa.Integer()))
        batch.create_foreign_key("fk_study_expanded_from", "studies", ["expanded_from"], ["id"])
        batch.drop_constraint("uq_study_project_accession", type_="unique")
    op.create_index(
        "uq_study_project_accession",
        "studies",
        ["project", "mrn", "accession_number"],
        unique=True,
        sqlite_where=_MANIFEST_ROWS,
        postgresql_where=_MANIFEST_ROWS,
    )


def downgrade() -> None:
    op.drop_index("uq_study_project_accession", "studies")
    with op.batch_alter_table("studies") as batch:
        batch.drop_constraint("fk_study_expanded_from", type_="foreignkey")
        batch.drop_column("expanded_from")
        batch.create_unique_constraint(
            "uq_study_project_accession", ["project", "mrn", "accession_number"]
        )
