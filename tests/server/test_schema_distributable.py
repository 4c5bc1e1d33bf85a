"""The schema stays distributable (docs/scaling.md, "Beyond one machine: Citus").

On the migrated PostgreSQL schema: every table is either a reference table (small, copied to
every node) or scoped by tenant, with `tenant_id` in its primary key and in every unique
constraint and unique index (Citus requires the distribution column in each); every
customer-scoped table names the customer column its rows would be distributed by; foreign
keys point only at reference tables. A new table must be placed in one of the lists below,
with its distribution column, or this test fails.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import PostgresDatabases, new_database_url

pytestmark = pytest.mark.postgres

# Small, changed rarely, read everywhere: replicated to every node.
REFERENCE = {"tenants", "api_keys", "staff_members"}  # staff members: keyed by their API key
# Kept on the coordinator only (a Citus local table): a few rows per admin action.
COORDINATOR = {"audit_log", "alembic_version", "console_sessions"}
# Customer-scoped tables and the column that names the customer a row was recorded for
# (distribution column of the customer plan; docs/scaling.md).
CUSTOMER_SCOPED = {
    "customers": "id",
    "identifiers": "customer_id",
    "events": "origin_customer_id",
    "event_receipts": None,  # by event id: a lookup table, like identifiers by value
    "merges": "survivor_id",
    "annotations": "origin_customer_id",
    "carts": "customer_id",
    "ordered_carts": "customer_id",
    "sessions": "customer_id",
    "consent_decisions": "origin_customer_id",
    "changes": "customer_id",
    "return_orders": "customer_id",
    "orders": "origin_customer_id",
    "customer_codes": "customer_id",
    "customer_scores": "customer_id",
    "preference_declarations": "origin_customer_id",
    "segment_members": "customer_id",
    "segment_pending": "customer_id",
    "alert_subscriptions": "origin_customer_id",
    "alert_messages": "origin_customer_id",
    "history_folds": "customer_id",
    "recommendation_baskets": "customer_id",
}
# Scoped by tenant, not by customer.
TENANT_SCOPED = {
    "recommendation_orders",
    "idempotency_records",
    "signing_keys",
    "return_lines",
    "return_tokens",
    "redemptions",
    "change_positions",
    "content_rulesets",
    "recommendation_models",
    "recommendation_pairs",
    "recommendation_pair_deltas",
    "recommendation_progress",
    "jobs",
    "order_lines",
    "order_refunds",
    "journey_days",
    "annotation_revisions",
    "segments",
    "inventory_items",
    "inventory_levels",
    "inventory_ops",
    "alert_restocks",
    "webhook_endpoints",
}


@pytest.fixture(scope="module")
def schema_url(
    tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases | None
) -> str:
    from server_stub.storage.migrate import upgrade

    url = new_database_url("postgres", tmp_path_factory.mktemp("schema"), postgres_databases)
    asyncio.run(upgrade(url))
    return url


def _reflect(url: str) -> dict[str, dict[str, object]]:
    def read(connection: Connection) -> dict[str, dict[str, object]]:
        found = inspect(connection)
        return {
            table: {
                "columns": {column["name"] for column in found.get_columns(table)},
                "primary": found.get_pk_constraint(table)["constrained_columns"],
                "unique": [u["column_names"] for u in found.get_unique_constraints(table)]
                + [i["column_names"] for i in found.get_indexes(table) if i["unique"]],
                "foreign": [f["referred_table"] for f in found.get_foreign_keys(table)],
            }
            for table in found.get_table_names()
        }

    async def run() -> dict[str, dict[str, object]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_every_table_is_placed_in_the_distribution_plan(schema_url: str) -> None:
    placed = REFERENCE | COORDINATOR | set(CUSTOMER_SCOPED) | TENANT_SCOPED
    assert set(_reflect(schema_url)) == placed


def test_every_key_of_a_scoped_table_holds_the_tenant(schema_url: str) -> None:
    schema = _reflect(schema_url)
    broken = []
    for table in set(CUSTOMER_SCOPED) | TENANT_SCOPED:
        keys = [schema[table]["primary"], *schema[table]["unique"]]  # type: ignore[list-item]
        keys = [key for key in keys if key]  # an append-only table may have no key at all
        broken += [f"{table}: {key}" for key in keys if "tenant_id" not in key]
    assert not broken, "keys without tenant_id (not distributable):\n" + "\n".join(broken)


def test_every_customer_scoped_table_has_its_distribution_column(schema_url: str) -> None:
    schema = _reflect(schema_url)
    for table, column in CUSTOMER_SCOPED.items():
        columns = schema[table]["columns"]
        assert "tenant_id" in columns  # type: ignore[operator]
        assert column is None or column in columns, (table, column)  # type: ignore[operator]


def test_foreign_keys_point_only_at_reference_tables(schema_url: str) -> None:
    schema = _reflect(schema_url)
    wrong = {
        (table, referred)
        for table, facts in schema.items()
        for referred in facts["foreign"]  # type: ignore[attr-defined]
        if referred not in REFERENCE
    }
    assert not wrong
