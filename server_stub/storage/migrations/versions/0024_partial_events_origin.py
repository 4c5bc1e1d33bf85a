"""The events' origin index holds only events moved away from the customer they were recorded
for.

Since issue 21 a merge leaves events under the customer they were recorded for (reads resolve
through the merge record) and only a history fold moves them; erasure and split look for moved
events by origin, every other event is found by its customer. The full index took one more
random leaf write per ingested event, and at 10 M customers about 1 GB per monthly partition.
Queries name the predicate (storage/tables.moved_from) so the planner may use it.

On PostgreSQL the index is on the partitioned table: dropping and creating it rebuilds it on
every partition under a lock that holds writes to events (minutes at 10 M customers; the
partial index is small, so reading the table dominates). Run it in a quiet hour.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

MOVED = "origin_customer_id <> customer_id"


def upgrade() -> None:
    op.drop_index("ix_events_origin", table_name="events")
    op.create_index(
        "ix_events_origin",
        "events",
        ["tenant_id", "origin_customer_id"],
        sqlite_where=sa.text(MOVED),
        postgresql_where=sa.text(MOVED),
    )


def downgrade() -> None:
    op.drop_index("ix_events_origin", table_name="events")
    op.create_index("ix_events_origin", "events", ["tenant_id", "origin_customer_id"])
