"""Orders on every channel: orders, their lines, refunds (returns at a till and refunds the
shop records), and the signed customer codes an app shows at a till.

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import Money, UtcDateTime

revision = "0016"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=True),
        sa.Column("origin_customer_id", sa.String(40), nullable=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total", Money(), nullable=False),
        sa.Column("refunded", Money(), nullable=False),
        sa.Column("placed_at", UtcDateTime(), nullable=False),
        sa.Column("link_method", sa.String(16), nullable=False),
        sa.Column("link_confidence", sa.Float(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_orders"),
        sa.UniqueConstraint("tenant_id", "reference", name="uq_orders_tenant_reference"),
    )
    op.create_index("ix_orders_customer", "orders", ["tenant_id", "customer_id", "placed_at"])
    op.create_index("ix_orders_placed", "orders", ["tenant_id", "placed_at", "id"])
    op.create_table(
        "order_lines",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("order_id", sa.String(40), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price", Money(), nullable=False),
        sa.Column("gift", sa.Boolean(), nullable=False),
        sa.Column("gift_confidence", sa.Float(), nullable=True),
        sa.Column("returned_quantity", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "order_id", "line_no", name="pk_order_lines"),
    )
    op.create_index("ix_order_lines_sku", "order_lines", ["tenant_id", "sku"])
    op.create_table(
        "order_refunds",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("refund_id", sa.String(100), nullable=False),
        sa.Column("order_id", sa.String(40), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "refund_id", name="pk_order_refunds"),
    )
    op.create_index("ix_order_refunds_order", "order_refunds", ["tenant_id", "order_id"])
    op.create_table(
        "customer_codes",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("code_id", sa.String(32), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("issued_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "code_id", name="pk_customer_codes"),
    )
    op.create_index("ix_customer_codes_customer", "customer_codes", ["tenant_id", "customer_id"])
    op.create_index("ix_customer_codes_expires", "customer_codes", ["expires_at"])


def downgrade() -> None:
    op.drop_table("customer_codes")
    op.drop_table("order_refunds")
    op.drop_table("order_lines")
    op.drop_table("orders")
