"""Merged customers' events folded into the survivor in the background (services/history_folds.py).

A merge leaves the loser's events under the id they were recorded for (migration 0014's
narrow locks); this queue lets every server process fold them into the survivor in bounded
batches, so that readers grouping events by customer id see the person whole.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "history_folds",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("queued_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "customer_id"),
    )
    op.create_index("ix_history_folds_queued", "history_folds", ["queued_at"])
    # Customers merged before this migration whose events were left in place: fold them too.
    op.execute(
        "INSERT INTO history_folds (tenant_id, customer_id, queued_at) "
        "SELECT c.tenant_id, c.id, c.merged_at FROM customers c "
        "WHERE c.merged_into IS NOT NULL AND c.merged_at IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM events e WHERE e.tenant_id = c.tenant_id AND e.customer_id = c.id)"
    )


def downgrade() -> None:
    op.drop_index("ix_history_folds_queued", table_name="history_folds")
    op.drop_table("history_folds")
