"""JSON Merge Patch (RFC 7396): how a partial update of a document is
written and applied. Pure; used by the SDK to build patches and by the server to apply them."""

from __future__ import annotations

from typing import Any

MEDIA_TYPE = "application/merge-patch+json"


def apply(target: Any, patch: Any) -> Any:
    """`target` with `patch` applied (RFC 7396 section 2): an object merges member by member,
    `null` removes a member, anything else replaces the value whole (arrays included)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = apply(result.get(name), value)
    return result
