"""Server settings, read from the environment (prefix `OMNISDK_`)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

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
    opentelemetry: bool = Field(
        default=False,
        description="Let FastAPI's native OpenTelemetry instrumentation trace and measure "
        "requests through the process's global providers. Off, the server has its own "
        "/metrics and access log, and no request pays the instrumentation's checks.",
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
    max_header_bytes: int = Field(
        default=32_768,
        gt=0,
        description="Largest request head (request line and headers); more is answered 431.",
    )
    max_header_count: int = Field(
        default=100, gt=0, description="Most header fields in a request; more is answered 431."
    )
    header_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Time a client has to send a request's headers once it starts (or once it "
        "connects); then 408 and the connection closes (slowloris).",
    )
    body_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Longest wait for the next chunk of a request body; then 408 and close.",
    )
    keep_alive_timeout_seconds: int = Field(
        default=5, gt=0, description="How long an idle keep-alive connection is kept open."
    )
    max_connections: int = Field(
        default=2_000,
        gt=0,
        description="Open connections a process serves; a request on one more is answered 503 "
        "with Retry-After. Live change feeds count: allow for them.",
    )
    rate_limit_per_second: float = Field(
        default=2_000.0,
        ge=0,
        description="Requests per second one API key may make to one process, on average "
        "(0: no limit); beyond the burst, 429 `rate-limited` with Retry-After.",
    )
    rate_limit_burst: int = Field(
        default=4_000, gt=0, description="Requests one key may make at once above its rate."
    )
    alerts_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often each process looks for due messages and restock batches.",
    )
    alerts_batch: int = Field(
        default=50, gt=0, le=1000, description="Messages a process claims and delivers at once."
    )
    alerts_webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a webhook receiver has to answer, in all (connecting, sending "
        "and reading its whole answer); a message's endpoints are posted at once.",
    )
    webhook_allow_private_networks: bool = Field(
        default=False,
        description="Let tenants' webhook endpoints be on this machine or the operator's "
        "network (loopback, RFC 1918, unique-local, link-local addresses, names like "
        "`localhost`). Off, such an endpoint is refused when it is added and when a message "
        "is sent (its name is resolved and the address checked is the one connected to). "
        "Only for a server all of whose tenants the operator trusts, or for tests.",
    )
    alerts_retry_base_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Wait before a failed webhook delivery's first retry; doubled after each "
        "further failure, up to an hour.",
    )
    alerts_abandoned_scan_seconds: float = Field(
        default=60.0, gt=0, description="How often a process looks for abandoned carts."
    )
    alerts_delivery: bool = Field(
        default=True,
        description="Whether this process runs the delivery loop (every process may: they "
        "share the work safely).",
    )
    log_level: str = Field(default="INFO")
    database_pool_size: int = Field(default=10, gt=0)
    job_stale_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A job whose runner has not renewed its heartbeat for this long is taken "
        "for dead; the next start of its kind resumes it from its last checkpoint.",
    )
    job_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long the endpoints that run a job (`POST /v1/content/recommendations/"
        "rebuild`, `/v1/analytics/ltv`, `/v1/analytics/journeys/refresh`) wait for it before "
        "answering 202 with the job to follow instead of its outcome (keep it under the "
        "clients' timeout: the SDK's is 10 s).",
    )
    database_pooler: Literal["none", "transaction"] = Field(
        default="none",
        description="`transaction` when `database_url` points at a pooler in transaction "
        "mode (PgBouncer's `pool_mode = transaction`): no prepared statement outlives its "
        "transaction, and session-level features use `database_listen_url`.",
    )
    database_listen_url: str | None = Field(
        default=None,
        description="A direct PostgreSQL connection (not through a transaction pooler) for the "
        "change feed's LISTEN and the maintenance lock; unset: `database_url`.",
    )
    maintenance_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often one server process (one at a time across processes) runs "
        "maintenance: event partitions ahead, retention, pruning (docs/scaling.md).",
    )
    maintenance_batch_rows: int = Field(
        default=5_000,
        gt=0,
        description="Most rows one maintenance transaction deletes; it repeats until done.",
    )

    @property
    def listen_url(self) -> str:
        """The URL of direct (unpooled) PostgreSQL connections."""
        return self.database_listen_url or self.database_url

    segment_drain_seconds: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="How often each process evaluates the segments of customers whose profile "
        "changed (issue 19); a change is reflected in memberships within about this long.",
    )
    segment_refresh_hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 30,
        description="How often a segment over attributes that change with time alone "
        "(lifecycle, interest scores, the observed preferred channel) is evaluated again over "
        "every customer, so that she drifts from active to lapsing without any event of hers.",
    )


@lru_cache(maxsize=1)
def settings_from_environment() -> Settings:
    return Settings()
