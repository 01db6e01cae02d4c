"""The studies table: one row per (project, study).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("ref", sa.String(32), nullable=False),
        sa.Column("mrn", sa.String(64)),
        sa.Column("accession_number", sa.String(64)),
        sa.Column("study_date", sa.Date()),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("participant_id", sa.String(64)),
        sa.Column("procedure_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64)),
        sa.Column("found_study_uid", sa.String(64)),
        sa.Column("expected_instances", sa.Integer()),
        sa.Column("received_instances", sa.Integer()),
        sa.Column("exported_instances", sa.Integer()),
        sa.Column("pseudo_patient_id", sa.String(64)),
        sa.Column("pseudo_study_uid", sa.String(64)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("exported_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("ref", name="uq_study_ref"),
        sa.UniqueConstraint(
            "project", "mrn", "accession_number", name="uq_study_project_accession"
        ),
        sa.UniqueConstraint("project", "study_uid", name="uq_study_project_uid"),
    )
    op.create_index("ix_studies_project", "studies", ["project"])
    op.create_index("ix_studies_status", "studies", ["status"])


def downgrade() -> None:
    op.drop_table("studies")
