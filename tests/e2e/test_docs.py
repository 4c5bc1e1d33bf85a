"""The examples of docs/sdk.md run, in order, against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from omnisdk.testing import ReferenceServer

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_sdk_guide_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(DOCS / "sdk.md")
    assert len(blocks) >= 8
    with ReferenceServer() as server:
        shop = server.create_tenant("docs shop")
        monkeypatch.setenv("OMNISDK_URL", server.url)
        for channel in ("web", "app", "pos", "admin"):
            monkeypatch.setenv(f"OMNISDK_{channel.upper()}_KEY", shop.key(channel))
        namespace: dict[str, object] = {"__name__": "docs_example"}
        for number, block in enumerate(blocks, start=1):
            try:
                exec(compile(block, f"docs/sdk.md block {number}", "exec"), namespace)
            except Exception as error:
                pytest.fail(f"docs/sdk.md example {number} failed: {error!r}\n{block}")
