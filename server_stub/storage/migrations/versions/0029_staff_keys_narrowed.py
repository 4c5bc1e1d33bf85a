"""Console staff keys lose `identity:write` and `returns:issue`.

A staff key carried both, so an agent could sign a return code for an order of any lines she
made up (`POST /v1/returns`), which any till redeems for a refund, or link her own device to a
customer's e-mail (`identify`), merging it into that customer. The console needs neither
through the API: it calls the services it uses itself. Declaring a customer's preferred
channel now asks for `profile:annotate`, which staff keys keep (services/staff.py).

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

TAKEN = ("identity:write", "returns:issue")


def upgrade() -> None:
    bind = op.get_bind()
    keys = sa.table("api_keys", sa.column("key_id", sa.String), sa.column("scopes", sa.JSON))
    staff = sa.table("staff_members", sa.column("key_id", sa.String))
    rows = bind.execute(
        sa.select(keys.c.key_id, keys.c.scopes).where(keys.c.key_id.in_(sa.select(staff.c.key_id)))
    ).all()
    for key_id, scopes in rows:
        if scopes is None:  # the channel's defaults (not a key the console made): leave it
            continue
        kept = [scope for scope in scopes if scope not in TAKEN]
        if kept != scopes:
            bind.execute(sa.update(keys).where(keys.c.key_id == key_id).values(scopes=kept))


def downgrade() -> None:
    pass  # the scopes taken are not given back
