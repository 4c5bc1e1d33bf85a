"""Issue 19: annotations as department knowledge (kind, visibility, pinned, expiry, revisions,
soft deletion), console staff, declared preferred channels, named segments with membership.

Existing annotations become notes visible to all staff, at revision 1.

Revision ID: 0018
Revises: 0016 (0013 before h18a was merged in)
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage.tables import UtcDateTime

revision = "0018"
down_revision = "0016"
branch_labels = None
depends_on = None

ANNOTATION_COLUMNS = (
    "kind",
    "visibility",
    "pinned",
    "expires_at",
    "author_key_id",
    "revision",
    "updated_at",
    "deleted_at",
    "deleted_by",
    "delete_reason",
)


def upgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="note"))
        batch.add_column(
            sa.Column("visibility", sa.String(16), nullable=False, server_default="staff")
        )
        batch.add_column(sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("expires_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("author_key_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("updated_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("deleted_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("deleted_by", sa.String(100), nullable=True))
        batch.add_column(sa.Column("delete_reason", sa.Text(), nullable=True))
    op.create_table(
        "annotation_revisions",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("annotation_id", sa.String(40), nullable=False),
        sa.Column("revision", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("editor", sa.String(100), nullable=False),
        sa.Column("editor_department", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("edited_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "annotation_id", "revision", name="pk_annotation_revisions"
        ),
    )
    op.create_table(
        "staff_members",
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("department", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_staff_members"),
    )
    op.create_index("ix_staff_members_tenant", "staff_members", ["tenant_id"])
    op.create_table(
        "preference_declarations",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("origin_customer_id", sa.String(40), nullable=False),
        sa.Column("channel", sa.String(16), nullable=True),
        sa.Column("declared_via", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("declared_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_preference_declarations"),
    )
    op.create_index(
        "ix_preference_declarations_customer",
        "preference_declarations",
        ["tenant_id", "customer_id", "declared_at"],
    )
    op.create_table(
        "segments",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("condition", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("backfilled_version", sa.Integer(), nullable=True),
        sa.Column("backfill_claimed_at", UtcDateTime(), nullable=True),
        sa.Column("backfill_done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("backfill_total", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_segments"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_segments_tenant_name"),
    )
    op.create_table(
        "segment_members",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("segment_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("entered_at", UtcDateTime(), nullable=False),
        sa.Column("exited_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint(
            "tenant_id", "segment_id", "customer_id", name="pk_segment_members"
        ),
    )
    op.create_index(
        "ix_segment_members_customer", "segment_members", ["tenant_id", "customer_id"]
    )
    op.create_table(
        "console_sessions",
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_sha256", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_expires", "console_sessions", ["expires_at"])
    op.create_table(
        "segment_pending",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("queued_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "customer_id", name="pk_segment_pending"),
    )


def downgrade() -> None:
    for table in (
        "segment_pending",
        "console_sessions",
        "segment_members",
        "segments",
        "preference_declarations",
        "staff_members",
        "annotation_revisions",
    ):
        op.drop_table(table)
    with op.batch_alter_table("annotations") as batch:
        for column in ANNOTATION_COLUMNS:
            batch.drop_column(column)
