"""examples/till_sale.py, the example for POS integrators, against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omnisdk.testing import ReferenceServer

ROOT = Path(__file__).resolve().parents[2]


def run_example(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "till_sale.py"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_till_example_links_a_sale_by_her_code_and_sells_without_one(tmp_path: Path) -> None:
    with ReferenceServer() as server:
        shop = server.create_tenant("till example")
        with shop.client("app") as app:
            amy = app.identity.identify(anonymous_id="till-example-amy").customer_id
            app.consent.grant(amy, "analytics")
            code = app.orders.customer_code(amy).code
        env = {
            "OMNISDK_URL": server.url,
            "OMNISDK_POS_KEY": shop.key("pos"),
            "OMNISDK_DATA_DIR": str(tmp_path / "till"),
        }
        linked = run_example(env, "RCPT-1", code)
        offline = run_example({**env, "OMNISDK_URL": "http://127.0.0.1:9"}, "RCPT-3", code)
        plain = run_example(env, "RCPT-2")  # online again: the kept sale goes out too
        with shop.client("pos") as till:
            mine = [order.reference for order in till.orders.of_customer(amy)]
            unlinked = till.orders.get("RCPT-2")
    assert "Customer code accepted" in linked and "added to her account" in linked
    assert "Customer code accepted" in offline and "kept on the till" in offline
    assert "added to no account" in plain
    assert sorted(mine) == ["RCPT-1", "RCPT-3"]
    assert unlinked.customer_id is None and unlinked.total == 168.8
