"""Identity, events and profile: customers, identifiers, events, merges, annotations;
tenant settings and identifier secrets; API keys may follow their channel's scopes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import os

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import Sequence64, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("identifier_secret", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=True))
    tenants = sa.table(
        "tenants",
        sa.column("id", sa.String),
        sa.column("identifier_secret", sa.LargeBinary),
        sa.column("settings", sa.JSON),
    )
    bind = op.get_bind()
    for (tenant_id,) in bind.execute(sa.select(tenants.c.id)).all():
        bind.execute(
            tenants.update()
            .where(tenants.c.id == tenant_id)
            .values(identifier_secret=os.urandom(32), settings={})
        )
    with op.batch_alter_table("tenants") as batch:
        batch.alter_column("identifier_secret", nullable=False)
        batch.alter_column("settings", nullable=False)
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("scopes", existing_type=sa.JSON(), nullable=True)

    op.create_table(
        "customers",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("traits", sa.JSON(), nullable=False),
        sa.Column("merged_into", sa.String(40), nullable=True),
        sa.Column("merged_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_customers"),
    )
    op.create_index("ix_customers_merged_into", "customers", ["tenant_id", "merged_into"])
    op.create_table(
        "identifiers",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("value", sa.String(300), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=True),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("linked_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "type", "value", name="pk_identifiers"),
    )
    op.create_index("ix_identifiers_customer", "identifiers", ["tenant_id", "customer_id"])
    op.create_table(
        "events",
        sa.Column("seq", Sequence64, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("origin_customer_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("category", sa.String(100), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.UniqueConstraint("tenant_id", "event_id", name="uq_events_tenant_event"),
    )
    op.create_index(
        "ix_events_customer_time", "events", ["tenant_id", "customer_id", "occurred_at"]
    )
    op.create_table(
        "merges",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("survivor_id", sa.String(40), nullable=False),
        sa.Column("loser_id", sa.String(40), nullable=False),
        sa.Column("cause", sa.String(100), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("split_at", UtcDateTime(), nullable=True),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_merges"),
    )
    op.create_index("ix_merges_survivor", "merges", ["tenant_id", "survivor_id"])
    op.create_index("ix_merges_loser", "merges", ["tenant_id", "loser_id"])
    op.create_table(
        "annotations",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("origin_customer_id", sa.String(40), nullable=False),
        sa.Column("department", sa.String(32), nullable=False),
        sa.Column("author", sa.String(100), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_annotations"),
    )
    op.create_index("ix_annotations_customer", "annotations", ["tenant_id", "customer_id"])


def downgrade() -> None:
    for table in ("annotations", "merges", "events", "identifiers", "customers"):
        op.drop_table(table)
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("settings")
        batch.drop_column("identifier_secret")
