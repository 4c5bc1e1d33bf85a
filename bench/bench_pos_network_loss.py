"""The return station when the network silently drops packets (issue 17): how long a clerk
waits for a scan, a page, a review and a confirm.

The station (a POS backend with a data_dir, the default 3 s timeout) talks to a real
`omnisdk-server serve` through a proxy that, once switched, takes every request and never
answers: no refusal, no reset, as a dead Wi-Fi does. Each figure is one request of a clerk's
sequence, timed at the HTTP client (the browser's view). Before issue 17 the same sequence took
11 s for a scan, 10 s for every page load and 20 s for a confirm. For information: the goal is
the station's timeout for the first request that meets the lost network, and no wait after.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from bench.report import Figure
from omnisdk.testing import ServerProcess, free_port
from server_stub.pos import StationConfig, create_station
from tests.fault_proxy import FaultProxy

TIMEOUT = 3.0
BEFORE = {"first scan after the loss": 11.0, "page load": 10.0, "confirm": 20.0}  # issue 17
SHOES = [{"line_id": "1", "sku": "TR2-38", "quantity": 2, "unit_price": 89.0}]


def _serve(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


def _hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, name
    return found.group(1)


def _timed(step: str, call: object) -> tuple[str, float, httpx.Response]:
    started = time.perf_counter()
    answer = call()  # type: ignore[operator]
    return step, time.perf_counter() - started, answer


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        with ServerProcess(f"sqlite:///{folder / 'shop.sqlite3'}") as shop_server:
            shop = shop_server.create_tenant("Network loss")
            with shop.client("web") as web:
                first = web.returns.issue("NL-1", SHOES, refund_methods=["card"]).token
                second = web.returns.issue("NL-2", SHOES, refund_methods=["card"]).token
            with FaultProxy(shop_server.url) as proxy:
                app = FastAPI()
                config = StationConfig(
                    server_url=proxy.url, data_dir=folder / "tills", timeout=TIMEOUT
                )
                app.mount("/pos", create_station(config))
                server, thread, url = _serve(app)
                try:
                    steps = _clerk(url, shop.key("pos"), proxy, first, second)
                finally:
                    server.should_exit = True
                    thread.join(10)
    goals = {"first scan after the loss": TIMEOUT + 0.5}
    return [
        Figure(
            name=f"station, network blackholed: {step}",
            ours=seconds * 1000,
            peer=BEFORE.get(step, 0.0) * 1000,
            peer_name="main before issue 17 (as filed)",
            unit="ms",
            ratio=seconds / BEFORE[step] if step in BEFORE else 0.0,
            goal=f"≤ {goals.get(step, 0.5) * 1000:,.0f} ms",
            met=seconds <= goals.get(step, 0.5),
        )
        for step, seconds in steps
    ]


def _clerk(
    url: str, key: str, proxy: FaultProxy, first: str, second: str
) -> list[tuple[str, float]]:
    with httpx.Client(base_url=url, follow_redirects=True, timeout=60) as http:
        http.post("/pos/login", data={"api_key": key, "store_id": "s-1", "till_id": "t-1"})
        csrf = _hidden(http.get("/pos/returns").text, "csrf")
        proxy.blackhole.set()
        figures = []
        for step, call in [
            (
                "first scan after the loss",
                lambda: http.post("/pos/returns/scan", data={"csrf": csrf, "code": first}),
            ),
            ("page load", lambda: http.get("/pos/returns")),
            (
                "next scan",
                lambda: http.post("/pos/returns/scan", data={"csrf": csrf, "code": second}),
            ),
            (
                "review",
                lambda: http.post(
                    "/pos/returns/review",
                    data={
                        "csrf": csrf,
                        "token": second,
                        "qty-1": "1",
                        "refund_method": "card",
                        "amount": "89",
                    },
                ),
            ),
        ]:
            name, seconds, answer = _timed(step, call)
            figures.append((name, seconds))
        transaction = _hidden(answer.text, "transaction")
        name, seconds, receipt = _timed(
            "confirm",
            lambda: http.post(
                "/pos/returns/confirm", data={"csrf": csrf, "transaction": transaction}
            ),
        )
        assert "PENDING" in receipt.text
        figures.append((name, seconds))
        name, seconds, _ = _timed("receipt page load", lambda: http.get(str(receipt.url)))
        figures.append((name, seconds))
        return figures


if __name__ == "__main__":
    for figure in run():
        print(figure.row())
