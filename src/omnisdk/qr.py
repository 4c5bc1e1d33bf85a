"""QR images of return tokens, rendered with `qrcode` in alphanumeric mode.

Error correction M for screens, Q for paper (it survives creases and smudges); a quiet zone of
4 modules as ISO/IEC 18004 asks. Base45 uses exactly the QR alphanumeric alphabet, so a token
is encoded at 5.5 bits per character instead of 8.
"""

from __future__ import annotations

import io
from enum import StrEnum

import qrcode
import qrcode.constants
import qrcode.image.pure
import qrcode.image.svg
import qrcode.util

QUIET_ZONE = 4


class Medium(StrEnum):
    SCREEN = "screen"  # error correction M
    PRINT = "print"  # error correction Q


_CORRECTION = {
    Medium.SCREEN: qrcode.constants.ERROR_CORRECT_M,
    Medium.PRINT: qrcode.constants.ERROR_CORRECT_Q,
}


def qr_code(token: str, medium: Medium = Medium.SCREEN) -> qrcode.QRCode:
    code = qrcode.QRCode(error_correction=_CORRECTION[medium], border=QUIET_ZONE, box_size=8)
    code.add_data(qrcode.util.QRData(token.encode(), mode=qrcode.util.MODE_ALPHA_NUM))
    code.make(fit=True)
    return code


def version(token: str, medium: Medium = Medium.SCREEN) -> int:
    """The QR version (size, 1-40) the token needs."""
    return int(qr_code(token, medium).version)


def png(token: str, medium: Medium = Medium.SCREEN, box_size: int = 8) -> bytes:
    code = qr_code(token, medium)
    code.box_size = box_size
    out = io.BytesIO()
    code.make_image(image_factory=qrcode.image.pure.PyPNGImage).save(out)
    return out.getvalue()


def svg(token: str, medium: Medium = Medium.SCREEN) -> bytes:
    code = qr_code(token, medium)
    out = io.BytesIO()
    code.make_image(image_factory=qrcode.image.svg.SvgPathImage).save(out)
    return out.getvalue()
