"""Headless Chromium (Debian's) driven by Playwright, against real servers on free ports.

Without /usr/bin/chromium these tests skip with a reason, unless OMNISDK_REQUIRE_BROWSER is
set (CI sets it, and installs chromium first), in which case they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]


# Module scope: Playwright's sync API marks an event loop as running in this thread while it is
# open, which would stop the asyncio-based tests that run after the browser tests.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("OMNISDK_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing and OMNISDK_REQUIRE_BROWSER is set")
        pytest.skip(
            f"browser tests skipped: {CHROMIUM} is not installed (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a test saves its screenshots (also copied to test-output/ for a human to look)."""
    keep = Path(__file__).resolve().parents[2] / "test-output" / "browser" / request.node.name
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    return keep


class ServedApp:
    """An ASGI app served by uvicorn in a thread on a free 127.0.0.1 port, for a browser."""

    def __init__(self, app: Any) -> None:
        from omnisdk.testing import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None)
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ServedApp:
        self._thread.start()
        while not self._server.started:
            threading.Event().wait(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


SERIOUS = {"serious", "critical"}


def accessible(page: Any, where: str) -> None:
    """axe-core finds nothing serious or critical on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    found = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in SERIOUS
    ]
    assert found == [], (where, found)


def hosting(station: Any) -> Any:
    """A shop's POS backend mounting `station` at /pos, closing it as a host must (Starlette
    runs no lifespan of a mounted app)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from server_stub.pos import close_station

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        await close_station(station)

    host = FastAPI(lifespan=lifespan)
    host.mount("/pos", station)
    return host
