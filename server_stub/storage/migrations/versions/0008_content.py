"""Content rulesets (every version kept) and recommendation models.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "content_rulesets",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("author_key_id", sa.String(40), nullable=True),
        sa.Column("note", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "version", name="pk_content_rulesets"),
    )
    op.create_table(
        "recommendation_models",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("built_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_recommendation_models"),
    )


def downgrade() -> None:
    op.drop_table("recommendation_models")
    op.drop_table("content_rulesets")
