"""What a scan is, and what to tell the clerk about it: the station's words for every outcome.

A keyboard-wedge scanner types whatever it reads: a return code (`RT1:…`, sometimes lower-cased
or with spaces around), but also a product's barcode or a URL when the clerk scans the wrong
thing. Each gets its own answer, so the clerk knows whether to scan again, ask the customer, or
refuse the return. No developer wording reaches the page: the server's problem details are
mapped to these messages, never shown as they are.
"""

from __future__ import annotations

import re
from enum import StrEnum

from omnisdk.core import tokens
from omnisdk.models import Redemption
from server_stub.pos.language import Words

MAX_SCAN_CHARS = 4096  # far above any issued code (tokens.MAX_SCANNABLE_CHARS)
PRODUCT_BARCODE = re.compile(r"\d{8,14}")  # EAN-8, UPC-A, EAN-13, GTIN-14
URL = re.compile(r"(?i)(https?://|www\.)\S+")


class ScanKind(StrEnum):
    NOTHING = "nothing"
    RETURN_CODE = "return_code"
    PRODUCT_BARCODE = "product_barcode"
    URL = "url"
    OTHER = "other"


def kind_of(text: str) -> ScanKind:
    """What the scanner typed, judged from its text alone."""
    cleaned = text.strip()
    if not cleaned:
        return ScanKind.NOTHING
    if cleaned.upper().startswith(tokens.PREFIX):
        return ScanKind.RETURN_CODE
    if PRODUCT_BARCODE.fullmatch(cleaned):
        return ScanKind.PRODUCT_BARCODE
    if URL.fullmatch(cleaned):
        return ScanKind.URL
    return ScanKind.OTHER


def looks_scanned(text: str) -> bool:
    """Whether a field meant for a number of units received a scan instead (the scanner typed
    into the focused box): nobody types six characters for a number of units, and every code
    a scanner reads (return code, product barcode, URL) is longer."""
    return len(text.strip()) >= 6


def scan_in_fields(fields: list[tuple[str, str]]) -> str | None:
    """What the scanner typed into the order form's boxes, if it did: a units box that holds
    more than a number of units, or an amount box that holds a code."""
    for name, value in fields:
        if name.startswith("qty-") and looks_scanned(value):
            return value
        if name == "amount" and kind_of(value) in SCANNED_KINDS:
            return value
    return None


SCANNED_KINDS = frozenset({ScanKind.RETURN_CODE, ScanKind.PRODUCT_BARCODE, ScanKind.URL})


def not_a_return_code(words: Words, kind: ScanKind) -> str:
    if kind is ScanKind.NOTHING:
        return words("Nothing was scanned. Scan the return code again.")
    if kind is ScanKind.PRODUCT_BARCODE:
        return words(
            "This is a product barcode, not a return code. Scan the QR code on the "
            "customer's e-mail, app or receipt."
        )
    if kind is ScanKind.URL:
        return words(
            "This QR code is a web address, not a return code. Scan the return code on the "
            "customer's e-mail, app or receipt."
        )
    return words(
        "This is not a return code. Scan the QR code on the customer's e-mail, app or receipt."
    )


def refusal(words: Words, verification: tokens.Verification, token: str) -> str:
    """Why a code that failed its check must not be accepted, in the clerk's words."""
    status = verification.status
    if status is tokens.Status.EXPIRED:
        try:
            expired = tokens.decode_unverified(token).expires_at
        except tokens.TokenError:
            return words("This return code has expired. The return period for this order is over.")
        return words(
            "This return code expired on %(date)s. The return period for this order is over.",
            date=words.date(expired),
        )
    return words(_REFUSALS[status])


def N_(message: str) -> str:
    """Marks a message for the catalogue where it is written; translated where it is used."""
    return message


_REFUSALS = {
    tokens.Status.MALFORMED: N_(
        "This return code is damaged and cannot be read completely. Scan it again; if it keeps "
        "failing, ask the customer to show it brighter or larger, or to get a new one from the "
        "shop."
    ),
    tokens.Status.BAD_SIGNATURE: N_(
        "This code has been altered or is not genuine: it is forged or was not made by this "
        "shop. Do not accept the return."
    ),
    tokens.Status.WRONG_SHOP: N_(
        "This is a return code of another shop. Do not accept the return here."
    ),
    tokens.Status.UNKNOWN_KEY: N_(
        "This till cannot check this code while it is offline: the code is newer than what the "
        "till knows. Connect the till to the network, then scan again."
    ),
    tokens.Status.RETIRED_KEY: N_(
        "This code was signed with a key the shop no longer uses. Do not accept it; the "
        "customer can get a new return code from the shop."
    ),
    tokens.Status.NOT_YET_VALID: N_(
        "This return code is dated later than the till's clock. Check the till's date and "
        "time, then scan again."
    ),
    tokens.Status.VALID: N_("This return code is valid."),
}


def withdrawn(words: Words) -> str:
    return words("The shop withdrew this return code. Do not accept the return.")


def unknown_to_the_shop(words: Words) -> str:
    return words("The shop has no record of this return code. Do not accept the return.")


def everything_returned(words: Words, history: list[Redemption]) -> str:
    """A code with nothing left: where and when its last units came back."""
    if not history:
        return words(
            "Everything on this code was already returned. Nothing more can be taken back."
        )
    last = history[-1]
    return words(
        "Everything on this code was already returned, last at store %(store)s on %(date)s. "
        "Nothing more can be taken back.",
        store=last.store_id,
        date=words.date(last.created_at),
    )


def already_returned(
    words: Words, item: str, left: int, wanted: int, history: list[Redemption]
) -> str:
    """Someone was faster: units of this line were returned since the order was shown."""
    text = words(
        "Only %(left)s of %(item)s can still be returned, not %(wanted)s.",
        left=left,
        item=item,
        wanted=wanted,
    )
    if history:
        last = history[-1]
        text += " " + words(
            "Already returned at store %(store)s on %(date)s.",
            store=last.store_id,
            date=words.date(last.created_at),
        )
    return text
