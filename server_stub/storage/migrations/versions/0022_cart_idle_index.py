"""An index of carts by their last change, for the abandoned-cart scan.

The scan looked for carts idle between the tenant's threshold and a week before it with no
index on `updated_at`: at a million carts every scan read the whole table, and it took the
oldest batch each time, so past one batch of idle carts the rest were never reached. It now
walks this index from where its previous scan stopped (services/alerts.abandoned_carts).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-04
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_carts_idle", "carts", ["tenant_id", "updated_at", "customer_id"])


def downgrade() -> None:
    op.drop_index("ix_carts_idle", table_name="carts")
