"""An index of alert messages by their subscription, for restock pacing.

A subscriber whose message was skipped (no consent for the channel, a frequency cap) waits for
the next restock. Pacing took the oldest waiting subscribers each batch, so she stood at the
head of the queue for the rest of the restock: her message of this window already stored,
nothing new was stored for her, and a batch of such subscribers stopped the restock until the
window changed. Pacing now passes over subscribers with a message since the restock began (or
since the window began), found through this index (services/alerts.pace).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-06
"""

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_alert_messages_subscription",
        "alert_messages",
        ["tenant_id", "subscription_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_alert_messages_subscription", table_name="alert_messages")
