"""Till enrolment by QR: an admin shows a one-time code; the till scans it, a till key is made
for it and it is signed in. No one types, reads or sees the till's key.

The code (`EN1:` + 32 random characters of the QR alphanumeric alphabet) is a reference to an
enrolment held by the station, not a key: it is single use and expires after a few minutes, so
a photo of the screen taken later is worth nothing. The till key is made only when the code is
scanned (with the admin key, held in the station's memory until then and never written down),
so a code that is never scanned leaves no key behind on the server.

Pending enrolments live in the station's memory or, with a data directory, in files that every
station process sharing it can read (the till's scan may reach another worker than the
admin's screen): each file is named by a hash of its code and holds the admin key sealed with
AES-GCM under a key derived from the code (HKDF, RFC 5869). The code exists only on the admin's
screen, so the file alone opens nothing; it is deleted when the code is scanned (the process
that renames it first takes it: single use) and ignored once expired.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from omnisdk import qr

PREFIX = "EN1:"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CODE_CHARS = 32  # about 165 bits
ENROLMENT_SECONDS = 300.0
SEALED_NAME = re.compile(r"\.?[0-9a-f]{16,64}(\.[0-9a-f]{16}\.taken|\.tmp)?")  # ours only


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
    """Enrolment codes shown and not yet scanned: in memory, or in `folder` (shared by the
    station's processes)."""

    def __init__(self, seconds: float = ENROLMENT_SECONDS, folder: Path | None = None) -> None:
        self.seconds = seconds
        self.folder = folder
        self._pending: dict[str, Enrolment] = {}

    def offer(self, admin_key: str, store_id: str, till_id: str) -> Enrolment:
        self._forget_expired()
        code = PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
        enrolment = Enrolment(code, admin_key, store_id, till_id, time.time() + self.seconds)
        self._keep(enrolment)
        return enrolment

    def take(self, scanned: str) -> Enrolment | None:
        """The enrolment of a scanned code, once; None if unknown, used or expired."""
        self._forget_expired()
        wanted = scanned.strip().upper()
        if self.folder is not None:
            taken = _take_sealed(self.folder, wanted)
            return taken if taken is not None and taken.expires > time.time() else None
        for code in list(self._pending):
            if hmac.compare_digest(code.encode(), wanted.encode()):
                return self._pending.pop(code)
        return None

    def restore(self, enrolment: Enrolment) -> None:
        """Offer a taken enrolment again (its sign-in failed), until it expires as before."""
        if enrolment.expires > time.time():
            self._keep(enrolment)

    def _keep(self, enrolment: Enrolment) -> None:
        if self.folder is None:
            self._pending[enrolment.code] = enrolment
            return
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = self.folder / f".{secrets.token_hex(8)}.tmp"
        descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(_seal(enrolment))
        fresh.replace(_sealed_file(self.folder, enrolment.code))

    def _forget_expired(self) -> None:
        now = time.time()
        for code, enrolment in list(self._pending.items()):
            if enrolment.expires <= now:
                del self._pending[code]
        if self.folder is not None and self.folder.is_dir():
            for file in self.folder.iterdir():
                if not SEALED_NAME.fullmatch(file.name):
                    continue  # not ours: never delete what the station did not write
                with contextlib.suppress(OSError):
                    if file.stat().st_mtime + self.seconds < now:
                        file.unlink()


def _sealed_file(folder: Path, code: str) -> Path:
    return folder / f"{hashlib.sha256(b'omnisdk-enrolment-name:' + code.encode()).hexdigest()}"


def _code_key(code: str) -> bytes:
    hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=b"omnisdk-pos-enrolment")
    return hkdf.derive(code.encode())


def _seal(enrolment: Enrolment) -> bytes:
    plain = json.dumps(
        [enrolment.admin_key, enrolment.store_id, enrolment.till_id, enrolment.expires]
    ).encode()
    nonce = os.urandom(12)
    return nonce + AESGCM(_code_key(enrolment.code)).encrypt(nonce, plain, None)


def _take_sealed(folder: Path, code: str) -> Enrolment | None:
    """Claim and open the sealed enrolment of `code`; None if no process can any more."""
    file = _sealed_file(folder, code)
    claimed = file.with_name(f".{file.name}.{secrets.token_hex(8)}.taken")
    try:
        file.rename(claimed)  # atomic: of two processes scanning at once, one wins
        sealed = claimed.read_bytes()
    except OSError:
        return None
    finally:
        claimed.unlink(missing_ok=True)
    try:
        plain = AESGCM(_code_key(code)).decrypt(sealed[:12], sealed[12:], None)
        admin_key, store_id, till_id, expires = json.loads(plain)
    except (InvalidTag, ValueError, TypeError):
        return None
    return Enrolment(code, str(admin_key), str(store_id), str(till_id), float(expires))


def is_enrolment_code(text: str) -> bool:
    return text.strip().upper().startswith(PREFIX)
