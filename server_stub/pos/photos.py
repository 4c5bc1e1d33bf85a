"""Reading a return code from a photo or an uploaded image, with zxing-cpp."""

from __future__ import annotations

import io

import zxingcpp
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 40_000_000


class UnreadablePhoto(ValueError):
    """No return code could be read; the message tells the clerk what to do."""


def read_return_code(data: bytes) -> str:
    """The RT1 text of the QR code in the image, or UnreadablePhoto with a reason."""
    if not data:
        raise UnreadablePhoto("No picture was received. Take the photo again.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise UnreadablePhoto("The picture is too large. Take it again at a lower size.")
            grey = image.convert("L")
    except Image.DecompressionBombError as error:
        # A few bytes may claim 30000 x 30000 pixels: Pillow refuses to open it at all.
        raise UnreadablePhoto("The picture is too large. Take it again at a lower size.") from error
    except (UnidentifiedImageError, OSError) as error:
        raise UnreadablePhoto("That file is not a picture. Take a photo of the QR code.") from error
    codes = [
        barcode.text.strip()
        for barcode in zxingcpp.read_barcodes(grey)
        if barcode.format == zxingcpp.BarcodeFormat.QRCode
    ]
    for text in codes:
        if text.upper().startswith("RT1:"):
            return text
    if codes:
        raise UnreadablePhoto("The picture shows a QR code, but not a return code of a shop.")
    raise UnreadablePhoto(
        "No QR code could be read in the picture. "
        "Hold the code flat, fill the frame, and try again."
    )
