"""`omnisdk-server`: run, migrate and administer the reference sync server.

    omnisdk-server serve [--host H] [--port P] [--workers N]
    omnisdk-server migrate
    omnisdk-server tenant create NAME | tenant list
    omnisdk-server key create --tenant T --channel web|app|pos|admin [--name N] [--scope S ...]
    omnisdk-server key list --tenant T | key revoke --tenant T KEY_ID
    omnisdk-server content import --tenant T FILE.yaml|FILE.json [--note TEXT]
    omnisdk-server recs rebuild --tenant T [--full]
    omnisdk-server jobs run --tenant T KIND [--param NAME=VALUE ...] | jobs list --tenant T
    omnisdk-server jobs show --tenant T JOB_ID
    omnisdk-server maintenance run
    omnisdk-server analytics attribution|ropo|ltv|refresh|report --tenant T ... (analytics_cli)
    omnisdk-server staff add --tenant T --name N --department D [--role agent|lead|admin]
    omnisdk-server segments backfill --tenant T SEGMENT
    omnisdk-server alerts metrics|messages|replay|webhook-add|webhooks|deliver --tenant T ...

Every command takes `--database-url` (default: $OMNISDK_DATABASE_URL, else ./omnisdk.sqlite3).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from rich.console import Console
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.channels import Channel, Scope
from omnisdk.models import Job
from server_stub.sealing import sealer_from
from server_stub.services import audit, jobs, tenants
from server_stub.services import keys as key_store
from server_stub.settings import Settings, settings_from_environment
from server_stub.storage.database import Database
from server_stub.storage.migrate import upgrade

T = TypeVar("T")


class CommandError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def _database_url(args: argparse.Namespace) -> str:
    url: str = args.database_url or settings_from_environment().database_url
    return url


async def _with_database(
    url: str, work: Callable[[Database], Awaitable[T]], settings: Settings | None = None
) -> T:
    settings = settings or settings_from_environment()
    # Migrations and session-level work go over a direct connection, never a pooler.
    await upgrade(settings.database_listen_url or url)
    database = Database(
        url, pooler=settings.database_pooler, listen_url=settings.database_listen_url
    )
    try:
        return await work(database)
    finally:
        await database.dispose()


def cmd_migrate(args: argparse.Namespace) -> None:
    revision = asyncio.run(upgrade(_database_url(args)))
    print(f"database schema at revision {revision}")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from server_stub.frontdoor import uvicorn_options

    url = _database_url(args)
    # The app (in this process or in worker processes) reads its settings from the environment.
    os.environ["OMNISDK_DATABASE_URL"] = url
    settings_from_environment.cache_clear()
    # Migrations over a direct connection, never a transaction pooler.
    revision = asyncio.run(upgrade(settings_from_environment().database_listen_url or url))
    print(f"database schema at revision {revision}", file=sys.stderr)
    uvicorn.run(
        "server_stub.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # Header, timeout and connection limits (docs/server.md, "Limits").
        **uvicorn_options(settings_from_environment()),
        # Live change feeds never finish by themselves: give them a moment, then close them.
        timeout_graceful_shutdown=3,
    )


def cmd_tenant_create(args: argparse.Namespace) -> None:
    async def work(database: Database) -> tenants.Tenant:
        async with database.transaction(write=True) as conn:
            return await tenants.create(
                conn, args.name, sealer=sealer_from(settings_from_environment())
            )

    try:
        tenant = asyncio.run(_with_database(_database_url(args), work))
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(tenant.id)
    print(f"created tenant {tenant.name!r}", file=sys.stderr)


def cmd_tenant_list(args: argparse.Namespace) -> None:
    async def work(database: Database) -> list[tenants.Tenant]:
        async with database.transaction(write=False) as conn:
            return await tenants.list_all(conn)

    for tenant in asyncio.run(_with_database(_database_url(args), work)):
        print(f"{tenant.id}\t{tenant.created_at:%Y-%m-%d}\t{tenant.name}")


async def _require_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    if await tenants.get(conn, tenant_id) is None:
        raise CommandError(f"no tenant {tenant_id!r}: see `omnisdk-server tenant list`")


def cmd_key_create(args: argparse.Namespace) -> None:
    scopes = frozenset(Scope(s) for s in args.scope) if args.scope else None

    async def work(database: Database) -> tuple[key_store.StoredKey, str]:
        async with database.transaction(write=True) as conn:
            await _require_tenant(conn, args.tenant)
            created = await key_store.create(
                conn, args.tenant, Channel(args.channel), args.name, scopes
            )
            await audit.record(conn, args.tenant, None, "key.create", created[0].key_id, "cli")
            return created

    try:
        key, secret = asyncio.run(_with_database(_database_url(args), work))
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(secret)
    print(
        f"created {key.channel.value} key {key.key_id}; this is the only time the key is shown",
        file=sys.stderr,
    )


def cmd_key_list(args: argparse.Namespace) -> None:
    async def work(database: Database) -> list[key_store.StoredKey]:
        async with database.transaction(write=False) as conn:
            await _require_tenant(conn, args.tenant)
            return await key_store.list_for_tenant(conn, args.tenant)

    for key in asyncio.run(_with_database(_database_url(args), work)):
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        print(f"{key.key_id}\t{key.channel.value}\t{state}\t{key.name}")


def cmd_key_revoke(args: argparse.Namespace) -> None:
    async def work(database: Database) -> key_store.StoredKey | None:
        async with database.transaction(write=True) as conn:
            key, revoked = await key_store.revoke(conn, args.tenant, args.key_id)
            if revoked:
                await audit.record(conn, args.tenant, None, "key.revoke", args.key_id, "cli")
            return key

    if asyncio.run(_with_database(_database_url(args), work)) is None:
        raise CommandError(f"tenant {args.tenant!r} has no key {args.key_id!r}")
    print(f"revoked {args.key_id}")


def cmd_content_import(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from omnisdk.models import RulesetIn
    from server_stub.errors import Problem
    from server_stub.services import content

    try:
        with open(args.file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from exc
    try:
        if args.file.endswith((".yaml", ".yml")):
            import yaml

            document = yaml.safe_load(text)
        else:
            import json

            document = json.loads(text)
        ruleset = RulesetIn.model_validate(
            {
                **(document or {}),
                "note": args.note or f"imported from {os.path.basename(args.file)}",
            }
        )
    except ValidationError as exc:
        raise CommandError(f"{args.file} is not a ruleset: {exc}") from exc
    except Exception as exc:  # JSON or YAML syntax: say where, without a traceback
        raise CommandError(f"{args.file} cannot be parsed: {exc}") from exc

    async def work(database: Database) -> int:
        async with database.transaction(write=True) as conn:
            await _require_tenant(conn, args.tenant)
            return (await content.publish(conn, args.tenant, ruleset, None)).version

    try:
        version = asyncio.run(_with_database(_database_url(args), work))
    except Problem as problem:
        details = "\n  ".join(problem.extra.get("errors", []))
        raise CommandError(f"{problem.detail}:\n  {details}") from problem
    print(f"published ruleset version {version} with {len(ruleset.slots)} slot(s)")


def cmd_recs_rebuild(args: argparse.Namespace) -> None:
    args.kind, args.param = "recommendations.rebuild", ["full=true"] if args.full else []
    job = _run_job(args)
    result = job.result or {}
    print(
        f"recommendations rebuilt from {result.get('baskets', 0)} baskets; "
        f"{result.get('products', 0)} products have partners "
        f"({result.get('events_counted', 0)} new events counted)"
    )


def _job_params(pairs: Sequence[str]) -> dict[str, object]:
    import json

    params: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--param takes NAME=VALUE, not {pair!r}")
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value  # a plain word
    return params


def _run_job(args: argparse.Namespace) -> Job:
    """Start (or resume, or follow) the tenant's job of a kind here, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from server_stub.errors import Problem

    settings = settings_from_environment()
    params = _job_params(args.param)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
        disable=getattr(args, "progress", None) is False,  # `analytics ... --no-progress`
    )

    async def work(database: Database) -> Job:
        async with database.transaction(write=False) as conn:
            await _require_tenant(conn, args.tenant)
        claim = await jobs.start(
            database, args.tenant, args.kind, params, stale_seconds=settings.job_stale_seconds
        )
        verb = "resuming" if claim.job.attempts > 1 else "running"
        with progress:
            bar = progress.add_task(f"{verb} {args.kind} ({claim.job.job_id})", total=None)

            def show(done: int, total: int | None) -> None:
                progress.update(bar, completed=done, total=total)

            if claim.runner is not None:
                return await jobs.execute(
                    database, claim, stale_seconds=settings.job_stale_seconds, on_progress=show
                )
            # Another process runs it: follow it until it ends.
            progress.update(bar, description=f"following {args.kind} ({claim.job.job_id})")
            runner = jobs.JobRunner(database, settings.job_stale_seconds)
            while True:
                job: Job | None = await runner.wait(args.tenant, claim.job.job_id, timeout=1.0)
                assert job is not None
                show(job.done, job.total)
                if job.state not in jobs.ACTIVE_STATES:
                    return job

    try:
        job = asyncio.run(_with_database(_database_url(args), work))
    except Problem as problem:
        raise CommandError(problem.detail) from problem
    if job.state == "failed":
        raise CommandError(f"job {job.job_id} failed: {job.error}")
    return job


def cmd_jobs_run(args: argparse.Namespace) -> None:
    import json

    job = _run_job(args)
    print(json.dumps(job.result, indent=2, sort_keys=True))


def cmd_jobs_list(args: argparse.Namespace) -> None:
    async def work(database: Database) -> list[Job]:
        async with database.transaction(write=False) as conn:
            await _require_tenant(conn, args.tenant)
            return await jobs.list_for_tenant(conn, args.tenant, args.kind, args.limit)

    for job in asyncio.run(_with_database(_database_url(args), work)):
        total = "?" if job.total is None else str(job.total)
        when = f"{job.created_at:%Y-%m-%d %H:%M:%S}"
        print(f"{job.job_id}\t{job.kind}\t{job.state}\t{job.done}/{total}\t{when}")


def cmd_jobs_show(args: argparse.Namespace) -> None:
    async def work(database: Database) -> Job | None:
        async with database.transaction(write=False) as conn:
            await _require_tenant(conn, args.tenant)
            return await jobs.get(conn, args.tenant, args.job_id)

    job = asyncio.run(_with_database(_database_url(args), work))
    if job is None:
        raise CommandError(f"tenant {args.tenant!r} has no job {args.job_id!r}")
    print(job.model_dump_json(indent=2))


def cmd_maintenance_run(args: argparse.Namespace) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from server_stub.services import maintenance

    settings = settings_from_environment().model_copy(update={"database_url": _database_url(args)})

    async def work(database: Database) -> maintenance.Report | None:
        return await maintenance.run(database, settings, progress=tell)

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}"))
    with Progress(*columns, TimeElapsedColumn(), transient=False) as bar:
        # One line per step; its count grows with every batch (the total is not known ahead).
        tasks = {step: bar.add_task(step, total=None) for step in maintenance.STEPS}

        def tell(step: str, rows: int) -> None:
            bar.update(tasks[step], completed=rows)

        report = asyncio.run(_with_database(settings.database_url, work, settings))
        for task in bar.tasks:  # done: each bar full
            bar.update(task.id, total=task.completed)
    if report is None:
        raise CommandError("another process is running maintenance now; try again later")
    for step, count in report.counts.items():
        print(f"{step}: {count}")


def cmd_staff_add(args: argparse.Namespace) -> None:
    from server_stub.services import staff

    async def work(database: Database) -> tuple[staff.Staff, str]:
        async with database.transaction(write=True) as conn:
            await _require_tenant(conn, args.tenant)
            member, secret = await staff.create(
                conn, args.tenant, args.name, args.department, staff.Role(args.role)
            )
            detail = f"console key for {args.name} ({args.department}, {args.role})"
            await audit.record(conn, args.tenant, None, "staff.added", member.key_id, detail)
            return member, secret

    member, secret = asyncio.run(_with_database(_database_url(args), work))
    print(f"console key for {member.name} ({member.department}, {member.role.value})")
    print(f"key id: {member.key_id}")
    print(f"secret (shown once): {secret}")


def cmd_segments_backfill(args: argparse.Namespace) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from server_stub.errors import Problem
    from server_stub.services import segments

    async def work(database: Database) -> segments.Outcome:
        async with database.transaction(write=False) as conn:
            await _require_tenant(conn, args.tenant)
            record = await segments.get(conn, args.tenant, args.segment)
        with Progress(
            TextColumn(f"backfilling {record.name}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} customers"),
            TimeRemainingColumn(),
        ) as bar:
            task = bar.add_task("backfill", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return await segments.backfill(
                database, args.tenant, record.id, progress, batch=args.batch
            )

    try:
        outcome = asyncio.run(_with_database(_database_url(args), work))
    except Problem as problem:
        raise CommandError(problem.detail) from None
    print(f"entered: {outcome.entered}, exited: {outcome.exited}")


# --- alerts (issue 20) -----------------------------------------------------------------------


def cmd_alerts_metrics(args: argparse.Namespace) -> None:
    from server_stub.services import messages

    async def work(database: Database) -> str:
        async with database.transaction(write=False) as conn:
            await _require_tenant(conn, args.tenant)
            return (await messages.metrics(conn, args.tenant)).model_dump_json(indent=2)

    print(asyncio.run(_with_database(_database_url(args), work)))


def cmd_alerts_messages(args: argparse.Namespace) -> None:
    from server_stub.services import messages

    async def work(database: Database) -> list[str]:
        async with database.transaction(write=False) as conn:
            await _require_tenant(conn, args.tenant)
            found = await messages.listing(
                conn, args.tenant, status=args.status, kind=args.kind, limit=args.limit
            )
        return [
            f"{m.id}\t{m.kind.value}\t{m.status}\t{m.reason or '-'}\t{m.customer_id}\t"
            f"{m.sku or '-'}\t{m.attempts}\t{m.created_at:%Y-%m-%d %H:%M:%S}"
            for m in found
        ]

    for line in asyncio.run(_with_database(_database_url(args), work)):
        print(line)


def cmd_alerts_replay(args: argparse.Namespace) -> None:
    from server_stub.ids import utcnow
    from server_stub.services import messages

    async def work(database: Database) -> int:
        async with database.transaction(write=True) as conn:
            await _require_tenant(conn, args.tenant)
            count = await messages.replay(conn, args.tenant, args.id or None, utcnow())
            await audit.record(conn, args.tenant, None, "alerts.replay", "messages", "cli")
            return count

    print(f"{asyncio.run(_with_database(_database_url(args), work))} messages to send again")


def cmd_alerts_webhook_add(args: argparse.Namespace) -> None:
    from omnisdk.notification_models import WebhookEndpointIn
    from server_stub.ids import utcnow
    from server_stub.services import webhooks

    try:
        body = WebhookEndpointIn.model_validate({"url": args.url, "kinds": args.kind or []})
    except ValueError as exc:
        raise CommandError(f"not a webhook endpoint: {exc}") from exc

    async def work(database: Database) -> tuple[str, str | None]:
        async with database.transaction(write=True) as conn:
            await _require_tenant(conn, args.tenant)
            settings = settings_from_environment()
            made = await webhooks.create(
                conn,
                sealer_from(settings),
                args.tenant,
                body,
                utcnow(),
                allow_private_networks=settings.webhook_allow_private_networks,
            )
            await audit.record(conn, args.tenant, None, "webhook.create", made.id, "cli")
            return made.id, made.secret

    endpoint_id, secret = asyncio.run(_with_database(_database_url(args), work))
    print(secret)
    print(
        f"added webhook endpoint {endpoint_id}; its signing secret is shown this once",
        file=sys.stderr,
    )


def cmd_alerts_webhooks(args: argparse.Namespace) -> None:
    from server_stub.services import webhooks

    async def work(database: Database) -> list[str]:
        async with database.transaction(write=False) as conn:
            await _require_tenant(conn, args.tenant)
            found = await webhooks.list_all(conn, args.tenant)
        return [f"{w.id}\t{','.join(w.kinds) or 'all kinds'}\t{w.url}" for w in found]

    for line in asyncio.run(_with_database(_database_url(args), work)):
        print(line)


def cmd_alerts_deliver(args: argparse.Namespace) -> None:
    from server_stub.alert_delivery import AlertWorker, run_until_idle
    from server_stub.services.tenant_context import TenantContexts

    settings = settings_from_environment()

    async def work(database: Database) -> None:
        sealer = sealer_from(settings)
        worker = AlertWorker(
            database,
            TenantContexts(0, sealer),
            sealer,
            poll_seconds=settings.alerts_poll_seconds,
            batch=settings.alerts_batch,
            timeout=settings.alerts_webhook_timeout_seconds,
            abandoned_scan_seconds=0,
            retry_base_seconds=settings.alerts_retry_base_seconds,
            allow_private_networks=settings.webhook_allow_private_networks,
        )
        try:
            await run_until_idle(worker)
        finally:
            await worker.close()

    asyncio.run(_with_database(_database_url(args), work))
    print("delivered every message that was due", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url", help="default: $OMNISDK_DATABASE_URL or ./omnisdk.sqlite3"
    )
    top = argparse.ArgumentParser(prog="omnisdk-server", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="migrate, then serve HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(run=cmd_serve)

    migrate = commands.add_parser("migrate", parents=[common], help="apply database migrations")
    migrate.set_defaults(run=cmd_migrate)

    tenant = commands.add_parser("tenant", help="manage tenants (shops)")
    tenant_commands = tenant.add_subparsers(dest="action", required=True)
    create = tenant_commands.add_parser("create", parents=[common], help="create a tenant")
    create.add_argument("name")
    create.set_defaults(run=cmd_tenant_create)
    tenant_commands.add_parser("list", parents=[common]).set_defaults(run=cmd_tenant_list)

    key = commands.add_parser("key", help="manage API keys")
    key_commands = key.add_subparsers(dest="action", required=True)
    key_create = key_commands.add_parser(
        "create", parents=[common], help="create a key, print it once"
    )
    key_create.add_argument("--tenant", required=True)
    key_create.add_argument("--channel", required=True, choices=[c.value for c in Channel])
    key_create.add_argument("--name", default="")
    key_create.add_argument(
        "--scope",
        action="append",
        choices=[s.value for s in Scope],
        help="limit the key to these scopes (repeat); default: all of the channel's",
    )
    key_create.set_defaults(run=cmd_key_create)
    key_list = key_commands.add_parser("list", parents=[common])
    key_list.add_argument("--tenant", required=True)
    key_list.set_defaults(run=cmd_key_list)
    key_revoke = key_commands.add_parser("revoke", parents=[common])
    key_revoke.add_argument("--tenant", required=True)
    key_revoke.add_argument("key_id")
    key_revoke.set_defaults(run=cmd_key_revoke)

    content = commands.add_parser("content", help="manage personalised content")
    content_commands = content.add_subparsers(dest="action", required=True)
    content_import = content_commands.add_parser(
        "import", parents=[common], help="validate and publish a ruleset file (YAML or JSON)"
    )
    content_import.add_argument("--tenant", required=True)
    content_import.add_argument("--note", default="")
    content_import.add_argument("file")
    content_import.set_defaults(run=cmd_content_import)

    recs = commands.add_parser("recs", help="recommendations")
    recs_commands = recs.add_subparsers(dest="action", required=True)
    rebuild = recs_commands.add_parser(
        "rebuild", parents=[common], help="recompute bought-together and popular products"
    )
    rebuild.add_argument("--tenant", required=True)
    rebuild.add_argument("--full", action="store_true", help="recount every event from nothing")
    rebuild.set_defaults(run=cmd_recs_rebuild)

    job = commands.add_parser("jobs", help="long-running jobs (rebuilds, backfills)")
    job_commands = job.add_subparsers(dest="action", required=True)
    job_run = job_commands.add_parser(
        "run", parents=[common], help="run a job here with a progress bar (or resume/follow it)"
    )
    job_run.add_argument("--tenant", required=True)
    job_run.add_argument("kind", help="e.g. recommendations.rebuild")
    job_run.add_argument(
        "--param", action="append", default=[], help="NAME=VALUE (JSON or a word); repeat"
    )
    job_run.set_defaults(run=cmd_jobs_run)
    job_list = job_commands.add_parser("list", parents=[common], help="the tenant's jobs")
    job_list.add_argument("--tenant", required=True)
    job_list.add_argument("--kind")
    job_list.add_argument("--limit", type=int, default=20)
    job_list.set_defaults(run=cmd_jobs_list)
    job_show = job_commands.add_parser("show", parents=[common], help="one job, as JSON")
    job_show.add_argument("--tenant", required=True)
    job_show.add_argument("job_id")
    job_show.set_defaults(run=cmd_jobs_show)
    upkeep = commands.add_parser("maintenance", help="history retention and pruning")
    upkeep_commands = upkeep.add_subparsers(dest="action", required=True)
    upkeep_commands.add_parser(
        "run",
        parents=[common],
        help="create event partitions ahead, apply retention, prune the change feed and "
        "idempotency records, now (the server also does it every few minutes)",
    ).set_defaults(run=cmd_maintenance_run)
    from server_stub import analytics_cli

    analytics_cli.add_commands(commands, common)
    staff_parser = commands.add_parser("staff", help="console staff (issue 19)")
    staff_commands = staff_parser.add_subparsers(dest="action", required=True)
    staff_add = staff_commands.add_parser("add", parents=[common], help="make a console key")
    staff_add.add_argument("--tenant", required=True)
    staff_add.add_argument("--name", required=True)
    staff_add.add_argument("--department", required=True)
    staff_add.add_argument("--role", choices=["agent", "lead", "admin"], default="agent")
    staff_add.set_defaults(run=cmd_staff_add)

    segment_parser = commands.add_parser("segments", help="named segments (issue 19)")
    segment_commands = segment_parser.add_subparsers(dest="action", required=True)
    backfill = segment_commands.add_parser(
        "backfill", parents=[common], help="evaluate a segment over every customer"
    )
    backfill.add_argument("--tenant", required=True)
    backfill.add_argument("--batch", type=int, default=1000)
    backfill.add_argument("segment", help="the segment's name or id")
    backfill.set_defaults(run=cmd_segments_backfill)

    _alerts_parser(commands, common)
    return top


def _alerts_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    from omnisdk.core.notifications import Kind

    kinds = [k.value for k in Kind]
    alerts = commands.add_parser("alerts", help="stock alerts and messages (docs/notifications.md)")
    alert_commands = alerts.add_subparsers(dest="action", required=True)
    metrics = alert_commands.add_parser(
        "metrics", parents=[common], help="per kind: triggered, skipped by reason, sent, failed"
    )
    metrics.set_defaults(run=cmd_alerts_metrics)
    listing = alert_commands.add_parser("messages", parents=[common], help="list messages")
    listing.add_argument(
        "--status", choices=["pending", "sending", "retry", "sent", "skipped", "failed"]
    )
    listing.add_argument("--kind", choices=kinds)
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=cmd_alerts_messages)
    replay = alert_commands.add_parser(
        "replay", parents=[common], help="send dead-lettered messages again (decided anew)"
    )
    replay.add_argument("--id", action="append", help="a message id (repeat); default: all")
    replay.set_defaults(run=cmd_alerts_replay)
    add = alert_commands.add_parser(
        "webhook-add", parents=[common], help="add a webhook endpoint, print its secret once"
    )
    add.add_argument("--url", required=True)
    add.add_argument("--kind", action="append", choices=kinds, help="default: every kind")
    add.set_defaults(run=cmd_alerts_webhook_add)
    hooks = alert_commands.add_parser("webhooks", parents=[common], help="list webhook endpoints")
    hooks.set_defaults(run=cmd_alerts_webhooks)
    deliver = alert_commands.add_parser(
        "deliver",
        parents=[common],
        help="run delivery passes until nothing is due (the server does this by itself)",
    )
    deliver.set_defaults(run=cmd_alerts_deliver)
    for sub in (metrics, listing, replay, add, hooks, deliver):
        sub.add_argument("--tenant", required=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except CommandError as exc:
        print(f"omnisdk-server: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        print(f"omnisdk-server: cannot use the database: {exc.orig}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
