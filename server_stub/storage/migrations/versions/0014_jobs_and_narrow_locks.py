"""Jobs (services/jobs.py) and the recommendation counts a rebuild job keeps between builds.

A job is a tenant's long-running task with progress, a checkpoint and a heartbeat; the
database keeps one unfinished job per tenant and kind (a unique partial index, on SQLite and
PostgreSQL alike). The recommendations rebuild runs as such a job and counts only the events
that arrived since its last build, into `recommendation_pairs`.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

ACTIVE = "state IN ('queued', 'running')"


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("checkpoint", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("runner", sa.String(40), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("heartbeat_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at"])
    op.create_index(
        "ix_jobs_one_active",
        "jobs",
        ["tenant_id", "kind"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_table(
        "recommendation_pairs",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("sku", sa.String(200), nullable=False),
        sa.Column("other", sa.String(200), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "sku", "other", name="pk_recommendation_pairs"),
    )
    op.create_table(
        "recommendation_progress",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("counted_through", sa.BigInteger(), nullable=False),
        sa.Column("baskets", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_recommendation_progress"),
    )


def downgrade() -> None:
    op.drop_table("recommendation_progress")
    op.drop_table("recommendation_pairs")
    op.drop_index("ix_jobs_one_active", table_name="jobs")
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    op.drop_table("jobs")
