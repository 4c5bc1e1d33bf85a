"""Till enrolment by QR against `omnisdk-server serve`: the till's key is made only when the
code is scanned, so an enrolment code nobody scans leaves no key on the server."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import zxingcpp
from PIL import Image, ImageDraw

from omnisdk.testing import ServerProcess, TestTenant

MODULE = re.compile(r"M([\d.]+),([\d.]+)H([\d.]+)V([\d.]+)")


def pos_keys(shop: TestTenant) -> list[str]:
    with shop.client("admin") as admin:
        return [key.name for key in admin.keys.list() if key.channel == "pos"]


def enrolment_code(page: str) -> str:
    """The code shown on the admin's screen, read back from its QR image as a till would."""
    image = Image.new("L", (400, 400), 255)
    draw = ImageDraw.Draw(image)
    for x, y, right, bottom in MODULE.findall(page):
        box = [float(v) * 10 for v in (x, y, right, bottom)]
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=0)
    (read,) = zxingcpp.read_barcodes(image)
    return str(read.text)


def show_enrolment_code(http: httpx.Client, shop: TestTenant, till_id: str) -> str:
    form = {"admin_key": shop.key("admin"), "store_id": "s-1", "till_id": till_id}
    page = http.post("/pos/enrol", data=form)
    assert page.status_code == 200, page.text
    return enrolment_code(page.text)


def test_a_till_key_is_made_when_the_code_is_scanned_and_not_before(
    server_process: ServerProcess,
) -> None:
    shop = server_process.create_tenant()
    before = pos_keys(shop)
    with httpx.Client(base_url=server_process.url) as admin_screen:
        code = show_enrolment_code(admin_screen, shop, "till-9")
    assert pos_keys(shop) == before  # shown, not scanned: no key exists
    with httpx.Client(base_url=server_process.url) as till:
        signed_in = till.post("/pos/login/enrol", data={"code": f" {code.lower()} "})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/pos/returns"
        assert till.get("/pos/returns").status_code == 200
    assert pos_keys(shop) == [*before, "till s-1/till-9 (enrolment)"]
    with httpx.Client(base_url=server_process.url) as again:  # single use
        assert again.post("/pos/login/enrol", data={"code": code}).status_code == 422
    assert len(pos_keys(shop)) == len(before) + 1


def test_an_enrolment_needs_a_key_that_may_make_till_keys(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    till_key = shop.key("pos")
    before = pos_keys(shop)
    with httpx.Client(base_url=server_process.url) as http:
        form = {"store_id": "s-1", "till_id": "t-1"}
        as_till = http.post("/pos/enrol", data={**form, "admin_key": till_key})
        assert as_till.status_code == 403 and "Use an admin key" in as_till.text
        wrong = http.post("/pos/enrol", data={**form, "admin_key": "osk_admin_00_nope"})
        assert wrong.status_code == 401
    assert pos_keys(shop) == before


def test_a_code_shown_by_one_station_process_enrols_a_till_at_another(tmp_path: Path) -> None:
    """As under `uvicorn --workers 2`: the admin's screen and the till reach different ones."""
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    env = {"OMNISDK_POS_DATA_DIR": str(tmp_path / "pos")}
    with ServerProcess(url, env=env) as first:
        shop = first.create_tenant()
        with ServerProcess(url, env=env, secret_key=first.secret_key) as second:
            with httpx.Client(base_url=first.url) as admin_screen:
                code = show_enrolment_code(admin_screen, shop, "till-4")
            with httpx.Client(base_url=second.url) as till:
                signed_in = till.post("/pos/login/enrol", data={"code": code})
                assert signed_in.status_code == 303
            with httpx.Client(base_url=first.url) as again:
                assert again.post("/pos/login/enrol", data={"code": code}).status_code == 422
        assert pos_keys(shop) == ["till s-1/till-4 (enrolment)"]
