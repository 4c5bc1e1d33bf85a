"""Tenants' identifier secrets (the HMAC key of e-mail and phone hashes) are sealed at rest
with the server's secret key, like signing keys: a copy of the database alone no longer lets
anyone test guessed addresses against the stored hashes.

Existing rows are sealed here, with the secret key `serve` uses (`OMNISDK_SECRET_KEY`, else
`OMNISDK_SECRET_KEY_FILE`): run `omnisdk-server migrate` where the server runs. A raw secret is
32 bytes; a sealed one is 60 (nonce, ciphertext, tag).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from server_stub.sealing import Sealer, sealer_from
from server_stub.services.tenants import identifier_secret_context
from server_stub.settings import Settings

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

RAW_BYTES = 32

tenants = sa.table(
    "tenants", sa.column("id", sa.String()), sa.column("identifier_secret", sa.LargeBinary())
)


Convert = Callable[[Sealer, bytes, str], bytes | None]


def _rewrite(convert: Convert) -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(tenants.c.id, tenants.c.identifier_secret)).all()
    if not rows:
        return  # a new database: no secret key needed
    sealer = sealer_from(Settings())
    for row in rows:
        value = convert(sealer, bytes(row.identifier_secret), identifier_secret_context(row.id))
        if value is not None:
            connection.execute(
                tenants.update().where(tenants.c.id == row.id).values(identifier_secret=value)
            )


def upgrade() -> None:
    _rewrite(
        lambda sealer, raw, context: sealer.seal(raw, context) if len(raw) == RAW_BYTES else None
    )


def downgrade() -> None:
    _rewrite(
        lambda sealer, sealed, context: sealer.unseal(sealed, context)
        if len(sealed) != RAW_BYTES
        else None
    )
