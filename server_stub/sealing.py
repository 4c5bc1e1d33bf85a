"""Sealing secrets at rest with the server's secret key (AES-256-GCM).

A sealed value is `nonce (12 bytes) || ciphertext+tag`, bound to a context string (tenant and
key id) so a sealed key cannot be moved to another row. Without the server's secret key, the
database holds nothing that signs.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server_stub.settings import Settings

log = logging.getLogger("omnisdk.server")
KEY_BYTES = 32


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the server's secret key must be 32 bytes (base64-encoded)")
        self._aead = AESGCM(key)

    def seal(self, secret: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, secret, context.encode())

    def unseal(self, sealed: bytes, context: str) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], context.encode())


class SecretKeyMissing(RuntimeError):
    """The secret key file is gone while the database holds keys sealed with it."""


def sealer_from(settings: Settings, *, keys_stored: bool = False) -> Sealer:
    """The sealer of the configured secret key, creating the key file the first time.

    Never when the database already holds sealed keys (`keys_stored`): a new secret cannot
    open them, so a missing file is an operator's mistake to report, not to paper over.
    """
    if settings.secret_key is not None:
        return Sealer(base64.b64decode(settings.secret_key.get_secret_value()))
    path = Path(settings.secret_key_file)
    if not path.exists() and keys_stored:
        raise SecretKeyMissing(
            f"the secret key file {path} is missing, but the database holds signing keys "
            "sealed with it: restore the file from your backup (or set OMNISDK_SECRET_KEY)"
        )
    if not path.exists():
        encoded = base64.b64encode(os.urandom(KEY_BYTES))
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(encoded + b"\n")
        log.warning(
            "created a new secret key file; back it up: without it, signing keys cannot be used",
            extra={"path": str(path.resolve())},
        )
    return Sealer(base64.b64decode(path.read_bytes().strip()))
