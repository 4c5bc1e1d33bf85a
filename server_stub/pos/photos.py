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
    grey = _grey(data)
    if grey is None:
        raise UnreadablePhoto("The picture is too large. Take it again at a lower size.")
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


def _grey(data: bytes) -> Image.Image | None:
    """The picture in grey, decoded only if it has at most MAX_PIXELS (None if more)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                return None
            return image.convert("L")
    except Image.DecompressionBombError:
        return None  # a few bytes may claim billions of pixels: Pillow refuses to decode them
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        # What a broken file raises depends on its format's decoder.
        raise UnreadablePhoto("That file is not a picture. Take a photo of the QR code.") from error
