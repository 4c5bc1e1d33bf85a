"""What the station makes of what a scanner typed, and of a review's amounts (pure rules)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from server_stub.pos.scans import ScanKind, kind_of, scan_in_fields
from server_stub.pos.tills import LineView, Review


@pytest.mark.parametrize(
    ("typed", "kind"),
    [
        ("RT1:6BF$2", ScanKind.RETURN_CODE),
        ("  rt1:6bf$2 \n", ScanKind.RETURN_CODE),  # a wedge that lower-cases and pads
        ("5901234123457", ScanKind.PRODUCT_BARCODE),  # EAN-13
        ("96385074", ScanKind.PRODUCT_BARCODE),  # EAN-8
        ("https://shop.example/p/42", ScanKind.URL),
        ("www.shop.example", ScanKind.URL),
        ("hello", ScanKind.OTHER),
        ("   ", ScanKind.NOTHING),
    ],
)
def test_a_scan_is_told_apart_by_its_text(typed: str, kind: ScanKind) -> None:
    assert kind_of(typed) is kind


def test_a_scan_typed_into_the_order_form_is_found_and_numbers_are_not() -> None:
    assert scan_in_fields([("qty-1", "2"), ("amount", "1234.56")]) is None
    assert scan_in_fields([("qty-1", "-1"), ("qty-2", "1000")]) is None
    assert scan_in_fields([("qty-1", "0RT1:ABC+DEF")]) == "0RT1:ABC+DEF"
    assert scan_in_fields([("amount", "RT1:ABC")]) == "RT1:ABC"
    assert scan_in_fields([("amount", "5901234123457")]) == "5901234123457"


def line(line_id: str, price: float | None) -> LineView:
    return LineView(line_id, f"SKU-{line_id}", None, 3, 3, price)


def test_a_review_totals_the_shop_prices_unless_the_till_is_offline() -> None:
    online = Review(
        "t-1",
        "RT1:X",
        "A1",
        {"1": 2, "2": 1},
        "card",
        (line("1", 89.0), line("2", 12.5)),
        "EUR",
        None,
    )
    assert online.total == 190.5 and online.refund == 190.5
    offline = Review("t-2", "RT1:X", "A1", {"1": 1}, "cash", (line("1", None),), None, 80.0)
    assert offline.total is None and offline.refund == 80.0


@pytest.mark.parametrize("on_disk", [False, True])
def test_an_enrolment_code_works_once_and_not_after_it_expires(
    on_disk: bool, tmp_path: Path
) -> None:
    from server_stub.pos.enrolment import Enrolments

    folder = tmp_path / "enrolments" if on_disk else None
    enrolments = Enrolments(seconds=60, folder=folder)
    offered = enrolments.offer("admin-key", "s-1", "t-1")
    assert offered.code.startswith("EN1:") and len(offered.code) == 36
    assert enrolments.take(f"  {offered.code.lower()} ") == offered  # a wedge lower-cases
    assert enrolments.take(offered.code) is None  # used
    enrolments.restore(offered)  # its sign-in failed: it may be scanned again
    assert enrolments.take(offered.code) == offered
    short_lived = Enrolments(seconds=0, folder=folder)
    expired = short_lived.offer("admin-key", "s-1", "t-1")
    assert short_lived.take(expired.code) is None


def test_an_enrolment_shown_by_one_station_process_is_taken_by_another_once(
    tmp_path: Path,
) -> None:
    from server_stub.pos.enrolment import Enrolments

    shown_by, scanned_at = Enrolments(folder=tmp_path), Enrolments(folder=tmp_path)
    offered = shown_by.offer("osk_admin_secret", "s-1", "t-1")
    stored = b"".join(file.read_bytes() for file in tmp_path.iterdir())
    assert b"osk_admin_secret" not in stored and offered.code.encode() not in stored
    assert all(stat.S_IMODE(file.stat().st_mode) == 0o600 for file in tmp_path.iterdir())
    assert scanned_at.take("EN1:" + "A" * 32) is None  # a guess opens nothing
    assert scanned_at.take(offered.code) == offered
    assert shown_by.take(offered.code) is None and list(tmp_path.iterdir()) == []
    foreign = tmp_path / "outbox.sqlite3"  # e.g. a till folder of the older layout
    foreign.write_bytes(b"pending returns")
    os.utime(foreign, (0, 0))
    Enrolments(seconds=1, folder=tmp_path).offer("admin-key", "s-1", "t-1")
    assert foreign.exists()  # only what the station sealed is ever deleted


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a hundred bytes whose header claims `width` by `height` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_a_photo_claiming_billions_of_pixels_is_refused_in_words() -> None:
    import pytest

    from server_stub.pos.photos import UnreadablePhoto, read_return_code

    for width in (7_000, 30_000, 65_000):  # over our limit, over Pillow's, far over it
        with pytest.raises(UnreadablePhoto, match="too large"):
            read_return_code(png_claiming(width, width))


@pytest.mark.parametrize(
    ("typed", "language", "amount"),
    [
        ("89.00", "en", 89.0),
        ("1,234.50", "en", 1234.5),
        ("1,234", "en", 1234.0),  # never 1.234
        ("89,00", "pl", 89.0),
        ("89.00", "pl", 89.0),
        ("1 234,50", "pl", 1234.5),  # a plain space where Polish writes a no-break space
        ("1\u00a0234,50", "pl", 1234.5),
        ("1.234", "pl", None),  # three decimals: a misread thousand, not 1.234 zł
        ("89,00", "en", None),
        ("0", "en", None),
        ("-5", "en", None),
        ("nan", "en", None),
        ("1e5", "en", None),
        ("\uff11\uff12", "en", None),  # full-width digits
        ("2000000", "en", None),  # over the most a till refunds
        ("", "pl", None),
    ],
)
def test_an_offline_amount_is_read_as_the_stores_locale_writes_money(
    typed: str, language: str, amount: float | None
) -> None:
    from server_stub.pos.orders import amount_of

    assert amount_of(typed, language) == amount
