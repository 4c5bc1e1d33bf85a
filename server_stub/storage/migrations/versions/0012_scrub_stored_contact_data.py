"""Rows written before the strict JSON policy and the contact-data rule are brought under them:

- a lone surrogate or NUL in stored JSON (SQLite kept them; reading one back failed every
  later profile, timeline and export of the customer with a 500) becomes U+FFFD (or is
  dropped, for NUL);
- an e-mail address or phone number in event properties, traits, session documents, change
  payloads or merge snapshots, by name or by shape, becomes its keyed hash (`email#<hex>`),
  as `omnisdk.core.identifiers.hashed_contact_data` stores new ones.

Only rows whose text can hold either are read (a LIKE filter), so a large events table is
scanned once by the database, not loaded. Needs the server's secret key when such rows exist
(the tenants' identifier secrets are sealed, 0011): run `omnisdk-server migrate` where the
server runs.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

from omnisdk.core.identifiers import hashed_contact_data
from omnisdk.core.strict_json import bad_value
from server_stub.sealing import Sealer, sealer_from
from server_stub.services.tenants import unseal_identifier_secret
from server_stub.settings import Settings

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# (table, its key columns, the JSON column), as they are at this revision.
SCRUBBED = (
    ("events", ("seq",), "properties"),
    ("customers", ("tenant_id", "id"), "traits"),
    ("sessions", ("tenant_id", "customer_id"), "document"),
    ("changes", ("tenant_id", "position"), "payload"),
    ("merges", ("tenant_id", "id"), "snapshot"),
)
# What the JSON text of a row holds when it may need scrubbing (case-insensitive). Only
# SQLite could store a lone surrogate (as a \u escape); PostgreSQL refused them.
MARKS = ("%@%", "%+%", '%"00%', "%phone%", "%mobile%")
SQLITE_MARKS = (*MARKS, "%\\u%")

tenants = sa.table(
    "tenants", sa.column("id", sa.String()), sa.column("identifier_secret", sa.LargeBinary())
)


def _storable(value: Any) -> Any:
    if isinstance(value, dict):
        return {_storable(key): _storable(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_storable(child) for child in value]
    if isinstance(value, str) and bad_value(value) is not None:
        text = value.replace("\x00", "")
        return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)
    return value


class _Secrets:
    """Tenants' identifier secrets, unsealed on first use (a database without such rows needs
    no secret key)."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self._sealer: Sealer | None = None
        self._secrets: dict[str, bytes] = {}

    def of(self, tenant_id: str) -> bytes:
        if tenant_id not in self._secrets:
            self._sealer = self._sealer or sealer_from(Settings())
            sealed = self.connection.execute(
                sa.select(tenants.c.identifier_secret).where(tenants.c.id == tenant_id)
            ).scalar_one()
            self._secrets[tenant_id] = unseal_identifier_secret(
                self._sealer, tenant_id, bytes(sealed)
            )
        return self._secrets[tenant_id]


def upgrade() -> None:
    connection = op.get_bind()
    secrets = _Secrets(connection)
    marks = SQLITE_MARKS if connection.dialect.name == "sqlite" else MARKS
    for table_name, key_names, name in SCRUBBED:
        table = sa.table(
            table_name,
            *(sa.column(key) for key in {*key_names, "tenant_id"}),
            sa.column(name, sa.JSON()),
        )
        text = sa.cast(table.c[name], sa.Text())
        suspect = sa.or_(*(text.ilike(mark) for mark in marks))
        rows = connection.execute(sa.select(table).where(suspect)).all()
        for row in rows:
            stored = row._mapping[name]
            value = json.loads(stored) if isinstance(stored, str) else stored
            scrubbed = hashed_contact_data(_storable(value), secrets.of(row.tenant_id))
            if scrubbed != value:
                where = [table.c[key] == row._mapping[key] for key in key_names]
                connection.execute(table.update().where(*where).values({name: scrubbed}))


def downgrade() -> None:
    pass  # a keyed hash cannot be turned back into the address, nor U+FFFD into what it was
