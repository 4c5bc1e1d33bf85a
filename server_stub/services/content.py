"""Content rulesets and recommendation models on the server.

A ruleset is validated by the same compiler the SDK decides with (omnisdk.core.content), so a
ruleset that was saved can always be evaluated: bad conditions are refused here, never met at
decision time. Every version is kept with who published it; the newest is served with an ETag
so that SDKs re-download only what changed. Publishing tells SDKs on the change feed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import recs
from omnisdk.core.content import validate_ruleset
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    RecommendationModel,
    RulesetHistory,
    RulesetIn,
    RulesetVersion,
    RulesetVersionInfo,
)
from server_stub.errors import Problem
from server_stub.ids import utcnow
from server_stub.services import audit, changes, named_locks
from server_stub.storage.tables import content_rulesets, recommendation_models


def etag_of(document: Any) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"'


def _version(row: Any, with_slots: bool = True) -> RulesetVersion | RulesetVersionInfo:
    info = {
        "version": row.version,
        "etag": row.etag,
        "created_at": row.created_at,
        "author_key_id": row.author_key_id,
        "note": row.note,
    }
    if with_slots:
        return RulesetVersion(**info, slots=row.document["slots"])
    return RulesetVersionInfo(**info)


async def current(conn: AsyncConnection, tenant_id: str) -> RulesetVersion | None:
    row = (
        await conn.execute(
            select(content_rulesets)
            .where(content_rulesets.c.tenant_id == tenant_id)
            .order_by(content_rulesets.c.version.desc())
            .limit(1)
        )
    ).first()
    return _version(row) if row else None  # type: ignore[return-value]


async def publish(
    conn: AsyncConnection,
    tenant_id: str,
    ruleset: RulesetIn,
    author_key_id: str | None,
    if_match: str | None = None,
) -> RulesetVersion:
    document = {"slots": ruleset.slots}
    errors = validate_ruleset(document)
    if errors:
        raise Problem(
            ProblemType.INVALID_RULESET,
            f"the ruleset has {len(errors)} problem(s); nothing was published",
            errors=errors,
        )
    await named_locks.take(conn, tenant_id, "content_ruleset")  # publishes take turns
    latest = (
        await conn.execute(
            select(content_rulesets.c.version, content_rulesets.c.etag)
            .where(content_rulesets.c.tenant_id == tenant_id)
            .order_by(content_rulesets.c.version.desc())
            .limit(1)
            .with_for_update()
        )
    ).first()
    if if_match is not None and (latest is None or latest.etag != if_match):
        raise Problem(
            ProblemType.CONFLICT,
            "the ruleset was changed since you read it (If-Match does not match its ETag); "
            "read it again and reapply your change",
        )
    version = (latest.version if latest else 0) + 1
    now = utcnow()
    etag = etag_of({"version": version, **document})  # one ETag per version
    row: dict[str, Any] = {
        "tenant_id": tenant_id,
        "version": version,
        "etag": etag,
        "document": document,
        "author_key_id": author_key_id,
        "note": ruleset.note,
        "created_at": now,
    }
    await conn.execute(content_rulesets.insert().values(**row))
    await audit.record(
        conn, tenant_id, author_key_id, "content.publish", f"ruleset v{version}", ruleset.note
    )
    await changes.publish(
        conn, tenant_id, changes.TENANT_WIDE, "content", {"ruleset_version": version}
    )
    return RulesetVersion(
        version=version,
        etag=etag,
        created_at=now,
        author_key_id=author_key_id,
        note=ruleset.note,
        slots=ruleset.slots,
    )


async def history(conn: AsyncConnection, tenant_id: str) -> RulesetHistory:
    rows = await conn.execute(
        select(content_rulesets)
        .where(content_rulesets.c.tenant_id == tenant_id)
        .order_by(content_rulesets.c.version.desc())
    )
    return RulesetHistory(items=[_version(row, with_slots=False) for row in rows])


# --- recommendations --------------------------------------------------------------------------


def model_parts(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "baskets": document.get("baskets", 0),
        "together": document.get("together", {}),
        "popular": document.get("popular", []),
    }


async def recommendation_model(conn: AsyncConnection, tenant_id: str) -> RecommendationModel:
    row = (
        await conn.execute(
            select(recommendation_models).where(recommendation_models.c.tenant_id == tenant_id)
        )
    ).first()
    if row is None:
        empty = recs.build([])
        return RecommendationModel(etag=etag_of(empty), built_at=None, **model_parts(empty))
    return RecommendationModel(etag=row.etag, built_at=row.built_at, **model_parts(row.document))
