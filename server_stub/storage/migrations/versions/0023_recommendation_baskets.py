"""Each customer's cart basket as the recommendation counts hold it.

An incremental rebuild took a customer's cart basket out of the counts and put her new one in
by reading all her cart adds again, across every monthly partition: at ten million customers a
day's events cost minutes of random reads. The basket as counted is now kept, one row per
customer, and grown by her new adds (services/recommendations.py).

The counts built before have no baskets beside them, so they are dropped here: the next build
counts from nothing (the published model keeps serving until then).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recommendation_baskets",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("skus", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "customer_id", name="pk_recommendation_baskets"),
    )
    op.execute("DELETE FROM recommendation_pairs")
    op.execute("DELETE FROM recommendation_progress")


def downgrade() -> None:
    op.drop_table("recommendation_baskets")
    op.execute("DELETE FROM recommendation_pairs")
    op.execute("DELETE FROM recommendation_progress")
