"""The recommendations count one basket per order.

A shop may record an order through `POST /v1/orders` (whose `order_completed` the server
records) and also send its own `order_completed` with the same `order_id` (docs/events.md):
the profile counted the order once, but the recommendations rebuild counted two baskets. The
rebuild now claims each order id here, in the transaction that adds the basket's counts
(services/recommendations.py); a later event of a claimed order adds nothing. Orders counted
before this revision are not claimed: a build with `full` claims them.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recommendation_orders",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("order_id", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "order_id", name="pk_recommendation_orders"),
    )


def downgrade() -> None:
    op.drop_table("recommendation_orders")
