"""PostgreSQL: change-feed positions handed out inside COMMIT, by a deferred trigger.

Until now a writer numbered its changes with a statement of its own just before COMMIT and
held its tenant's counter row from that statement's answer until COMMIT had been sent, flushed
and answered: under load, a wait for the event loop and two network round trips per
transaction, during which every other writer of the tenant queued (two server processes ran
fewer cart operations per second than one). Now changes are inserted with a provisional,
negative position, and a constraint trigger deferred to COMMIT numbers them: the counter row
is locked only while PostgreSQL itself commits. Positions still follow commit order per tenant
(docs/server.md, "Change feed ordering"); nobody ever sees a provisional position, since the
rows become visible only once numbered. SQLite, one writer at a time, keeps numbering in
Python.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

NUMBER_AT_COMMIT = """
CREATE FUNCTION omnisdk_number_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    taken bigint;
BEGIN
    INSERT INTO change_positions (tenant_id, position, pruned_through)
    VALUES (NEW.tenant_id, 1, 0)
    ON CONFLICT (tenant_id) DO UPDATE SET position = change_positions.position + 1
    RETURNING position INTO taken;
    UPDATE changes SET position = taken
    WHERE tenant_id = NEW.tenant_id AND position = NEW.position;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE SEQUENCE change_provisional")
    op.execute(NUMBER_AT_COMMIT)
    op.execute(
        "CREATE CONSTRAINT TRIGGER changes_numbered_at_commit AFTER INSERT ON changes "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.position < 0) "
        "EXECUTE FUNCTION omnisdk_number_change()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER changes_numbered_at_commit ON changes")
    op.execute("DROP FUNCTION omnisdk_number_change()")
    op.execute("DROP SEQUENCE change_provisional")
