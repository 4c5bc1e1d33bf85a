"""Erasure and export find a customer's rows through indexes, on tables that grow with the
shop.

Erasure and export found a customer's rows in `ordered_carts` and `return_orders` by reading
the tenant's whole table; `orders`, `annotations` and `preference_declarations` by the
customer they were recorded for (`origin_customer_id`, what a split gives back by) the same
way; erasure read the tenant's whole audit log for entries about her, and every stored answer
of an idempotent request of the last day (every write the SDK sends has an Idempotency-Key)
for her ids, once per id. Each of these grows with the shop's orders, staff work or traffic,
so one erasure of a busy shop read millions of rows.

Each read now goes through an index (tests/server/test_query_plans.py seeds these tables and
fails on a scan). A stored answer keeps the customer ids its body names (`subjects`, filled
here for the records already stored): an array with a GIN index on PostgreSQL.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-07
"""

import json
import re

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_ordered_carts_customer", "ordered_carts", ["tenant_id", "customer_id"]),
    ("ix_return_orders_customer", "return_orders", ["tenant_id", "customer_id"]),
    ("ix_orders_origin", "orders", ["tenant_id", "origin_customer_id"]),
    ("ix_annotations_origin", "annotations", ["tenant_id", "origin_customer_id"]),
    (
        "ix_preference_declarations_origin",
        "preference_declarations",
        ["tenant_id", "origin_customer_id"],
    ),
    ("ix_audit_log_subject", "audit_log", ["tenant_id", "subject"]),
)
# As services/idempotency.CUSTOMER_ID and ID_LENGTH (a migration keeps its own copy).
CUSTOMER_ID = "cus_[0-9A-Za-z]+"
ID_LENGTH = 40


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    kind = sa.JSON().with_variant(postgresql.ARRAY(sa.String(40)), "postgresql")
    op.add_column("idempotency_records", sa.Column("subjects", kind, nullable=True))
    if postgres:
        op.execute(
            "UPDATE idempotency_records SET subjects = ARRAY(SELECT DISTINCT found[1] FROM "
            f"regexp_matches(encode(body, 'escape'), '{CUSTOMER_ID}', 'g') AS found "
            f"WHERE length(found[1]) <= {ID_LENGTH})"
        )
    else:
        pattern = re.compile(CUSTOMER_ID.encode())
        records = sa.table(
            "idempotency_records",
            sa.column("tenant_id"),
            sa.column("idempotency_key"),
            sa.column("body", sa.LargeBinary()),
            sa.column("subjects"),
        )
        rows = bind.execute(
            sa.select(records.c.tenant_id, records.c.idempotency_key, records.c.body)
        ).all()
        for tenant_id, key, body in rows:
            found = pattern.findall(bytes(body))
            named = sorted({name.decode() for name in found if len(name) <= ID_LENGTH})
            bind.execute(
                records.update()
                .where(records.c.tenant_id == tenant_id, records.c.idempotency_key == key)
                .values(subjects=json.dumps(named))
            )
    op.create_index(
        "ix_idempotency_records_subjects",
        "idempotency_records",
        ["subjects"],
        postgresql_using="gin",
    )
    # A server older than this revision, still running while it ran, stores records without
    # subjects: erasure reads those bodies, found through this (normally empty) index.
    op.create_index(
        "ix_idempotency_records_unnamed",
        "idempotency_records",
        ["tenant_id"],
        postgresql_where=sa.text("subjects IS NULL"),
        sqlite_where=sa.text("subjects IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_idempotency_records_unnamed", table_name="idempotency_records")
    op.drop_index("ix_idempotency_records_subjects", table_name="idempotency_records")
    with op.batch_alter_table("idempotency_records") as batch:
        batch.drop_column("subjects")
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
