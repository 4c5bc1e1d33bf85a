"""The database schema. Every table is keyed by tenant first (DESIGN: Scale)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    false,
    literal_column,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass an aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stored: datetime = value
        return stored.replace(tzinfo=UTC) if stored.tzinfo is None else stored.astimezone(UTC)


CENT = Decimal("0.01")


class Money(TypeDecorator[Decimal]):
    """An amount of money with two decimals, exact on both databases: NUMERIC(14, 2) on
    PostgreSQL, whole cents as an integer on SQLite (whose NUMERIC is a float). Python sees a
    `Decimal`; SUM over the column stays exact and comes back as a `Decimal` too."""

    impl = Numeric(14, 2)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(14, 2, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = Decimal(str(value)).quantize(CENT)
        return int(amount * 100) if dialect.name == "sqlite" else amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return (Decimal(int(value)) / 100).quantize(CENT)
        return Decimal(value).quantize(CENT)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # Key of the HMAC that e-mail addresses and phone numbers are stored as.
    Column("identifier_secret", LargeBinary, nullable=False),
    Column("settings", JSON, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    # The public half of a key; the secret half is kept only as a SHA-256 digest.
    Column("key_id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("name", String(100), nullable=False, default=""),
    # None: the channel's default scopes, as they are at the time of each request.
    Column("scopes", JSON, nullable=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Index("ix_api_keys_tenant", "tenant_id"),
)

idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_idempotency_records_created_at", "created_at"),
    # The customer ids the body names (services/idempotency.subjects), for erasure to find
    # them without reading a day's bodies: an array with a GIN index on PostgreSQL, a JSON
    # list on SQLite (migration 0031 filled it for the records stored before it; null for one
    # stored by a server older than 0031 while it ran).
    Column(
        "subjects",
        JSON().with_variant(postgresql.ARRAY(String(40)), "postgresql"),
        nullable=True,
    ),
    Index("ix_idempotency_records_subjects", "subjects", postgresql_using="gin"),
    # Records a server older than 0031 stored without subjects (erasure reads their bodies).
    Index(
        "ix_idempotency_records_unnamed",
        "tenant_id",
        postgresql_where=text("subjects IS NULL"),
        sqlite_where=text("subjects IS NULL"),
    ),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(40), nullable=False),
    Column("actor_key_id", String(40), nullable=True),
    Column("action", String(64), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_audit_log_tenant", "tenant_id", "created_at"),
    Index("ix_audit_log_subject", "tenant_id", "subject"),  # erasure: entries about her
)

# An autoincrementing 64-bit key (SQLite's INTEGER PRIMARY KEY is 64-bit already).
Sequence64 = BigInteger().with_variant(Integer(), "sqlite")

customers = Table(
    "customers",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("traits", JSON, nullable=False),
    # Set when merged into another customer: the old id keeps resolving through it.
    Column("merged_into", String(40), nullable=True),
    Column("merged_at", UtcDateTime(), nullable=True),
    Index("ix_customers_merged_into", "tenant_id", "merged_into"),
)

identifiers = Table(
    "identifiers",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("type", String(16), primary_key=True),
    # Normalised value; for e-mail and phone the keyed hash (never the address or number).
    Column("value", String(300), primary_key=True),
    Column("customer_id", String(40), nullable=True),
    Column("shared", Boolean, nullable=False),
    Column("linked_at", UtcDateTime(), nullable=False),
    Index("ix_identifiers_customer", "tenant_id", "customer_id"),
)

events = Table(
    "events",
    metadata,
    Column("seq", Sequence64, primary_key=True, autoincrement=True),
    Column("tenant_id", String(40), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("customer_id", String(40), nullable=False),
    # The customer the event was recorded for: a split gives events back by it.
    Column("origin_customer_id", String(40), nullable=False),
    Column("name", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("properties", JSON, nullable=False),
    Column("category", String(100), nullable=True),
    Column("value", Float, nullable=True),
    # On PostgreSQL the table is partitioned by month of `occurred_at` (storage/partitions.py),
    # so every unique key holds it: the primary key there is (tenant_id, seq, occurred_at).
    UniqueConstraint("tenant_id", "event_id", "occurred_at", name="uq_events_tenant_event"),
    Index("ix_events_customer_time", "tenant_id", "customer_id", "occurred_at"),
    Index("ix_events_occurred_at", "occurred_at", postgresql_using="brin"),
    # Erasure and split find the events a history fold moved away from the customer they were
    # recorded for. Partial: every other event is found by its customer, so ingesting one
    # writes no leaf of this index (migration 0024). Queries state the predicate (moved_from).
    Index(
        "ix_events_origin",
        "tenant_id",
        "origin_customer_id",
        sqlite_where=text("origin_customer_id <> customer_id"),
        postgresql_where=text("origin_customer_id <> customer_id"),
    ),
    # Her orders among her events (profile, segments, messages) without reading the rest of
    # her history; partial, so ingesting the other events costs nothing more (migration 0021).
    Index(
        "ix_events_customer_orders",
        "tenant_id",
        "customer_id",
        "occurred_at",
        sqlite_where=text("name = 'order_completed'"),
        postgresql_where=text("name = 'order_completed'"),
    ),
)

# Selects `order_completed` events. The name is written into the statement, not bound: a
# prepared statement's generic plan cannot use a partial index on a bound value.
ORDER_COMPLETED = events.c.name == literal_column("'order_completed'")


def moved_from(table: Table, ids: list[str]) -> ColumnElement[bool]:
    """Rows recorded for one of `ids` that a merge or history fold moved to another customer.

    Says `origin_customer_id <> customer_id` so the planner may use the partial origin index
    (events), and so every such read names the same rows on every table."""
    return and_(
        table.c.origin_customer_id.in_(ids),
        table.c.origin_customer_id != table.c.customer_id,
    )


event_receipts = Table(
    "event_receipts",
    metadata,
    # PostgreSQL: ids of events sent without a time of their own, claimed for a day so that
    # concurrent deliveries of one are stored once (services/events.py); pruned by maintenance.
    Column("tenant_id", String(40), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("received_at", UtcDateTime(), nullable=False),
    Index("ix_event_receipts_received_at", "received_at"),
)

merges = Table(
    "merges",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("survivor_id", String(40), nullable=False),
    Column("loser_id", String(40), nullable=False),
    Column("cause", String(100), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("split_at", UtcDateTime(), nullable=True),
    # What the loser held at the merge, so that a split can give it back.
    Column("snapshot", JSON, nullable=False),
    Index("ix_merges_survivor", "tenant_id", "survivor_id"),
    Index("ix_merges_loser", "tenant_id", "loser_id"),
)

annotations_table = Table(
    "annotations",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), nullable=False),
    Column("origin_customer_id", String(40), nullable=False),
    Column("department", String(32), nullable=False),
    Column("author", String(100), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_annotations_customer", "tenant_id", "customer_id"),
    Index("ix_annotations_origin", "tenant_id", "origin_customer_id"),
    # Issue 19 (migration 0018): department knowledge. kind: note | warning | preference |
    # promise; visibility: department | staff | customer (also in her export).
    Column("kind", String(16), nullable=False, server_default="note"),
    Column("visibility", String(16), nullable=False, server_default="staff"),
    Column("pinned", Boolean, nullable=False, server_default=false()),
    Column("expires_at", UtcDateTime(), nullable=True),
    Column("author_key_id", String(40), nullable=True),
    Column("revision", Integer, nullable=False, server_default="1"),
    Column("updated_at", UtcDateTime(), nullable=True),
    # Deletion is soft: the note is hidden, its revisions and the reason stay (until erasure).
    Column("deleted_at", UtcDateTime(), nullable=True),
    Column("deleted_by", String(100), nullable=True),
    Column("delete_reason", Text, nullable=True),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("kid", String(16), primary_key=True),  # hex of the 8-byte key id
    Column("public_key", LargeBinary, nullable=False),
    # The private key, sealed with the server's secret key (AES-GCM): never stored in the clear.
    Column("sealed_private_key", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("retires_at", UtcDateTime(), nullable=True),
)

return_orders = Table(
    "return_orders",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("order_ref", String(64), primary_key=True),
    Column("customer_id", String(40), nullable=True),
    Column("currency", String(3), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Index("ix_return_orders_customer", "tenant_id", "customer_id"),
)

return_lines = Table(
    "return_lines",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("order_ref", String(64), primary_key=True),
    Column("line_id", String(32), primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("name", String(200), nullable=True),
    Column("quantity", Integer, nullable=False),
    Column("returned", Integer, nullable=False),
    Column("unit_price", Float, nullable=True),
)

return_tokens = Table(
    "return_tokens",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("token_id", String(32), primary_key=True),
    Column("order_ref", String(64), nullable=False),
    Column("kid", String(16), nullable=False),
    Column("token", Text, nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Index("ix_return_tokens_order", "tenant_id", "order_ref"),
)

redemptions = Table(
    "redemptions",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("token_id", String(32), nullable=False),
    Column("order_ref", String(64), nullable=False),
    Column("till_transaction_id", String(100), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("refund_method", String(32), nullable=False),
    Column("lines", JSON, nullable=False),
    Column("value", Float, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("tenant_id", "till_transaction_id", name="uq_redemptions_till_transaction"),
    Index("ix_redemptions_order", "tenant_id", "order_ref"),
)

carts = Table(
    "carts",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    # omnisdk.core.cart.Cart.to_dict(): bounded (docs/carts.md) — live contributions by line
    # and replica, removes as vectors, applied operation ids as per-replica watermarks.
    Column("state", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # Replicas whose operations were addressed to an id merged into this customer: replica →
    # that id. A split gives those operations back to it.
    Column("addressed", JSON, nullable=True),
    # The abandoned-cart scan's order (services/alerts.abandoned_carts).
    Index("ix_carts_idle", "tenant_id", "updated_at", "customer_id"),
)

ordered_carts = Table(
    "ordered_carts",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), nullable=False),
    Column("order_ref", String(64), nullable=False),
    Column("lines", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    Column("ordered_at", UtcDateTime(), nullable=False),
    UniqueConstraint("tenant_id", "order_ref", name="uq_ordered_carts_order"),
    Index("ix_ordered_carts_customer", "tenant_id", "customer_id"),
)

changes = Table(
    "changes",
    metadata,
    # The change's place in its tenant's feed: 1, 2, 3, ... per tenant, handed out when the
    # writing transaction commits (services/changes.py), so positions follow commit order.
    Column("tenant_id", String(40), primary_key=True),
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("customer_id", String(40), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # On PostgreSQL the table is partitioned by list of `kind` (migration 0028,
    # storage/partitions.py), so its primary key there is (tenant_id, position, kind);
    # positions stay unique per tenant because the commit trigger hands them out from the
    # tenant's counter (`change_positions`).
    Index("ix_changes_customer", "tenant_id", "customer_id", "position"),
    Index("ix_changes_kind", "tenant_id", "kind", "position"),
    Index("ix_changes_created_at", "created_at"),
)

change_positions = Table(
    "change_positions",
    metadata,
    # One row per tenant: the last position handed out (its row lock orders the commits of
    # the tenant's changes) and the last position pruned (a watcher behind it must resync).
    Column("tenant_id", String(40), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("pruned_through", BigInteger, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    Column("document", JSON, nullable=False),  # omnisdk.core.session.to_json
    Column("updated_at", UtcDateTime(), nullable=False),
)

consent_decisions = Table(
    "consent_decisions",
    metadata,
    # Append-only: rows are never updated except to follow their customer through a merge
    # (customer_id) and, at erasure, to anonymise the proof of a refusal.
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), nullable=False),
    Column("origin_customer_id", String(40), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("scope", String(8), nullable=False),
    Column("device_id", String(300), nullable=True),
    Column("channel", String(16), nullable=False),
    Column("source", String(32), nullable=False),
    Column("method", String(40), nullable=False),
    Column("notice_id", String(100), nullable=True),
    Column("notice_version", Integer, nullable=False),
    Column("notice_sha256", String(64), nullable=True),
    Column("client_time", UtcDateTime(), nullable=True),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("confirms", String(40), nullable=True),
    Index("ix_consent_decisions_customer", "tenant_id", "customer_id"),
)

content_rulesets = Table(
    "content_rulesets",
    metadata,
    # Every published version is kept: the newest is served, the others are the audit trail.
    Column("tenant_id", String(40), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("etag", String(64), nullable=False),
    Column("document", JSON, nullable=False),
    Column("author_key_id", String(40), nullable=True),  # None: imported by the CLI
    Column("note", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

recommendation_models = Table(
    "recommendation_models",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("etag", String(64), nullable=False),
    Column("document", JSON, nullable=False),  # omnisdk.core.recs.build
    Column("built_at", UtcDateTime(), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    # A long-running task of one tenant (services/jobs.py): its progress, its checkpoint to
    # resume from, and a heartbeat that tells a live runner from a dead one.
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # queued, running, done, failed
    Column("params", JSON, nullable=False),
    Column("done", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=True),
    Column("checkpoint", JSON, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("runner", String(40), nullable=True),  # the lease of the process running it
    Column("attempts", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=True),
    Column("heartbeat_at", UtcDateTime(), nullable=True),
    Column("finished_at", UtcDateTime(), nullable=True),
    Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
    # One unfinished job per tenant and kind, enforced by the database on both stores.
    Index(
        "ix_jobs_one_active",
        "tenant_id",
        "kind",
        unique=True,
        sqlite_where=text("state IN ('queued', 'running')"),
        postgresql_where=text("state IN ('queued', 'running')"),
    ),
)

recommendation_pairs = Table(
    "recommendation_pairs",
    metadata,
    # Co-occurrence counts the recommendation model is cut from, kept between builds so a
    # build counts only what is new. Both directions are stored; (sku, sku) is the number of
    # baskets holding the sku (its popularity). Pages kept half full (fillfactor, migration
    # 0026): a build's fold updates most counts, each in place.
    Column("tenant_id", String(40), primary_key=True),
    Column("sku", String(200), primary_key=True),
    Column("other", String(200), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

recommendation_pair_deltas = Table(
    "recommendation_pair_deltas",
    metadata,
    # PostgreSQL: each window's pair counts, appended with the window (no upsert per window),
    # folded into recommendation_pairs summed per pair before the model is cut (migration
    # 0025). No key: rows are only appended, summed and deleted by tenant; a pair may repeat.
    Column("tenant_id", String(40), nullable=False),
    Column("through", BigInteger, nullable=False),  # the mark of the window that wrote it
    Column("sku", String(200), nullable=False),
    Column("other", String(200), nullable=False),
    Column("n", BigInteger, nullable=False),
    Index("ix_recommendation_pair_deltas_tenant", "tenant_id", "through"),
)

recommendation_baskets = Table(
    "recommendation_baskets",
    metadata,
    # Each customer's cart basket as counted in recommendation_pairs (services/
    # recommendations.py): what an incremental build takes out before it counts her grown one.
    Column("tenant_id", String(40), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    Column("skus", JSON, nullable=False),
)

recommendation_progress = Table(
    "recommendation_progress",
    metadata,
    # How far the counts have got: events up to `counted_through` (events.seq) are in them.
    Column("tenant_id", String(40), primary_key=True),
    Column("counted_through", BigInteger, nullable=False),
    Column("baskets", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

orders = Table(
    "orders",
    metadata,
    # An order on any channel (services/orders.py): an online checkout, an order the shop
    # recorded, or a sale at a till. Money is exact (Money); `refunded` grows with returns
    # taken back at a till and refunds, so the net value is `total - refunded`.
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("reference", String(64), nullable=False),
    # None: a store sale linked to no customer (or not allowed to be, by her consent).
    Column("customer_id", String(40), nullable=True),
    # The customer it was recorded for: a split gives orders back by it.
    Column("origin_customer_id", String(40), nullable=True),
    Column("channel", String(16), nullable=False),
    Column("store_id", String(64), nullable=True),
    Column("currency", String(3), nullable=False),
    Column("total", Money(), nullable=False),
    Column("refunded", Money(), nullable=False),
    Column("placed_at", UtcDateTime(), nullable=False),
    Column("link_method", String(16), nullable=False),
    Column("link_confidence", Float, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("tenant_id", "reference", name="uq_orders_tenant_reference"),
    Index("ix_orders_customer", "tenant_id", "customer_id", "placed_at"),
    Index("ix_orders_origin", "tenant_id", "origin_customer_id"),
    Index("ix_orders_placed", "tenant_id", "placed_at", "id"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("order_id", String(40), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", Money(), nullable=False),
    Column("gift", Boolean, nullable=False),
    # How sure the shop was that the line is a gift (None: it did not say; 1.0: told so).
    Column("gift_confidence", Float, nullable=True),
    Column("returned_quantity", Integer, nullable=False),
    # What the shop said of the product (optional), for the gift classifier (migration 0021).
    Column("category", String(100), nullable=True),
    Column("size", String(32), nullable=True),
    Column("gender", String(32), nullable=True),
    Column("age_band", String(32), nullable=True),
    Index("ix_order_lines_sku", "tenant_id", "sku"),
)

order_refunds = Table(
    "order_refunds",
    metadata,
    # Money given back on an order, each once: a return taken at a till (its redemption id)
    # or a refund the shop recorded (its refund id). The order's `refunded` is their sum.
    Column("tenant_id", String(40), primary_key=True),
    Column("refund_id", String(100), primary_key=True),
    Column("order_id", String(40), nullable=False),
    Column("source", String(16), nullable=False),  # "till_return" | "refund"
    Column("amount", Money(), nullable=False),
    Column("lines", JSON, nullable=False),  # [{"line_no": 1, "quantity": 1}, ...]
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_order_refunds_order", "tenant_id", "order_id"),
)

customer_codes = Table(
    "customer_codes",
    metadata,
    # The signed customer codes an app showed (omnisdk.core.customer_codes): the code carries
    # only its random id; this row says whose it is, so the code itself holds no personal data.
    Column("tenant_id", String(40), primary_key=True),
    Column("code_id", String(32), primary_key=True),
    Column("customer_id", String(40), nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_customer_codes_customer", "tenant_id", "customer_id"),
    Index("ix_customer_codes_expires", "expires_at"),
)

customer_scores = Table(
    "customer_scores",
    metadata,
    # Lifetime value and RFM per customer from the latest fit (services/analytics.py), with the
    # fit's date; read into the profile as `ltv.*` and `rfm.*` for content rules. The `ltv_*`
    # columns are null when only RFM could be given (too few repeat buyers).
    Column("tenant_id", String(40), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    Column("fitted_at", UtcDateTime(), nullable=False),
    Column("model", String(32), nullable=False),
    Column("p_alive", Float, nullable=True),
    Column("purchases_90", Float, nullable=True),
    Column("purchases_365", Float, nullable=True),
    Column("value_per_purchase", Float, nullable=True),
    Column("clv", Float, nullable=True),
    Column("rfm_recency", Integer, nullable=False),
    Column("rfm_frequency", Integer, nullable=False),
    Column("rfm_monetary", Integer, nullable=False),
)

journey_days = Table(
    "journey_days",
    metadata,
    # The daily aggregate of journeys (services/analytics.py): per day a journey ended, per
    # distinct path (labels and ages, JSON), how many converted, did not, and the net value.
    # `setup` identifies the lookback and grouping the day was computed with; rows of another
    # setup are ignored and replaced.
    Column("tenant_id", String(40), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("setup", String(16), primary_key=True),
    Column("path_no", Integer, primary_key=True),
    Column("path", JSON, nullable=False),
    Column("conversions", Float, nullable=False),
    Column("nulls", Float, nullable=False),
    Column("value", Float, nullable=False),
)


# --- issue 19: annotations' revisions, console staff, preferred channel, segments ----------

annotation_revisions = Table(
    "annotation_revisions",
    metadata,
    # Every state an annotation had, the first included: what was written, by whom, when.
    Column("tenant_id", String(40), primary_key=True),
    Column("annotation_id", String(40), primary_key=True),
    Column("revision", Integer, primary_key=True, autoincrement=False),
    Column("action", String(16), nullable=False),  # created | edited | deleted
    Column("text", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("visibility", String(16), nullable=False),
    Column("pinned", Boolean, nullable=False),
    Column("expires_at", UtcDateTime(), nullable=True),
    Column("editor", String(100), nullable=False),
    Column("editor_department", String(32), nullable=False),
    Column("reason", Text, nullable=True),
    Column("edited_at", UtcDateTime(), nullable=False),
)

staff_members = Table(
    "staff_members",
    metadata,
    # A console key: an API key (its secret kept only hashed in api_keys) of one person of a
    # department, with the role that decides what she may change (services/annotations.py).
    Column("key_id", String(40), primary_key=True),
    Column("tenant_id", String(40), nullable=False),
    Column("name", String(100), nullable=False),
    Column("department", String(32), nullable=False),
    Column("role", String(16), nullable=False),  # agent | lead | admin
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_staff_members_tenant", "tenant_id"),
)

preference_declarations = Table(
    "preference_declarations",
    metadata,
    # Append-only: the customer's declared preferred channel, latest wins; channel None clears
    # it. Follows merges and splits like events (customer_id / origin_customer_id).
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), nullable=False),
    Column("origin_customer_id", String(40), nullable=False),
    Column("channel", String(16), nullable=True),
    Column("declared_via", String(16), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("declared_at", UtcDateTime(), nullable=False),
    Index("ix_preference_declarations_customer", "tenant_id", "customer_id", "declared_at"),
    Index("ix_preference_declarations_origin", "tenant_id", "origin_customer_id"),
)

segments = Table(
    "segments",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("condition", JSON, nullable=False),  # omnisdk.core.conditions, over the profile
    Column("version", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # The version whose backfill finished (None: none yet); membership is complete from then.
    Column("backfilled_version", Integer, nullable=True),
    # When it last finished: a segment over attributes that change with time alone is
    # evaluated again over everyone once `segment_refresh_hours` have passed (migration 0021).
    Column("backfilled_at", UtcDateTime(), nullable=True),
    # The backfill under way: which process claimed it (and when), how far it got.
    Column("backfill_claimed_at", UtcDateTime(), nullable=True),
    Column("backfill_done", Integer, nullable=False, server_default="0"),
    Column("backfill_total", Integer, nullable=False, server_default="0"),
    UniqueConstraint("tenant_id", "name", name="uq_segments_tenant_name"),
)

segment_members = Table(
    "segment_members",
    metadata,
    # One row per customer ever in the segment: exited_at None while she is in it.
    Column("tenant_id", String(40), primary_key=True),
    Column("segment_id", String(40), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    Column("entered_at", UtcDateTime(), nullable=False),
    Column("exited_at", UtcDateTime(), nullable=True),
    Index("ix_segment_members_customer", "tenant_id", "customer_id"),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    # A staff member signed in to the console: the cookie is a random token, kept here only
    # as its SHA-256 (a stolen database opens no session); every process reads the same row.
    Column("token_sha256", String(64), primary_key=True),
    Column("tenant_id", String(40), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_console_sessions_expires", "expires_at"),
)

segment_pending = Table(
    "segment_pending",
    metadata,
    # Customers whose profile changed since their segments were last evaluated: the write
    # that changed it adds a row (cheap), the evaluator in every server process drains them.
    Column("tenant_id", String(40), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    Column("queued_at", UtcDateTime(), nullable=False),
)

# --- inventory, stock alerts and messages (issue 20; migration 0019) --------------------------

inventory_items = Table(
    "inventory_items",
    metadata,
    # An item is a SKU with its variant options (omnisdk.core.cart.line_key): "TR2|size=38".
    Column("tenant_id", String(40), primary_key=True),
    Column("item", String(200), primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("price", Float, nullable=True),
    Column("currency", String(3), nullable=True),
    Column("low_stock_threshold", Integer, nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)

inventory_levels = Table(
    "inventory_levels",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("item", String(200), primary_key=True),
    Column("location", String(64), primary_key=True),
    # "online" (a warehouse serving web and app orders) or "store": never summed together.
    Column("kind", String(8), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

inventory_ops = Table(
    "inventory_ops",
    metadata,
    # Stock deltas already applied, by the writer's operation id: a retry applies nothing.
    Column("tenant_id", String(40), primary_key=True),
    Column("op_id", String(100), primary_key=True),
    Column("applied_at", UtcDateTime(), nullable=False),
    Index("ix_inventory_ops_applied_at", "applied_at"),
)

alert_subscriptions = Table(
    "alert_subscriptions",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), nullable=False),
    Column("origin_customer_id", String(40), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("item", String(200), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("store_id", String(64), nullable=True),
    Column("min_quantity", Integer, nullable=False),
    # waiting → queued (a message is enqueued) → notified (sent); or cancelled.
    Column("status", String(12), nullable=False),
    Column("consent_decision_id", String(40), nullable=True),
    Column("channel", String(16), nullable=False),
    Column("price_seen", Float, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("notified_at", UtcDateTime(), nullable=True),
    Index("ix_alert_subscriptions_item", "tenant_id", "item", "kind", "status", "created_at"),
    Index("ix_alert_subscriptions_customer", "tenant_id", "customer_id"),
)

alert_messages = Table(
    "alert_messages",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    # omnisdk.core.notifications.message_key(rule, customer, item, window): one message each.
    Column("idempotency_key", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("customer_id", String(40), nullable=False),
    Column("origin_customer_id", String(40), nullable=False),
    Column("item", String(200), nullable=True),
    Column("sku", String(64), nullable=True),
    Column("subscription_id", String(40), nullable=True),
    # pending (decided when due) → sending (claimed, leased) → sent | retry | skipped | failed
    Column("status", String(8), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("channel", String(8), nullable=True),
    Column("consent_decision_id", String(40), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("due_at", UtcDateTime(), nullable=False),
    Column("lease_until", UtcDateTime(), nullable=True),
    Column("lease_token", String(32), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("decided_at", UtcDateTime(), nullable=True),
    Column("sent_at", UtcDateTime(), nullable=True),
    Column("data", JSON, nullable=False),
    UniqueConstraint("tenant_id", "idempotency_key", name="uq_alert_messages_key"),
    Index("ix_alert_messages_due", "status", "due_at"),
    Index("ix_alert_messages_customer", "tenant_id", "customer_id", "decided_at"),
    Index("ix_alert_messages_kind", "tenant_id", "kind", "status"),
    Index("ix_alert_messages_subscription", "tenant_id", "subscription_id", "created_at"),
)

alert_restocks = Table(
    "alert_restocks",
    metadata,
    # A restock being paced: the next batch of waiting subscribers is notified at `next_at`.
    Column("tenant_id", String(40), primary_key=True),
    Column("item", String(200), primary_key=True),
    Column("store_key", String(64), primary_key=True),  # "" for online stock
    Column("next_at", UtcDateTime(), nullable=False),
    Column("batches", Integer, nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Index("ix_alert_restocks_next_at", "next_at"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("id", String(40), primary_key=True),
    Column("url", String(2000), nullable=False),
    Column("kinds", JSON, nullable=False),
    # The Standard Webhooks signing secret, sealed with the server's secret key (AES-GCM).
    Column("sealed_secret", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("disabled_at", UtcDateTime(), nullable=True),
)

history_folds = Table(
    "history_folds",
    metadata,
    # Merged customers whose events are still to be folded into the survivor's id, in the
    # background (services/history_folds.py).
    Column("tenant_id", String(40), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    Column("queued_at", UtcDateTime(), nullable=False),
    Index("ix_history_folds_queued", "queued_at"),
)

recommendation_orders = Table(
    "recommendation_orders",
    metadata,
    # The orders whose basket is in recommendation_pairs, one row per order id (migration
    # 0030): the first `order_completed` of an order claims it in the transaction that adds
    # its counts, so a second event of the same order (the shop's own beside the server's)
    # adds nothing, however many builds read it. An id longer than the column is kept by its
    # SHA-256 (services/recommendations.py).
    Column("tenant_id", String(40), primary_key=True),
    Column("order_id", String(200), primary_key=True),
)
