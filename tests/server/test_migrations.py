"""Migrations build the schema from nothing on both databases, and match the tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from server_stub.app import SchemaNotMigrated, create_app
from server_stub.settings import Settings
from server_stub.storage.migrate import current_revision, head_revision, upgrade
from server_stub.storage.tables import metadata
from tests.conftest import DATABASES, PostgresDatabases, new_database_url


@pytest.fixture(params=DATABASES)
def empty_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases | None
) -> str:
    return new_database_url(request.param, tmp_path, postgres_databases)


def _schema(connection: Connection) -> tuple[set[str], list[object]]:
    tables = set(inspect(connection).get_table_names())
    diff = compare_metadata(MigrationContext.configure(connection), metadata)
    return tables, diff


async def test_migrations_from_empty_reach_head_and_match_the_tables(
    empty_database_url: str,
) -> None:
    assert await current_revision(empty_database_url) is None
    assert await upgrade(empty_database_url) == head_revision()
    engine = create_async_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            tables, diff = await connection.run_sync(_schema)
    finally:
        await engine.dispose()
    assert set(metadata.tables) <= tables
    assert diff == []


async def test_the_recommendation_counts_leave_room_for_updates_in_place(
    empty_database_url: str,
) -> None:
    """Migration 0026: a build's fold updates most counts; with room on their pages the
    updates are HOT (no new key entry). PostgreSQL only: SQLite has no fillfactor."""
    if "postgresql" not in empty_database_url:
        pytest.skip("PostgreSQL only: SQLite has no fillfactor")
    await upgrade(empty_database_url)
    engine = create_async_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            options = dict(
                (
                    await connection.execute(
                        text(
                            "SELECT relname, reloptions FROM pg_class WHERE relname IN "
                            "('recommendation_pairs', 'recommendation_baskets')"
                        )
                    )
                ).all()
            )
    finally:
        await engine.dispose()
    assert options == {
        "recommendation_pairs": ["fillfactor=50"],
        "recommendation_baskets": ["fillfactor=70"],
    }


async def test_migrating_twice_is_harmless(empty_database_url: str) -> None:
    await upgrade(empty_database_url)
    assert await upgrade(empty_database_url) == head_revision()


async def test_server_refuses_to_start_on_an_unmigrated_database(empty_database_url: str) -> None:
    app = create_app(Settings(database_url=empty_database_url))
    with pytest.raises(SchemaNotMigrated, match="omnisdk-server migrate"):
        async with app.router.lifespan_context(app):
            pass


async def _upgrade_to(url: str, revision: str) -> None:
    from alembic import command

    from server_stub.storage.database import async_url
    from server_stub.storage.migrate import _config

    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: command.upgrade(_config(sync), revision))
    finally:
        await engine.dispose()


async def test_identifier_secrets_stored_in_the_clear_are_sealed_by_0011(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from server_stub.services.tenants import unseal_identifier_secret
    from server_stub.storage.tables import tenants
    from tests.server.conftest import TEST_SEALER, TEST_SECRET_KEY

    await _upgrade_to(empty_database_url, "0010")
    raw = os.urandom(32)
    engine = create_async_engine(async_url_of(empty_database_url))
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(tenants).values(
                    id="ten_old",
                    name="an old shop",
                    created_at=datetime.now(UTC),
                    identifier_secret=raw,
                    settings={},
                )
            )
        monkeypatch.setenv("OMNISDK_SECRET_KEY", TEST_SECRET_KEY)
        assert await upgrade(empty_database_url) == head_revision()
        async with engine.begin() as connection:
            stored = (
                await connection.execute(
                    select(tenants.c.identifier_secret).where(tenants.c.id == "ten_old")
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert bytes(stored) != raw and raw not in bytes(stored)
    # The same key as before: every stored e-mail and phone hash still matches.
    assert unseal_identifier_secret(TEST_SEALER, "ten_old", bytes(stored)) == raw


def async_url_of(url: str) -> str:
    from server_stub.storage.database import async_url

    return async_url(url)


async def test_stored_contact_data_and_unstorable_text_are_scrubbed_by_0012(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    from datetime import UTC, datetime

    from sqlalchemy import insert, select, text

    from omnisdk.core.identifiers import IdentifierType, keyed_hash
    from server_stub.services.tenants import seal_identifier_secret
    from server_stub.storage.tables import customers, events, tenants
    from tests.server.conftest import TEST_SEALER, TEST_SECRET_KEY

    await _upgrade_to(empty_database_url, "0011")
    secret = os.urandom(32)
    now = datetime.now(UTC)
    sqlite = "sqlite" in empty_database_url
    engine = create_async_engine(async_url_of(empty_database_url))
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(tenants).values(
                    id="ten_old",
                    name="an old shop",
                    created_at=now,
                    identifier_secret=seal_identifier_secret(TEST_SEALER, "ten_old", secret),
                    settings={},
                )
            )
            await connection.execute(
                insert(customers).values(
                    tenant_id="ten_old",
                    id="cus_amy",
                    created_at=now,
                    traits={"contact": "amy@x.io"},
                )
            )
            properties = {"email": "Amy@X.io", "sku": "TR2", "note": "fine"}
            await connection.execute(
                insert(events).values(
                    tenant_id="ten_old",
                    event_id="e1",
                    customer_id="cus_amy",
                    origin_customer_id="cus_amy",
                    name="chat_started",
                    channel="web",
                    occurred_at=now,
                    received_at=now,
                    properties=properties,
                )
            )
            if sqlite:  # only SQLite ever kept a lone surrogate
                await connection.execute(
                    text("UPDATE events SET properties = :p WHERE event_id = 'e1'"),
                    {"p": '{"email": "Amy@X.io", "sku": "TR2", "note": "\\udfff"}'},
                )
        monkeypatch.setenv("OMNISDK_SECRET_KEY", TEST_SECRET_KEY)
        assert await upgrade(empty_database_url) == head_revision()
        async with engine.begin() as connection:
            traits = (await connection.execute(select(customers.c.traits))).scalar_one()
            stored = (await connection.execute(select(events.c.properties))).scalar_one()
    finally:
        await engine.dispose()
    hashed = f"email#{keyed_hash(secret, IdentifierType.EMAIL, 'amy@x.io')}"
    assert traits == {"contact": hashed}
    assert stored == {"email": hashed, "sku": "TR2", "note": "\ufffd" if sqlite else "fine"}


async def test_changes_written_before_0028_are_kept_in_their_kinds_partitions(
    empty_database_url: str,
) -> None:
    """Migration 0028 partitions the change feed by kind (PostgreSQL): every change already
    stored is kept, in its kind's partition (an unknown kind in the default one), and a change
    published afterwards is numbered after them at commit, as before. An operator's own index
    on the table is kept, and its autovacuum setting goes to every partition."""
    if "postgresql" not in empty_database_url:
        pytest.skip("PostgreSQL only: SQLite keeps one table")
    from server_stub.services import changes as feed
    from server_stub.storage.database import Database

    await _upgrade_to(empty_database_url, "0027")
    database = Database(empty_database_url)
    try:
        async with database.transaction(write=True) as conn:
            for n, kind in enumerate(["cart", "consent", "segment.entered", "later", "cart"]):
                await feed.publish(conn, "ten_old", f"cus_{n}", kind, {"n": n})
        async with database.transaction(write=True) as conn:
            await conn.execute(text("CREATE INDEX ix_mine ON changes (created_at, kind)"))
            await conn.execute(
                text("ALTER TABLE changes SET (autovacuum_vacuum_scale_factor = 0.01)")
            )
    finally:
        await database.dispose()
    assert await upgrade(empty_database_url) == head_revision()
    database = Database(empty_database_url)
    try:
        async with database.transaction(write=True) as conn:
            await feed.publish(conn, "ten_old", "cus_5", "consent", {"n": 5})
        async with database.transaction(write=False) as conn:
            page = await feed.read_page(conn, "ten_old", 0)
            placed = (
                await conn.execute(
                    text("SELECT tableoid::regclass::text, position FROM changes ORDER BY position")
                )
            ).all()
            mine = (
                await conn.execute(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_mine'")
                )
            ).scalar()
            settings = (
                await conn.execute(
                    text(
                        "SELECT DISTINCT array_to_string(c.reloptions, ',') FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'changes'::regclass"
                    )
                )
            ).all()
    finally:
        await database.dispose()
    assert [(row.position, row.kind, row.payload) for row in page.rows] == [
        (1, "cart", {"n": 0}),
        (2, "consent", {"n": 1}),
        (3, "segment.entered", {"n": 2}),
        (4, "later", {"n": 3}),
        (5, "cart", {"n": 4}),
        (6, "consent", {"n": 5}),
    ]
    assert page.horizon.newest == 6
    assert placed == [
        ("omnisdk_changes.changes_cart", 1),
        ("omnisdk_changes.changes_consent", 2),
        ("omnisdk_changes.changes_segment_entered", 3),
        ("omnisdk_changes.changes_default", 4),
        ("omnisdk_changes.changes_cart", 5),
        ("omnisdk_changes.changes_consent", 6),
    ]
    assert mine is not None and "ON ONLY public.changes" in mine and "(created_at, kind)" in mine
    assert settings == [("autovacuum_vacuum_scale_factor=0.01",)]


async def test_0028_goes_down_to_one_table_again(empty_database_url: str) -> None:
    if "postgresql" not in empty_database_url:
        pytest.skip("PostgreSQL only: SQLite keeps one table")
    from alembic import command

    from server_stub.services import changes as feed
    from server_stub.storage.database import Database, async_url
    from server_stub.storage.migrate import _config

    await upgrade(empty_database_url)
    database = Database(empty_database_url)
    try:
        async with database.transaction(write=True) as conn:
            await feed.publish(conn, "ten_old", "cus_1", "cart", {"n": 1})
    finally:
        await database.dispose()
    engine = create_async_engine(async_url(empty_database_url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: command.downgrade(_config(sync), "0027"))
    finally:
        await engine.dispose()
    database = Database(empty_database_url)
    try:
        async with database.transaction(write=True) as conn:
            await feed.publish(conn, "ten_old", "cus_2", "consent", {"n": 2})
        async with database.transaction(write=False) as conn:
            page = await feed.read_page(conn, "ten_old", 0)
            kind = (
                await conn.execute(
                    text("SELECT relkind::text FROM pg_class WHERE oid = 'changes'::regclass")
                )
            ).scalar()
    finally:
        await database.dispose()
    assert [(row.position, row.kind) for row in page.rows] == [(1, "cart"), (2, "consent")]
    assert kind == "r"


async def test_staff_keys_made_before_0029_lose_identify_and_return_codes(
    empty_database_url: str,
) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from server_stub.storage.tables import api_keys, staff_members, tenants

    await _upgrade_to(empty_database_url, "0028")
    old_staff = ["carts:read", "consent:read", "identity:write", "profile:annotate"]
    old_staff += ["profile:read", "returns:issue"]
    backend = ["identity:write", "returns:issue"]
    now = datetime.now(UTC)
    engine = create_async_engine(async_url_of(empty_database_url))
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(tenants).values(
                    id="ten_old", name="a shop", created_at=now, settings={}, identifier_secret=b"x"
                )
            )
            for key_id, scopes in (("key_kim", old_staff), ("key_web", backend)):
                await connection.execute(
                    insert(api_keys).values(
                        key_id=key_id,
                        tenant_id="ten_old",
                        channel="admin" if key_id == "key_kim" else "web",
                        name=key_id,
                        scopes=scopes,
                        secret_sha256="0" * 64,
                        created_at=now,
                    )
                )
            await connection.execute(
                insert(staff_members).values(
                    key_id="key_kim",
                    tenant_id="ten_old",
                    name="Kim",
                    department="service",
                    role="agent",
                    created_at=now,
                )
            )
        assert await upgrade(empty_database_url) == head_revision()
        async with engine.begin() as connection:
            stored = dict(
                (await connection.execute(select(api_keys.c.key_id, api_keys.c.scopes))).all()
            )
    finally:
        await engine.dispose()
    assert stored == {
        "key_kim": ["carts:read", "consent:read", "profile:annotate", "profile:read"],
        "key_web": backend,  # not a staff key: left alone
    }


async def test_answers_stored_before_0031_name_their_customers_for_erasure(
    empty_database_url: str,
) -> None:
    """Migration 0031: erasure finds stored answers by the customer ids they name; the
    answers already stored get theirs from their bodies."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from server_stub.storage.tables import idempotency_records

    await _upgrade_to(empty_database_url, "0030")
    now = datetime.now(UTC)
    bodies = {
        "merge": b'{"customer_id":"cus_1a2b","merged":["cus_9f","cus_1a2b"],"note":"caf\xc3\xa9"}',
        "none": b'{"status":"ok"}',
        # User text that only looks like one: longer than any customer id.
        "text": b'{"note":"focus_BlackFridayNewsletterSegmentWinter2026 for cus_77"}',
    }
    engine = create_async_engine(async_url_of(empty_database_url))
    try:
        async with engine.begin() as connection:
            for key, body in bodies.items():
                await connection.execute(
                    insert(idempotency_records).values(
                        tenant_id="ten_old",
                        idempotency_key=key,
                        fingerprint="f",
                        status_code=200,
                        headers={},
                        body=body,
                        created_at=now,
                    )
                )
        assert await upgrade(empty_database_url) == head_revision()
        async with engine.begin() as connection:
            named = dict(
                (
                    await connection.execute(
                        select(
                            idempotency_records.c.idempotency_key, idempotency_records.c.subjects
                        )
                    )
                ).all()
            )
    finally:
        await engine.dispose()
    assert {key: sorted(subjects) for key, subjects in named.items()} == {
        "merge": ["cus_1a2b", "cus_9f"],
        "none": [],
        "text": ["cus_77"],
    }
