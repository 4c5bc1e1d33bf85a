"""Consent ledger; the tenant-wide change feed index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_decisions",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("origin_customer_id", sa.String(40), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("device_id", sa.String(300), nullable=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("notice_id", sa.String(100), nullable=True),
        sa.Column("notice_version", sa.Integer(), nullable=False),
        sa.Column("notice_sha256", sa.String(64), nullable=True),
        sa.Column("client_time", UtcDateTime(), nullable=True),
        sa.Column("recorded_at", UtcDateTime(), nullable=False),
        sa.Column("confirms", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_consent_decisions"),
    )
    op.create_index(
        "ix_consent_decisions_customer", "consent_decisions", ["tenant_id", "customer_id"]
    )
    op.create_index("ix_changes_tenant_seq", "changes", ["tenant_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_changes_tenant_seq", "changes")
    op.drop_index("ix_consent_decisions_customer", "consent_decisions")
    op.drop_table("consent_decisions")
