"""Analytics: lifetime value and RFM scores per customer, and the daily aggregate of journeys.

Revision ID: 0017
Revises: 0016 (merged from h18a; the integrator re-chains)
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_scores",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("fitted_at", UtcDateTime(), nullable=False),
        sa.Column("model", sa.String(32), nullable=False),
        sa.Column("p_alive", sa.Float(), nullable=True),
        sa.Column("purchases_90", sa.Float(), nullable=True),
        sa.Column("purchases_365", sa.Float(), nullable=True),
        sa.Column("value_per_purchase", sa.Float(), nullable=True),
        sa.Column("clv", sa.Float(), nullable=True),
        sa.Column("rfm_recency", sa.Integer(), nullable=False),
        sa.Column("rfm_frequency", sa.Integer(), nullable=False),
        sa.Column("rfm_monetary", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "customer_id", name="pk_customer_scores"),
    )
    op.create_table(
        "journey_days",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("setup", sa.String(16), nullable=False),
        sa.Column("path_no", sa.Integer(), nullable=False),
        sa.Column("path", sa.JSON(), nullable=False),
        sa.Column("conversions", sa.Float(), nullable=False),
        sa.Column("nulls", sa.Float(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "day", "setup", "path_no", name="pk_journey_days"),
    )


def downgrade() -> None:
    op.drop_table("journey_days")
    op.drop_table("customer_scores")
