"""QR images of return tokens: alphanumeric mode, the right size, and they read back."""

from __future__ import annotations

import png as pypng
import zxingcpp

from omnisdk import qr
from omnisdk.core import tokens
from tests.core.test_tokens import KEYS, KID, NOW, PRIVATE, SHOP, claims


def read_png(data: bytes) -> list[str]:
    """Decode a PNG with zxing-cpp (pypng gives us the pixels)."""
    width, height, rows, info = pypng.Reader(bytes=data).asDirect()
    scale = 255 // (2 ** info["bitdepth"] - 1)
    planes = info["planes"]
    pixels = bytearray()
    for row in rows:
        pixels.extend(value * scale for value in row[::planes])
    buffer = bytes(pixels)  # the view borrows this memory: keep it alive while reading
    view = zxingcpp.ImageView(buffer, width, height, zxingcpp.ImageFormat.Lum)
    # A drawn image holds one upright symbol, dark on light: reading it inverted as well (the
    # default) sometimes found a second, garbled "symbol" in the same pixels.
    found = zxingcpp.read_barcodes(
        view, formats=zxingcpp.BarcodeFormat.QRCode, is_pure=True, try_invert=False
    )
    return [barcode.text for barcode in found]


def test_a_five_line_order_fits_version_10_at_level_m() -> None:
    token = tokens.sign(claims(lines=5), PRIVATE, KID)
    assert qr.version(token, qr.Medium.SCREEN) <= 10


def test_png_reads_back_and_verifies() -> None:
    token = tokens.sign(claims(lines=3), PRIVATE, KID)
    for medium in qr.Medium:
        (text,) = read_png(qr.png(token, medium))
        assert text == token
        assert tokens.verify(text, KEYS, issuer=SHOP, now=NOW).valid


def test_print_uses_more_error_correction_than_screen() -> None:
    token = tokens.sign(claims(lines=2), PRIVATE, KID)
    assert qr.version(token, qr.Medium.PRINT) > qr.version(token, qr.Medium.SCREEN)


def test_svg_is_an_svg_document() -> None:
    token = tokens.sign(claims(lines=1), PRIVATE, KID)
    assert b"<svg" in qr.svg(token)
