"""PostgreSQL: the events table partitioned by month of `occurred_at` (docs/scaling.md).

`events` is a table partitioned by range of `occurred_at`, the time every read of events
filters and orders by. Each month is one partition, `omnisdk_events.events_YYYY_MM`, in a
schema of its own so that the schema tools (Alembic's comparison, the schema tests) see only
the parent table. A default partition catches an event of a month that has no partition yet
(an event up to three years old is accepted); creating that month's partition later moves
those rows out of it. Partitions are created ahead: at migration (this month and the next
three) and by the maintenance task (services/maintenance.py).

Statements here are plain SQL strings, run by the migration (synchronously) and by the
maintenance task (asynchronously) alike.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

SCHEMA = "omnisdk_events"
DEFAULT_PARTITION = "events_default"
MONTHS_AHEAD = 3
_NAME = re.compile(r"^events_(\d{4})_(\d{2})$")


def month_start(when: datetime) -> datetime:
    """The first instant (UTC) of the month `when` falls in."""
    when = when.astimezone(UTC)
    return datetime(when.year, when.month, 1, tzinfo=UTC)


def add_months(start: datetime, months: int) -> datetime:
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(start: datetime) -> str:
    return f"events_{start:%Y_%m}"


def month_of(name: str) -> datetime | None:
    """The month a partition's name stands for (None for the default partition)."""
    found = _NAME.match(name)
    return datetime(int(found[1]), int(found[2]), 1, tzinfo=UTC) if found else None


def months_wanted(now: datetime) -> list[datetime]:
    """The months that must have a partition at `now`: the last one, this one, and ahead."""
    this = month_start(now)
    return [add_months(this, n) for n in range(-1, MONTHS_AHEAD + 1)]


def create_schema_sql() -> list[str]:
    return [
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{DEFAULT_PARTITION} PARTITION OF events DEFAULT",
    ]


def create_partition_sql(start: datetime) -> list[str]:
    """Statements that give the month starting at `start` its partition, moving any of its
    rows out of the default partition first (PostgreSQL refuses to attach a range that the
    default partition holds rows of). Run them in one transaction."""
    end = add_months(start, 1)
    name = f"{SCHEMA}.{partition_name(start)}"
    bounds = f"occurred_at >= '{start.isoformat()}' AND occurred_at < '{end.isoformat()}'"
    return [
        f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS)",
        f"WITH moved AS (DELETE FROM {SCHEMA}.{DEFAULT_PARTITION} WHERE {bounds} RETURNING *) "
        f"INSERT INTO {name} SELECT * FROM moved",
        f"ALTER TABLE events ATTACH PARTITION {name} "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')",
    ]


def drop_partition_sql(start: datetime) -> str:
    return f"DROP TABLE IF EXISTS {SCHEMA}.{partition_name(start)}"


# The partitions of `events` (their names; the default partition's included).
LIST_PARTITIONS_SQL = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'events'::regclass"
)

# The months that rows in the default partition belong to.
DEFAULT_MONTHS_SQL = (
    "SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC') "
    f"FROM {SCHEMA}.{DEFAULT_PARTITION}"
)


# --- the change feed: partitioned by kind -------------------------------------------------
#
# `changes` is a table partitioned by list of `kind` (migration 0028): each kind the server
# publishes has a partition, `omnisdk_changes.changes_<kind>`, and a default partition takes a
# kind published before a migration gives it one. A watcher of some kinds reads only their
# partitions, where a page of changes lies on a few heap pages in position order; in one table
# the page of a rare kind lay one row on each of a hundred pages.

CHANGES_SCHEMA = "omnisdk_changes"
CHANGE_KINDS = (
    "annotation",
    "cart",
    "consent",
    "content",
    "preference",
    "segment.entered",
    "segment.exited",
    "session",
)


def change_partition_name(kind: str | None) -> str:
    """The partition of changes of `kind` (None: the default partition)."""
    return "changes_default" if kind is None else "changes_" + kind.replace(".", "_")


def create_change_partitions_sql() -> list[str]:
    statements = [f"CREATE SCHEMA IF NOT EXISTS {CHANGES_SCHEMA}"]
    for kind in CHANGE_KINDS:
        statements.append(
            f"CREATE TABLE {CHANGES_SCHEMA}.{change_partition_name(kind)} "
            f"PARTITION OF changes FOR VALUES IN ('{kind}')"
        )
    statements.append(
        f"CREATE TABLE {CHANGES_SCHEMA}.{change_partition_name(None)} PARTITION OF changes DEFAULT"
    )
    return statements
