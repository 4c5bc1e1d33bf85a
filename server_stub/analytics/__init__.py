"""Attribution and lifetime value: pure models over aggregated data, no I/O.

numpy and scipy come with the server's `analytics` extra and are imported only by the modules
that need them, so a server without the extra still starts; `require_numeric()` tells a caller
(an endpoint, the CLI) whether they are there, with a message that says how to get them.
"""

from __future__ import annotations

import importlib.util


class AnalyticsUnavailable(RuntimeError):
    """numpy or scipy is missing: install the server with the `analytics` extra."""


def require_numeric() -> None:
    """Raise `AnalyticsUnavailable` unless numpy and scipy can be imported."""
    missing = [name for name in ("numpy", "scipy") if importlib.util.find_spec(name) is None]
    if missing:
        raise AnalyticsUnavailable(
            f"{' and '.join(missing)} not installed: install the server with "
            "`pip install 'omnisdk[server,analytics]'` to use attribution and lifetime value"
        )
