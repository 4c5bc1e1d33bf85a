"""The examples of docs/sdk.md run, in order, against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from omnisdk.testing import ReferenceServer

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize(
    ("page", "at_least"),
    [
        ("sdk.md", 8),
        ("returns.md", 2),
        ("pos.md", 1),
        ("outbox.md", 1),
        ("carts.md", 4),
        ("consent.md", 4),
        ("content.md", 3),
        ("console.md", 3),
        ("orders.md", 4),
        ("notifications.md", 5),
    ],
)
def test_guide_examples_run(monkeypatch: pytest.MonkeyPatch, page: str, at_least: int) -> None:
    # A block with a line of just "..." is an illustration with gaps; the rest must run.
    blocks = [b for b in python_blocks(DOCS / page) if "\n...\n" not in f"\n{b}"]
    assert len(blocks) >= at_least
    with ReferenceServer() as server:
        shop = server.create_tenant("docs shop")
        monkeypatch.setenv("OMNISDK_URL", server.url)
        for channel in ("web", "app", "pos", "admin"):
            monkeypatch.setenv(f"OMNISDK_{channel.upper()}_KEY", shop.key(channel))
        namespace: dict[str, object] = {"__name__": "docs_example"}
        for number, block in enumerate(blocks, start=1):
            try:
                exec(compile(block, f"docs/{page} block {number}", "exec"), namespace)
            except Exception as error:
                pytest.fail(f"docs/{page} example {number} failed: {error!r}\n{block}")
