"""A partial index on customers' `order_completed` events; what an order line is (category,
size, gender, age band) for the gift classifier.

The profile, segments and message decisions look for a customer's orders among her events;
along the (tenant, customer, time) index that read walked her whole history when she had no
such event, or few. The index holds only `order_completed` rows, so ingesting every other
event costs nothing more. On PostgreSQL it is created on the partitioned table, which gives
every monthly partition its own.

Order lines keep the product attributes the shop sends (all optional): the server classifies
each line as gift or for herself against her own earlier lines (omnisdk.core.gifts).

Segments remember when their last backfill finished, so that those over attributes that change
with time alone (lifecycle, interest scores) are evaluated again periodically.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

ORDERS = "name = 'order_completed'"


LINE_ATTRIBUTES = (("category", 100), ("size", 32), ("gender", 32), ("age_band", 32))


def upgrade() -> None:
    for name, length in LINE_ATTRIBUTES:
        op.add_column("order_lines", sa.Column(name, sa.String(length), nullable=True))
    op.add_column("segments", sa.Column("backfilled_at", UtcDateTime(), nullable=True))
    op.create_index(
        "ix_events_customer_orders",
        "events",
        ["tenant_id", "customer_id", "occurred_at"],
        sqlite_where=sa.text(ORDERS),
        postgresql_where=sa.text(ORDERS),
    )


def downgrade() -> None:
    op.drop_index("ix_events_customer_orders", table_name="events")
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("backfilled_at")
    with op.batch_alter_table("order_lines") as batch:
        for name, _ in LINE_ATTRIBUTES:
            batch.drop_column(name)
