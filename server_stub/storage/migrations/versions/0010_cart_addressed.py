"""Carts remember which replicas wrote to a merged-away id (a split gives those writes back).

The cart state itself changes form without a schema change: omnisdk.core.cart reads a state
stored in the old form (every applied id) and writes it back bounded on the next change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("carts") as batch:
        batch.add_column(sa.Column("addressed", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("carts") as batch:
        batch.drop_column("addressed")
