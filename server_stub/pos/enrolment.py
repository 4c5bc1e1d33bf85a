"""Till enrolment by QR: an admin shows a one-time code; the till scans it, a till key is made
for it and it is signed in. No one types, reads or sees the till's key.

The code (`EN1:` + 32 random characters of the QR alphanumeric alphabet) is a reference to an
enrolment held by the station, not a key: it is single use and expires after a few minutes, so
a photo of the screen taken later is worth nothing. The till key is made only when the code is
scanned (with the admin key, held in the station's memory until then and never written down),
so a code that is never scanned leaves no key behind on the server. Pending enrolments live in
the station's memory only; a restart forgets them (the admin shows a new one).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from omnisdk import qr

PREFIX = "EN1:"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CODE_CHARS = 32  # about 165 bits
ENROLMENT_SECONDS = 300.0


@dataclass(frozen=True)
class Enrolment:
    code: str
    admin_key: str  # makes the till's key when the code is scanned, then is forgotten
    store_id: str
    till_id: str
    expires: float

    def svg(self) -> str:
        """The code as an inline SVG (error correction M: it is shown on a screen)."""
        return qr.svg(self.code, qr.Medium.SCREEN).decode()


class Enrolments:
    def __init__(self, seconds: float = ENROLMENT_SECONDS) -> None:
        self.seconds = seconds
        self._pending: dict[str, Enrolment] = {}

    def offer(self, admin_key: str, store_id: str, till_id: str) -> Enrolment:
        self._forget_expired()
        code = PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
        enrolment = Enrolment(code, admin_key, store_id, till_id, time.monotonic() + self.seconds)
        self._pending[code] = enrolment
        return enrolment

    def take(self, scanned: str) -> Enrolment | None:
        """The enrolment of a scanned code, once; None if unknown, used or expired."""
        self._forget_expired()
        wanted = scanned.strip().upper()
        for code in list(self._pending):
            if hmac.compare_digest(code.encode(), wanted.encode()):
                return self._pending.pop(code)
        return None

    def restore(self, enrolment: Enrolment) -> None:
        """Offer a taken enrolment again (its sign-in failed), until it expires as before."""
        if enrolment.expires > time.monotonic():
            self._pending[enrolment.code] = enrolment

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for code, enrolment in list(self._pending.items()):
            if enrolment.expires <= now:
                del self._pending[code]


def is_enrolment_code(text: str) -> bool:
    return text.strip().upper().startswith(PREFIX)
