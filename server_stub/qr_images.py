"""QR images of return codes as the server serves them: encoded and drawn by zxing-cpp (C++),
written as PNG by Pillow.

`omnisdk.qr` (pure Python, for shops drawing codes themselves) takes about 25 ms for a
typical code, most of it choosing the mask pattern in Python; the server draws the same
symbol — same error correction, alphanumeric mode, smallest version, 4-module quiet zone, 8 px
modules — in a few milliseconds. Both decode to the same text (tests/server/test_returns.py).
"""

from __future__ import annotations

import io
import re

import zxingcpp
from PIL import Image

from omnisdk.qr import QUIET_ZONE, Medium

MODULE_PX = 8  # pixels per module in a PNG
MODULE_MM = 0.8  # an SVG's size per module, as omnisdk.qr draws it
_LEVEL = {Medium.SCREEN: "M", Medium.PRINT: "Q"}
_SVG_SIZE = re.compile(r'<svg width="(\d+)" height="(\d+)"')


class CodeTooLarge(ValueError):
    """The code holds more than a QR symbol can at this error correction."""


def _symbol(token: str, medium: Medium) -> zxingcpp.Barcode:
    try:
        return zxingcpp.create_barcode(
            token, zxingcpp.BarcodeFormat.QRCode, ec_level=_LEVEL[medium]
        )
    except ValueError as error:  # zxing-cpp: "Input too long for ECC level ..."
        raise CodeTooLarge(str(error)) from error


def png(token: str, medium: Medium = Medium.SCREEN) -> bytes:
    image = zxingcpp.write_barcode_to_image(
        _symbol(token, medium), scale=MODULE_PX, add_quiet_zones=QUIET_ZONE > 0
    )
    height, width = image.shape
    pixels = bytes(memoryview(image))  # type: ignore[arg-type]  # zxing's Image: a buffer
    picture = Image.frombytes("L", (width, height), pixels).convert("1")
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def svg(token: str, medium: Medium = Medium.SCREEN) -> bytes:
    text = zxingcpp.write_barcode_to_svg(_symbol(token, medium), add_quiet_zones=QUIET_ZONE > 0)
    # zxing-cpp sizes the drawing in modules (px); give it a physical size and a viewBox, so
    # that it prints as large as omnisdk.qr's and scales without blurring.
    found = _SVG_SIZE.search(text)
    if found is not None:
        modules = int(found.group(1))
        size = f"{modules * MODULE_MM:g}mm"
        text = _SVG_SIZE.sub(
            f'<svg width="{size}" height="{size}" viewBox="0 0 {modules} {modules}" '
            'shape-rendering="crispEdges"',
            text,
            count=1,
        )
    return text.encode()
