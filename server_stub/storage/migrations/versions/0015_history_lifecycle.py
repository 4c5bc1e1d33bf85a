"""History with a lifecycle: events partitioned by month, anonymous events by day, feed by kind.

PostgreSQL: `events` becomes a table partitioned by range of `occurred_at`
(storage/partitions.py). The existing table is converted: set aside, a partitioned twin made
with the same columns (`LIKE`, so columns added by other migrations come along), every month
that holds rows given its partition, the rows copied, the old table dropped. A partitioned
table's unique keys must contain the partition key, so the dedupe key becomes
`(tenant_id, event_id, occurred_at)` and the primary key `(tenant_id, seq, occurred_at)`
(docs/scaling.md, "Event ids and dedupe"). SQLite keeps a plain table with the same unique key.
The copy costs about 25 s per million events on the test machine; run it in a maintenance
window on a large database.

Both: events stored without identifiers move from the one empty customer id to a bucket per
day (`~anon-YYYY-MM-DD`), so they can be pruned on their own retention by an index range; the
change feed gets an index per kind, which serves a watcher of a rare kind.

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-03
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from server_stub.storage import partitions
from server_stub.storage.tables import UtcDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

OLD = "events_before_0015"
BUCKET_PG = "'~anon-' || to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
BUCKET_SQLITE = "'~anon-' || substr(occurred_at, 1, 10)"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _partition_events(bind)
    else:
        op.execute(
            f"UPDATE events SET customer_id = {BUCKET_SQLITE}, "
            f"origin_customer_id = {BUCKET_SQLITE} WHERE customer_id = ''"
        )
        with op.batch_alter_table("events") as batch:
            batch.drop_constraint("uq_events_tenant_event", type_="unique")
            batch.create_unique_constraint(
                "uq_events_tenant_event", ["tenant_id", "event_id", "occurred_at"]
            )
        op.create_index("ix_events_occurred_at", "events", ["occurred_at"])
    op.create_index("ix_events_origin", "events", ["tenant_id", "origin_customer_id"])
    op.create_table(
        "event_receipts",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "event_id", name="pk_event_receipts"),
    )
    op.create_index("ix_event_receipts_received_at", "event_receipts", ["received_at"])
    op.create_index("ix_changes_kind", "changes", ["tenant_id", "kind", "position"])


def _partition_events(bind: sa.Connection) -> None:
    sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence('events', 'seq')")).scalar()
    # Indexes that back no constraint are made again on the new table, whoever added them.
    indexes = list(
        bind.execute(
            sa.text(
                "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = 'events'::regclass AND NOT EXISTS "
                "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)"
            )
        )
    )
    op.execute(
        f"UPDATE events SET customer_id = {BUCKET_PG}, origin_customer_id = {BUCKET_PG} "
        "WHERE customer_id = ''"
    )
    op.execute(f"ALTER TABLE events RENAME TO {OLD}")
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT pk_events TO pk_{OLD}")
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT uq_events_tenant_event TO uq_{OLD}")
    for name, _ in indexes:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_0015")
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    op.execute(
        f"CREATE TABLE events (LIKE {OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (occurred_at)"
    )
    # Tenant first, as in every key (a distributed schema needs it: docs/scaling.md).
    op.execute(
        "ALTER TABLE events ADD CONSTRAINT pk_events PRIMARY KEY (tenant_id, seq, occurred_at)"
    )
    op.execute(
        "ALTER TABLE events ADD CONSTRAINT uq_events_tenant_event "
        "UNIQUE (tenant_id, event_id, occurred_at)"
    )
    for _, definition in indexes:
        op.execute(
            definition.replace(f" ON public.{OLD} ", " ON events ").replace(
                f" ON {OLD} ", " ON events "
            )
        )
    # Rows land in a month's pages in roughly time order: a BRIN index of a few pages
    # serves time ranges (retention, tenant-wide reads since a time) at no write cost.
    op.execute("CREATE INDEX ix_events_occurred_at ON events USING brin (occurred_at)")
    for statement in partitions.create_schema_sql():
        op.execute(statement)
    held = {
        partitions.month_start(row[0].replace(tzinfo=UTC))
        for row in bind.execute(
            sa.text(
                f"SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC') FROM {OLD}"
            )
        )
    }
    for month in sorted(held | set(partitions.months_wanted(datetime.now(UTC)))):
        for statement in partitions.create_partition_sql(month):
            op.execute(statement)
    op.execute(f"INSERT INTO events SELECT * FROM {OLD}")
    op.execute(f"DROP TABLE {OLD}")
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY events.seq")


def downgrade() -> None:
    op.drop_index("ix_changes_kind", "changes")
    op.drop_index("ix_events_origin", "events")
    op.drop_table("event_receipts")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE TABLE {OLD} (LIKE events INCLUDING DEFAULTS)")
        op.execute(f"INSERT INTO {OLD} SELECT * FROM events")
        sequence = (
            op.get_bind()
            .execute(sa.text("SELECT pg_get_serial_sequence('events', 'seq')"))
            .scalar()
        )
        if sequence:
            op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
        op.execute("DROP TABLE events")
        op.execute(f"DROP SCHEMA IF EXISTS {partitions.SCHEMA} CASCADE")
        op.execute(f"ALTER TABLE {OLD} RENAME TO events")
        op.execute("ALTER TABLE events ADD CONSTRAINT pk_events PRIMARY KEY (seq)")
        if sequence:
            op.execute(f"ALTER SEQUENCE {sequence} OWNED BY events.seq")
        op.create_index(
            "ix_events_customer_time", "events", ["tenant_id", "customer_id", "occurred_at"]
        )
    else:
        op.drop_index("ix_events_occurred_at", "events")
        with op.batch_alter_table("events") as batch:
            batch.drop_constraint("uq_events_tenant_event", type_="unique")
    # Two events of one id at different times cannot both stay under the old key.
    op.execute(
        "DELETE FROM events WHERE seq NOT IN "
        "(SELECT min(seq) FROM events GROUP BY tenant_id, event_id)"
    )
    op.execute(
        "UPDATE events SET customer_id = '', origin_customer_id = '' "
        "WHERE customer_id LIKE '~anon-%'"
    )
    with op.batch_alter_table("events") as batch:
        batch.create_unique_constraint("uq_events_tenant_event", ["tenant_id", "event_id"])
