"""Sessions: the document a customer shares across channels.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "customer_id", name="pk_sessions"),
    )


def downgrade() -> None:
    op.drop_table("sessions")
