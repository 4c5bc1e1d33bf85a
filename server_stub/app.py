"""The app factory of the reference sync server."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from omnisdk._version import __version__
from server_stub import openapi, tasks
from server_stub.alert_delivery import AlertWorker
from server_stub.auth import KeyCache
from server_stub.budget import RequestBudget
from server_stub.console import create_console
from server_stub.errors import install_error_handlers
from server_stub.ids import utcnow
from server_stub.limits import BodySizeLimit
from server_stub.observability import Metrics, RequestContext, configure_logging, flush_logs
from server_stub.pos import StationConfig, close_station, create_station
from server_stub.routers import (
    alerts,
    analytics,
    carts,
    changes,
    consent,
    content,
    customers,
    events,
    health,
    identity,
    inventory,
    keys,
    notes,
    orders,
    privacy,
    returns,
    sessions,
    system,
    tenant,
)
from server_stub.routers import jobs as job_routes
from server_stub.routers import segments as segments_router
from server_stub.runtime import Runtime
from server_stub.sealing import Sealer, sealer_from
from server_stub.services import history_folds, maintenance, segments, signing_keys
from server_stub.services.changes import ChangeHub
from server_stub.services.jobs import JobRunner
from server_stub.services.signing_keys import SigningKeys
from server_stub.services.tenant_context import TenantContexts
from server_stub.settings import Settings, settings_from_environment
from server_stub.storage.database import Database
from server_stub.storage.migrate import current_revision, head_revision
from server_stub.telemetry import telemetry_config

log = logging.getLogger("omnisdk.server")
PURGE_INTERVAL_SECONDS = 600.0
IDEMPOTENCY_PURGE_INTERVAL_SECONDS = 60.0
HISTORY_FOLD_INTERVAL_SECONDS = 1.0
MIN_PRUNE_INTERVAL_SECONDS = 0.05


class SchemaNotMigrated(RuntimeError):
    pass


# Everything under /v1, one router per domain. Each router carries its full prefix so the
# route template (logged and used as a metrics label) is the path a client sees. FastAPI
# matches routers in this order, at a few microseconds per router passed: the cheap,
# frequent calls come first (system: connectivity checks; events: every page view).
API_ROUTERS: tuple[APIRouter, ...] = (
    system.router,
    events.router,
    carts.router,
    sessions.router,
    consent.router,
    content.router,
    changes.router,
    identity.router,
    customers.router,
    identity.merges_router,
    returns.router,
    keys.router,
    tenant.router,
    privacy.router,
    job_routes.router,
    analytics.router,
    orders.router,
    notes.router,
    notes.gift_router,
    segments_router.router,
    inventory.router,
    alerts.router,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A server over `settings` (read from the environment when not given).

    The database must already be migrated (`omnisdk-server migrate`, which `serve` runs).
    """
    settings = settings or settings_from_environment()
    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        revision = await current_revision(settings.listen_url)
        if revision != head_revision():
            raise SchemaNotMigrated(
                f"the database schema is at {revision or 'nothing'}, not {head_revision()}: "
                "run `omnisdk-server migrate` first"
            )
        database = Database(
            settings.database_url,
            settings.database_pool_size,
            pooler=settings.database_pooler,
            listen_url=settings.database_listen_url,
        )
        sealer = await _checked_sealer(settings, database)
        app.state.runtime = Runtime(
            settings,
            database,
            KeyCache(settings.auth_cache_seconds),
            metrics,
            TenantContexts(settings.auth_cache_seconds, sealer),
            SigningKeys(sealer),
            ChangeHub(database, settings.change_poll_seconds),
            RequestBudget(settings.rate_limit_per_second, settings.rate_limit_burst),
            JobRunner(database, settings.job_stale_seconds),
        )
        app.state.runtime.sealer = sealer
        app.state.schema_revision = revision
        worker = AlertWorker(
            database,
            app.state.runtime.tenants,
            sealer,
            poll_seconds=settings.alerts_poll_seconds,
            batch=settings.alerts_batch,
            timeout=settings.alerts_webhook_timeout_seconds,
            abandoned_scan_seconds=settings.alerts_abandoned_scan_seconds,
            retry_base_seconds=settings.alerts_retry_base_seconds,
            metrics=metrics,
            allow_private_networks=settings.webhook_allow_private_networks,
        )
        if settings.alerts_delivery:
            worker.start()
        # Start-up objects live as long as the process: keep them out of every GC pass.
        gc.freeze()
        # The expired change backlog is pruned once serving has begun, at once and then every
        # interval, in bounded batches (maintenance.prune_changes): however long it is, it never
        # delays readiness. Until it is gone the feed keeps more than its retention, never less
        # (a watcher is told to resync only below what was pruned, raised with each batch).
        app.state.changes_pruned_once = asyncio.Event()
        purgers = [
            asyncio.create_task(_purge_idempotency(database, settings)),
            asyncio.create_task(_prune_changes(database, settings, app.state.changes_pruned_once)),
            asyncio.create_task(_maintain(database, settings)),
            asyncio.create_task(_drain_segments(database, settings.segment_drain_seconds)),
            asyncio.create_task(_fold_history(database)),
            asyncio.create_task(_backfill_segments(database, settings)),
        ]
        try:
            yield
        finally:
            for purger in purgers:
                await tasks.stop(purger)
            await worker.close()
            # Starlette runs no lifespan of a mounted app: the station's clients close here.
            await close_station(app.state.pos_station)
            await app.state.runtime.jobs.close()
            await app.state.runtime.changes.close()
            await database.dispose()
            flush_logs()

    # Swagger UI and ReDoc from files shipped with fastapi-offline: /docs works without internet.
    app = FastAPIOffline(
        title="omnisdk reference sync server",
        version=__version__,
        summary="One customer, one cart, one consent state across a shop's channels.",
        lifespan=lifespan,
        telemetry=telemetry_config(settings.opentelemetry),  # server_stub/telemetry.py
    )
    install_error_handlers(app)
    openapi.install(app)
    for router in API_ROUTERS:
        app.include_router(router)
    app.include_router(health.router)
    # The till's page, talking to this very app in process (no network hop).
    pos_data = Path(settings.pos_data_dir) if settings.pos_data_dir else None
    station = create_station(
        StationConfig(
            transport=httpx.ASGITransport(app=app),
            data_dir=pos_data,
            photo_max_bytes=settings.pos_photo_max_bytes,
        )
    )
    app.mount("/pos", station, name="pos")
    # The customer-service console (issue 19), over this app's database.
    app.mount("/console", create_console(lambda: app.state.runtime), name="console")
    app.state.pos_station = station
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        larger={"/pos/returns/photo": settings.pos_photo_max_bytes},
    )
    app.add_middleware(RequestContext, metrics=metrics)
    return app


async def _checked_sealer(settings: Settings, database: Database) -> Sealer:
    """The sealer of the server's secret key, refusing to start when it cannot open the
    signing keys already stored (a wrong or lost key file would fail every issue)."""
    try:
        async with database.transaction(write=False) as conn:
            sealer = sealer_from(settings, keys_stored=await signing_keys.any_sealed(conn))
            await signing_keys.check_secret(conn, sealer)
    except BaseException:
        await database.dispose()
        raise
    return sealer


async def _prune_changes(database: Database, settings: Settings, first: asyncio.Event) -> None:
    """Prune at start-up, then often enough that no change outlives its retention by more
    than a quarter of it (but never a busy loop, whatever the setting). `first` is set when
    the start-up pass is over."""
    retention_seconds = settings.change_retention_seconds
    interval = max(MIN_PRUNE_INTERVAL_SECONDS, min(PURGE_INTERVAL_SECONDS, retention_seconds / 4))
    await _prune_changes_once(database, settings)
    first.set()
    while True:
        await asyncio.sleep(interval)
        await _prune_changes_once(database, settings)


async def _prune_changes_once(database: Database, settings: Settings) -> None:
    try:
        removed = await maintenance.prune_changes(
            database,
            settings.change_retention_seconds,
            utcnow(),
            settings.maintenance_batch_rows,
        )
        if removed:
            log.info("pruned old changes", extra={"count": removed})
    except Exception as exc:
        _reraise_cancellation(exc)
        log.warning("change pruning failed", extra={"error_type": type(exc).__name__})


async def _maintain(database: Database, settings: Settings) -> None:
    """Event partitions ahead, retention and pruning (services/maintenance.py), in one
    process at a time."""
    while True:
        await asyncio.sleep(settings.maintenance_interval_seconds)
        try:
            report = await maintenance.run(database, settings)
            if report is not None and any(report.counts.values()):
                log.info("maintenance done", extra={"counts": report.counts})
        except Exception as exc:
            _reraise_cancellation(exc)
            log.warning("maintenance failed", extra={"error_type": type(exc).__name__})


def _reraise_cancellation(exc: Exception) -> None:
    """A cancellation (shutting down) that reached the database driver mid-statement comes
    out as the driver's error (SQLAlchemy's MissingGreenlet, say): swallowing it would leave
    the shutdown waiting for a task that never ends."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def _fold_history(database: Database) -> None:
    """Fold merged customers' events into the survivor (services/history_folds.py)."""
    while True:
        try:
            while await history_folds.drain(database):
                pass  # a full round: take the next one at once
        except Exception as exc:
            _reraise_cancellation(exc)
            log.warning("history fold failed", extra={"error_type": type(exc).__name__})
        await asyncio.sleep(HISTORY_FOLD_INTERVAL_SECONDS)


async def _drain_segments(database: Database, interval: float) -> None:
    """Re-evaluate the segments of customers whose profile changed (services/segments.py)."""
    while True:
        try:
            while await segments.drain(database):
                pass  # a full batch: take the next one at once
        except Exception as exc:
            _reraise_cancellation(exc)
            log.warning("segment evaluation failed", extra={"error_type": type(exc).__name__})
        await asyncio.sleep(interval)


async def _backfill_segments(database: Database, settings: Settings) -> None:
    """Backfill segments created or edited (by this process or another, or before a restart),
    and those over attributes that change with time alone when their refresh is due."""
    refresh = timedelta(hours=settings.segment_refresh_hours)
    while True:
        try:
            await segments.backfill_due(database, refresh=refresh)
        except Exception as exc:
            _reraise_cancellation(exc)
            log.warning("segment backfill failed", extra={"error_type": type(exc).__name__})
        await asyncio.sleep(max(settings.segment_drain_seconds, 1.0))


async def _purge_idempotency(database: Database, settings: Settings) -> None:
    # Continuously: each pass deletes in short batches (maintenance.purge_idempotency).
    while True:
        try:
            removed = await maintenance.purge_idempotency(
                database,
                settings.idempotency_ttl_seconds,
                utcnow(),
                settings.maintenance_batch_rows,
            )
            if removed:
                log.info("purged expired idempotency records", extra={"count": removed})
        except Exception as exc:
            _reraise_cancellation(exc)
            log.warning("idempotency purge failed", extra={"error_type": type(exc).__name__})
        await asyncio.sleep(IDEMPOTENCY_PURGE_INTERVAL_SECONDS)
