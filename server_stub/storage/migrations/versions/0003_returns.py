"""Returns: signing keys (sealed), return orders and lines, tokens, redemptions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("kid", sa.String(16), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_private_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("retires_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "kid", name="pk_signing_keys"),
    )
    op.create_table(
        "return_orders",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("order_ref", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "order_ref", name="pk_return_orders"),
    )
    op.create_table(
        "return_lines",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("order_ref", sa.String(64), nullable=False),
        sa.Column("line_id", sa.String(32), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("returned", sa.Integer(), nullable=False),
        sa.Column("unit_price", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "order_ref", "line_id", name="pk_return_lines"),
    )
    op.create_table(
        "return_tokens",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("order_ref", sa.String(64), nullable=False),
        sa.Column("kid", sa.String(16), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("issued_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "token_id", name="pk_return_tokens"),
    )
    op.create_index("ix_return_tokens_order", "return_tokens", ["tenant_id", "order_ref"])
    op.create_table(
        "redemptions",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("order_ref", sa.String(64), nullable=False),
        sa.Column("till_transaction_id", sa.String(100), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("refund_method", sa.String(32), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_redemptions"),
        sa.UniqueConstraint(
            "tenant_id", "till_transaction_id", name="uq_redemptions_till_transaction"
        ),
    )
    op.create_index("ix_redemptions_order", "redemptions", ["tenant_id", "order_ref"])


def downgrade() -> None:
    for table in ("redemptions", "return_tokens", "return_lines", "return_orders", "signing_keys"):
        op.drop_table(table)
