"""A partial index on customers' `order_completed` events.

The profile, segments and message decisions look for a customer's orders among her events;
along the (tenant, customer, time) index that read walked her whole history when she had no
such event, or few. The index holds only `order_completed` rows, so ingesting every other
event costs nothing more. On PostgreSQL it is created on the partitioned table, which gives
every monthly partition its own.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

ORDERS = "name = 'order_completed'"


def upgrade() -> None:
    op.create_index(
        "ix_events_customer_orders",
        "events",
        ["tenant_id", "customer_id", "occurred_at"],
        sqlite_where=sa.text(ORDERS),
        postgresql_where=sa.text(ORDERS),
    )


def downgrade() -> None:
    op.drop_index("ix_events_customer_orders", table_name="events")
