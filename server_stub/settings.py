"""Server settings, read from the environment (prefix `OMNISDK_`)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from omnisdk.core.events import MAX_BATCH_BYTES

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./omnisdk.sqlite3"


class Settings(BaseSettings):
    """Everything an operator can set. Each field is `OMNISDK_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="OMNISDK_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; sqlite:// and postgresql:// are given their async drivers.",
    )
    max_body_bytes: int = Field(default=MAX_BATCH_BYTES, gt=0, description="Largest request body.")
    pos_photo_max_bytes: int = Field(
        default=8_388_608, gt=0, description="Largest photo of a QR code the till page accepts."
    )
    pos_data_dir: str | None = Field(
        default=None,
        description="Where the till page at /pos keeps its tills' sessions (so a restart keeps "
        "them signed in) and keys; unset: in memory only.",
    )
    idempotency_ttl_seconds: int = Field(
        default=86_400, gt=0, description="How long a stored answer replays an idempotency key."
    )
    auth_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a process trusts a looked-up key; a revocation made through "
        "another process takes effect within this time (at once in the revoking process).",
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="If set, /metrics requires `Authorization: Bearer <token>`."
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 random bytes that seals the tenants' signing keys at rest. "
        "If unset, the key is read from (or, the first time, written to) `secret_key_file`.",
    )
    secret_key_file: str = Field(default="omnisdk-secret.key")
    return_key_grace_days: int = Field(
        default=400,
        gt=0,
        description="After a rotation, how long the previous signing key keeps verifying "
        "(longer than the longest return window, so issued codes stay valid).",
    )
    change_retention_seconds: float = Field(
        default=7 * 86_400,
        gt=0,
        description="How long the change feed keeps a change. A watcher that resumes from an "
        "older position is sent a `resync` event (the SDK then reloads its caches).",
    )
    change_poll_seconds: float = Field(
        default=0.1,
        gt=0,
        le=1.0,
        description="On SQLite, how often a process looks for changes committed by other "
        "processes on the same file (PostgreSQL wakes watchers by NOTIFY instead).",
    )
    log_level: str = Field(default="INFO")
    database_pool_size: int = Field(default=10, gt=0)


@lru_cache(maxsize=1)
def settings_from_environment() -> Settings:
    return Settings()
