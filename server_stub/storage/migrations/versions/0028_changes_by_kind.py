"""PostgreSQL: the change feed partitioned by kind.

A watcher of a rare kind (the SDK's consent cache, a segment consumer) reads the next page of
its kinds from a random position. In one table a page of a kind that is one change in 250 lay
one row on each of 100 heap pages: at 10 M customers and 50 M changes, mostly not in memory,
14.2 ms p99 (docs/scale.md). `changes` becomes a table partitioned by list of `kind`
(storage/partitions.py): a kind's changes lie together, in position order, and a page of them
is a few heap pages.

The existing table is converted as `events` was (0015): set aside, a partitioned twin made with
the same columns, the rows copied, the old table dropped. A partitioned table's unique keys
must contain the partition key, so the primary key becomes `(tenant_id, position, kind)`;
positions stay unique per tenant because the commit trigger hands them out from the tenant's
counter (0013). The trigger's function now names the kind, so numbering a change updates one
partition. An operator's own indexes on the table are made again on the new one, and its
storage settings (autovacuum) given to each partition. The copy took 6 s per million changes
on the test machine; run it in a maintenance window on a large database. SQLite keeps one
table.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from server_stub.storage import partitions

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

OLD = "changes_before_0028"
TRIGGER = (
    "CREATE CONSTRAINT TRIGGER changes_numbered_at_commit AFTER INSERT ON changes "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.position < 0) "
    "EXECUTE FUNCTION omnisdk_number_change()"
)
INDEXES = {
    "ix_changes_customer": "CREATE INDEX ix_changes_customer ON changes "
    "(tenant_id, customer_id, position)",
    "ix_changes_kind": "CREATE INDEX ix_changes_kind ON changes (tenant_id, kind, position)",
    "ix_changes_created_at": "CREATE INDEX ix_changes_created_at ON changes (created_at)",
}


def _number_change(where_kind: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION omnisdk_number_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    taken bigint;
BEGIN
    INSERT INTO change_positions (tenant_id, position, pruned_through)
    VALUES (NEW.tenant_id, 1, 0)
    ON CONFLICT (tenant_id) DO UPDATE SET position = change_positions.position + 1
    RETURNING position INTO taken;
    UPDATE changes SET position = taken
    WHERE tenant_id = NEW.tenant_id AND position = NEW.position{where_kind};
    RETURN NULL;
END
$$
"""


def _set_aside(key: str) -> list[str]:
    """Rename the table and its keys out of the way; the definitions of indexes that back no
    constraint and are not ours (an operator's), to be made again on the new table."""
    others = [
        definition
        for name, definition in op.get_bind().execute(
            sa.text(
                "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = 'changes'::regclass AND NOT EXISTS "
                "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)"
            )
        )
        if name not in INDEXES
    ]
    op.execute("DROP TRIGGER changes_numbered_at_commit ON changes")
    op.execute(f"ALTER TABLE changes RENAME TO {OLD}")
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT {key} TO pk_{OLD}")
    for name in INDEXES:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_0028")
    return others


def _made_again(definitions: list[str]) -> None:
    """An operator's own indexes, made again on the new table (their names are free once the
    old table is dropped, so the old one is dropped first)."""
    for definition in definitions:
        op.execute(
            definition.replace(" ON public.changes ", " ON changes ").replace(
                " ON ONLY public.changes ", " ON changes "
            )
        )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # Storage settings an operator gave the table (docs/scaling.md: autovacuum), for each
    # partition: PostgreSQL takes none on a partitioned table.
    options = bind.execute(
        sa.text("SELECT reloptions FROM pg_class WHERE oid = 'changes'::regclass")
    ).scalar()
    others = _set_aside("pk_changes")
    op.execute(f"CREATE TABLE changes (LIKE {OLD} INCLUDING DEFAULTS) PARTITION BY LIST (kind)")
    op.execute(
        "ALTER TABLE changes ADD CONSTRAINT pk_changes PRIMARY KEY (tenant_id, position, kind)"
    )
    for statement in INDEXES.values():
        op.execute(statement)
    for statement in partitions.create_change_partitions_sql():
        op.execute(statement)
    if options:
        for kind in (*partitions.CHANGE_KINDS, None):
            name = f"{partitions.CHANGES_SCHEMA}.{partitions.change_partition_name(kind)}"
            op.execute(f"ALTER TABLE {name} SET ({', '.join(options)})")
    op.execute(f"INSERT INTO changes SELECT * FROM {OLD} ORDER BY tenant_id, position")
    op.execute(f"DROP TABLE {OLD}")
    _made_again(others)
    op.execute(_number_change(" AND kind = NEW.kind"))
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    others = _set_aside("pk_changes")
    op.execute(f"CREATE TABLE changes (LIKE {OLD} INCLUDING DEFAULTS)")
    op.execute("ALTER TABLE changes ADD CONSTRAINT pk_changes PRIMARY KEY (tenant_id, position)")
    for statement in INDEXES.values():
        op.execute(statement)
    op.execute(f"INSERT INTO changes SELECT * FROM {OLD} ORDER BY tenant_id, position")
    op.execute(f"DROP TABLE {OLD}")
    _made_again(others)
    op.execute(f"DROP SCHEMA IF EXISTS {partitions.CHANGES_SCHEMA} CASCADE")
    op.execute(_number_change(""))
    op.execute(TRIGGER)
