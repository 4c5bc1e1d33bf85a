"""The change feed numbered per tenant, in commit order, with a pruning horizon.

`changes.seq` (one counter shared by every tenant, taken at insert) becomes `position`, counted
per tenant in `change_positions` and handed out at commit. Existing rows keep their number as
their position and each tenant's counter starts at its highest one, so a watcher resuming with
an id it was given before the upgrade neither skips nor sees a change twice.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import Sequence64, UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OLD = "changes_before_0009"


def _set_aside_old_table() -> None:
    op.drop_index("ix_changes_customer", "changes")
    op.drop_index("ix_changes_tenant_seq", "changes")
    op.rename_table("changes", OLD)
    if op.get_bind().dialect.name == "postgresql":  # constraint names are per schema there
        op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT pk_changes TO pk_{OLD}")


def upgrade() -> None:
    _set_aside_old_table()
    op.create_table(
        "changes",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "position", name="pk_changes"),
    )
    op.execute(
        "INSERT INTO changes (tenant_id, position, customer_id, kind, payload, created_at) "
        f"SELECT tenant_id, seq, customer_id, kind, payload, created_at FROM {OLD}"
    )
    op.drop_table(OLD)
    op.create_index("ix_changes_customer", "changes", ["tenant_id", "customer_id", "position"])
    op.create_index("ix_changes_created_at", "changes", ["created_at"])
    op.create_table(
        "change_positions",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_change_positions"),
    )
    op.execute(
        "INSERT INTO change_positions (tenant_id, position, pruned_through) "
        "SELECT tenant_id, MAX(position), 0 FROM changes GROUP BY tenant_id"
    )


def downgrade() -> None:
    op.drop_table("change_positions")
    op.drop_index("ix_changes_created_at", "changes")
    op.drop_index("ix_changes_customer", "changes")
    op.rename_table("changes", OLD)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT pk_changes TO pk_{OLD}")
    op.create_table(
        "changes",
        sa.Column("seq", Sequence64, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_changes"),
    )
    # Positions of different tenants overlap: the shared counter numbers them afresh.
    op.execute(
        "INSERT INTO changes (tenant_id, customer_id, kind, payload, created_at) "
        f"SELECT tenant_id, customer_id, kind, payload, created_at FROM {OLD} "
        "ORDER BY created_at, tenant_id, position"
    )
    op.drop_table(OLD)
    op.create_index("ix_changes_customer", "changes", ["tenant_id", "customer_id", "seq"])
    op.create_index("ix_changes_tenant_seq", "changes", ["tenant_id", "seq"])
