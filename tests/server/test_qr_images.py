"""The QR images the server serves (zxing-cpp): the same symbol omnisdk.qr draws — version,
error correction, quiet zone, module size — and they read back, also from a phone photo."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFilter

from omnisdk import qr
from omnisdk.core import tokens
from server_stub import qr_images
from tests.core.test_qr import read_png
from tests.core.test_tokens import KEYS, KID, NOW, PRIVATE, SHOP, claims


@pytest.mark.parametrize("lines", [1, 3, 8, 20])
def test_the_server_draws_the_symbol_omnisdk_qr_draws(lines: int) -> None:
    token = tokens.sign(claims(lines=lines), PRIVATE, KID)
    for medium in qr.Medium:
        served = Image.open(io.BytesIO(qr_images.png(token, medium)))
        drawn = Image.open(io.BytesIO(qr.png(token, medium)))
        # Same size in pixels: same version, same quiet zone, same module size.
        assert served.size == drawn.size
        modules = served.size[0] // qr_images.MODULE_PX - 2 * qr.QUIET_ZONE
        assert (modules - 17) // 4 == qr.version(token, medium)
        (text,) = read_png(qr_images.png(token, medium))
        assert text == token
        assert tokens.verify(text, KEYS, issuer=SHOP, now=NOW).valid


def test_a_blurred_shrunken_photo_of_a_printed_code_reads_back() -> None:
    import zxingcpp

    token = tokens.sign(claims(lines=5), PRIVATE, KID)
    printed = Image.open(io.BytesIO(qr_images.png(token, qr.Medium.PRINT))).convert("L")
    photo = printed.resize((printed.width // 3, printed.height // 3)).filter(
        ImageFilter.GaussianBlur(1)
    )
    assert [found.text for found in zxingcpp.read_barcodes(photo)] == [token]


def test_svg_has_a_physical_size_and_a_view_box() -> None:
    token = tokens.sign(claims(lines=2), PRIVATE, KID)
    drawing = qr_images.svg(token).decode()
    modules = (qr.version(token) * 4 + 17) + 2 * qr.QUIET_ZONE
    assert f'viewBox="0 0 {modules} {modules}"' in drawing
    assert f'width="{modules * qr_images.MODULE_MM:g}mm"' in drawing


def test_a_code_beyond_any_qr_symbol_is_refused_as_too_large() -> None:
    with pytest.raises(qr_images.CodeTooLarge):
        qr_images.png("A" * 5_000, qr.Medium.PRINT)
