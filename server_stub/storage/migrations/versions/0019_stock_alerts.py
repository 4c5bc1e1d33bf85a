"""Inventory, stock alerts and messages (issue 20).

Stock per item and location (online and store kept apart), applied stock deltas (by operation
id), alert subscriptions, messages with their idempotency key (rule, customer, SKU, window),
restocks being paced, and the shop's webhook endpoints (secrets sealed).

Revision ID: 0019
Revises: 0018 (0013 on the h20 branch before merging h18a and h19)
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

TABLES = (
    "webhook_endpoints",
    "alert_restocks",
    "alert_messages",
    "alert_subscriptions",
    "inventory_ops",
    "inventory_levels",
    "inventory_items",
)


def upgrade() -> None:
    op.create_table(
        "inventory_items",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("item", sa.String(200), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("low_stock_threshold", sa.Integer(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "item", name="pk_inventory_items"),
    )
    op.create_table(
        "inventory_levels",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("item", sa.String(200), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "item", "location", name="pk_inventory_levels"),
    )
    op.create_table(
        "inventory_ops",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("op_id", sa.String(100), nullable=False),
        sa.Column("applied_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "op_id", name="pk_inventory_ops"),
    )
    op.create_index("ix_inventory_ops_applied_at", "inventory_ops", ["applied_at"])
    op.create_table(
        "alert_subscriptions",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("origin_customer_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("item", sa.String(200), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=True),
        sa.Column("min_quantity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("consent_decision_id", sa.String(40), nullable=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("price_seen", sa.Float(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("notified_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_alert_subscriptions"),
    )
    op.create_index(
        "ix_alert_subscriptions_item",
        "alert_subscriptions",
        ["tenant_id", "item", "kind", "status", "created_at"],
    )
    op.create_index(
        "ix_alert_subscriptions_customer", "alert_subscriptions", ["tenant_id", "customer_id"]
    )
    op.create_table(
        "alert_messages",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("origin_customer_id", sa.String(40), nullable=False),
        sa.Column("item", sa.String(200), nullable=True),
        sa.Column("sku", sa.String(64), nullable=True),
        sa.Column("subscription_id", sa.String(40), nullable=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("channel", sa.String(8), nullable=True),
        sa.Column("consent_decision_id", sa.String(40), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("decided_at", UtcDateTime(), nullable=True),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_alert_messages"),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_alert_messages_key"),
    )
    op.create_index("ix_alert_messages_due", "alert_messages", ["status", "due_at"])
    op.create_index(
        "ix_alert_messages_customer", "alert_messages", ["tenant_id", "customer_id", "decided_at"]
    )
    op.create_index("ix_alert_messages_kind", "alert_messages", ["tenant_id", "kind", "status"])
    op.create_table(
        "alert_restocks",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("item", sa.String(200), nullable=False),
        sa.Column("store_key", sa.String(64), nullable=False),
        sa.Column("next_at", UtcDateTime(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "item", "store_key", name="pk_alert_restocks"),
    )
    op.create_index("ix_alert_restocks_next_at", "alert_restocks", ["next_at"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("disabled_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_webhook_endpoints"),
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
