"""The delivery loop each server process runs: paces restocks, finds abandoned carts, and
decides and delivers due messages (issue 20).

All its state is in the database, so it survives restarts and runs in every process at once:
restock batches and messages are claimed with FOR UPDATE SKIP LOCKED on PostgreSQL (a row one
process holds, the others skip) and leased, so a process that dies mid-delivery leaves its
message to be claimed again once the lease runs out. On SQLite the loop is the single writer's
own (one process serves a SQLite file). A webhook is posted outside any transaction, with the
message id as its `webhook-id`: a redelivery after a crash is the same message to the receiver.

A message's endpoints are posted at once, each within one deadline (`timeout`, in all: httpx's
own timeouts are per phase and per read, and a receiver trickling its answer byte by byte never
trips them), so the posting of a batch takes at most `timeout` and its lease outlasts it
(`lease_for`). Unless private networks are allowed, each post resolves the endpoint's name,
refuses it if any address is not public (webhooks.is_public), and connects to the address it
checked, with the name kept in the Host header and TLS's SNI and certificate check: a DNS
answer that changes after the check (rebinding) is never asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from ipaddress import ip_address

import httpx
from sqlalchemy.exc import DBAPIError

from server_stub import tasks
from server_stub.errors import Problem
from server_stub.ids import utcnow
from server_stub.observability import Metrics
from server_stub.sealing import Sealer
from server_stub.services import alerts, inventory, messages, webhooks
from server_stub.services.tenant_context import TenantContexts
from server_stub.storage.database import TRANSACTION_ATTEMPTS, Database, lost_a_lock_race
from server_stub.storage.tables import tenants

log = logging.getLogger("omnisdk.server.alerts")
UNSERVABLE_BACKOFF = timedelta(minutes=10)  # a tenant this server cannot serve waits this long
IDLE_BATCHES_PER_SCAN = 50  # abandoned-cart batches (alerts.CART_SCAN_BATCH carts each) per scan

# What a name resolves to: (host, port) to its addresses, as getaddrinfo answers.
Resolver = Callable[[str, int], Awaitable[list[webhooks.IPAddress]]]


def lease_for(timeout: float) -> timedelta:
    """How long a process holds the messages it claimed: longer than a delivery can take, so
    that a lease runs out only when its process stalled or died. Posting takes at most
    `timeout` (every endpoint at once, each within that deadline); three times that and 5 s
    more leave the two transactions around it ample time."""
    return timedelta(seconds=3 * timeout + 5)


async def resolve(host: str, port: int) -> list[webhooks.IPAddress]:
    """The addresses the system's resolver gives `host` (an address literal is its own)."""
    answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ip_address(str(sockaddr[0]).partition("%")[0]) for *_, sockaddr in answers]


class RefusedAddress(Exception):
    """The endpoint's name has an address that is not public, or none."""


class AlertWorker:
    """One process's loop; `start()` in the app's lifespan, `close()` at shutdown."""

    def __init__(
        self,
        database: Database,
        contexts: TenantContexts,
        sealer: Sealer,
        *,
        poll_seconds: float,
        batch: int,
        timeout: float,
        abandoned_scan_seconds: float,
        retry_base_seconds: float = messages.RETRY_BASE_SECONDS,
        metrics: Metrics | None = None,
        allow_private_networks: bool | None = None,
        resolver: Resolver = resolve,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.database = database
        self.contexts = contexts
        self.sealer = sealer
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.abandoned_scan_seconds = abandoned_scan_seconds
        self.retry_base_seconds = retry_base_seconds
        self.metrics = metrics
        self.timeout = timeout
        # None: as the process's settings say (OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS).
        self.allow_private_networks = webhooks.private_networks_allowed(allow_private_networks)
        self.resolver = resolver
        self.lease = lease_for(timeout)
        if self.allow_private_networks:
            self._http = httpx.AsyncClient(timeout=timeout, transport=transport)
        else:
            # Each post goes to the address checked for its name (`_request`). A connection
            # is never kept for the next post: a pool keys connections by address, so a post
            # to another name at the same address would go over a TLS session made, and a
            # certificate checked, for the first. No proxies from the environment either: a
            # proxy would resolve the name itself, and its TLS tunnel names the address.
            self._http = httpx.AsyncClient(
                timeout=timeout,
                transport=transport,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_scan = 0.0
        # Per tenant, where its abandoned-cart scan goes on from (services/alerts.py). Each
        # process keeps its own: another process's scan of the same carts queues nothing twice.
        self._idle_after: dict[str, alerts.IdleCursor | None] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        """Look for due work now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        await tasks.stop(self._task)
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.tick() >= self.batch
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("alert delivery pass failed", extra={"error_type": type(exc).__name__})
                busy = False
            if busy:
                continue  # more may be due: no wait
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def tick(self) -> int:
        """One pass: pace due restocks, scan for abandoned carts (now and then), and decide and
        deliver up to `batch` due messages. Returns how many messages it took."""
        now = utcnow()
        await self._pace(now)
        if time.monotonic() - self._last_scan >= self.abandoned_scan_seconds:
            self._last_scan = time.monotonic()
            await self._abandoned(now)
        async with self.database.transaction(write=True) as conn:
            claimed = await messages.claim(conn, now, self.batch, self.lease)
        by_tenant: dict[str, list[messages.Claimed]] = {}
        for one in claimed:
            by_tenant.setdefault(one.tenant_id, []).append(one)
        for batch in by_tenant.values():
            await self._deliver(batch)
        return len(claimed)

    async def _pace(self, now: datetime) -> None:
        async with self.database.transaction(write=True) as conn:
            for due in await alerts.due_restocks(conn, now):
                try:
                    context = await self.contexts.get(conn, due.tenant_id)
                except Problem:
                    # A tenant this server cannot serve (its secret does not unseal): put its
                    # restock back a while, so that it does not stand before other tenants'.
                    log.warning(
                        "restock pacing failed for a tenant", extra={"tenant_id": due.tenant_id}
                    )
                    await alerts.postpone_restock(conn, due, now + UNSERVABLE_BACKOFF)
                    continue
                await alerts.pace(conn, context, due.item, due.store_key, now)

    async def _abandoned(self, now: datetime) -> None:
        async with self.database.transaction(write=True) as conn:
            await inventory.forget_ops(conn, now)
        async with self.database.transaction(write=False) as conn:
            tenant_ids = [row.id for row in await conn.execute(tenants.select())]
        for tenant_id in tenant_ids:
            async with self._each_tenant(tenant_id, "abandoned-cart scan"):
                # Batch after batch, each its own transaction, until the scan has caught up
                # (or IDLE_BATCHES_PER_SCAN batches: the rest waits for the next scan).
                for _ in range(IDLE_BATCHES_PER_SCAN):
                    before = self._idle_after.get(tenant_id)
                    async with self.database.transaction(write=True) as conn:
                        context = await self.contexts.get(conn, tenant_id)
                        _, after = await alerts.abandoned_carts(conn, context, now, before)
                    self._idle_after[tenant_id] = after  # once its messages are committed
                    if after == before:
                        break

    @contextlib.asynccontextmanager
    async def _each_tenant(self, tenant_id: str, work: str) -> AsyncIterator[None]:
        """One tenant's share of a pass: what fails there (a tenant whose secret this server
        cannot unseal, say) is logged and skipped, and the other tenants' work goes on."""
        try:
            yield
        except Exception as exc:
            log.warning(
                f"{work} failed for a tenant",
                extra={"tenant_id": tenant_id, "error_type": type(exc).__name__},
            )

    async def _deliver(self, claimed: list[messages.Claimed]) -> None:
        try:
            await self._deliver_batch(claimed)
        except Exception as exc:
            # Left leased: claimed again when the lease runs out.
            log.warning(
                "messages could not be processed",
                extra={"count": len(claimed), "error_type": type(exc).__name__},
            )

    async def _deliver_batch(self, claimed: list[messages.Claimed]) -> None:
        """Decide a tenant's claimed messages in one transaction, post those to send at
        once, and record the outcomes in one more. Outcomes are counted once committed."""
        now = utcnow()
        tenant_id, token = claimed[0].tenant_id, claimed[0].token
        kinds = {one.id: one.kind for one in claimed}
        mine = {one.id: one for one in claimed}
        decided_outcomes: list[tuple[str, str]] = []
        async with self.database.transaction(write=True) as conn:
            context = await self.contexts.get(conn, tenant_id)
            max_attempts = context.settings.notifications.max_attempts
            decided = await messages.decide_many(conn, context, claimed, now, self.lease)
            sends: list[tuple[str, messages.Send]] = []
            targets: dict[str, list[webhooks.Target]] = {}
            # `decided` holds only messages whose lease decide_many asserted again (and
            # locked); each outcome is still counted only where it was written.
            for message_id, decision in decided.items():
                if isinstance(decision, messages.Skipped):
                    if await messages.skip(conn, mine[message_id], decision.reason, now):
                        decided_outcomes.append((message_id, f"skipped:{decision.reason}"))
                elif isinstance(decision, messages.Delayed):
                    if await messages.delay(
                        conn, mine[message_id], decision.until, decision.reason, now
                    ):
                        decided_outcomes.append((message_id, f"delayed:{decision.reason}"))
                else:
                    kind = str(decision.payload["data"]["kind"])
                    if kind not in targets:
                        targets[kind] = await webhooks.targets(conn, self.sealer, tenant_id, kind)
                    sends.append((message_id, decision))
        for message_id, outcome in decided_outcomes:
            self._count(kinds[message_id], outcome)
        errors = await asyncio.gather(
            *(
                self._post(message_id, targets[str(send.payload["data"]["kind"])], send.payload)
                for message_id, send in sends
            )
        )
        finished = utcnow()
        taken = [sent for sent, error in zip(sends, errors, strict=True) if error is None]
        # The shop has these messages now: recording them must not be lost to a lock race
        # (a deadlock with pacing or a request), or they stay leased and are sent again
        # when the lease runs out. So the recording runs again, as a request would.
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            recorded_outcomes: list[tuple[str, str]] = []
            try:
                async with self.database.transaction(write=True) as conn:
                    recorded = await messages.sent_many(conn, tenant_id, token, taken, finished)
                    for (message_id, _), error in zip(sends, errors, strict=True):
                        if error is None:
                            if message_id in recorded:
                                recorded_outcomes.append((message_id, "sent"))
                        elif await messages.failed(
                            conn,
                            mine[message_id],
                            error,
                            max_attempts,
                            finished,
                            self.retry_base_seconds,
                        ):
                            recorded_outcomes.append((message_id, "delivery_failed"))
            except DBAPIError as exc:
                if attempt == TRANSACTION_ATTEMPTS or not lost_a_lock_race(exc):
                    raise
                log.info("recording sent messages again after a lock race")
                continue
            break
        for message_id, outcome in recorded_outcomes:
            self._count(kinds[message_id], outcome)

    def _count(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.alert_messages.labels(kind, outcome).inc()

    async def _post(
        self, message_id: str, targets: list[webhooks.Target], payload: dict[str, object]
    ) -> str | None:
        """Post the signed message to every target at once; None if all took it, else what
        failed (the first failing target's reason)."""
        if not targets:
            return "no webhook endpoint takes this kind of message"
        failures = await asyncio.gather(
            *(self._post_one(message_id, target, payload) for target in targets)
        )
        return next((failure for failure in failures if failure is not None), None)

    async def _post_one(
        self, message_id: str, target: webhooks.Target, payload: dict[str, object]
    ) -> str | None:
        """Post to one target within `timeout` in all; None if it took the message."""
        content, headers = webhooks.signed_request(target, message_id, payload, utcnow())
        try:
            async with asyncio.timeout(self.timeout):
                request = await self._request(target.url, content, headers)
                response = await self._http.send(request)
        except RefusedAddress:
            return f"{target.endpoint_id}: {webhooks.NOT_PUBLIC}"
        except TimeoutError:
            return f"{target.endpoint_id}: no answer within {self.timeout:g} s"
        except Exception as exc:  # httpx's errors, and any other: recorded, never a wedge
            return f"{target.endpoint_id}: {type(exc).__name__}"
        if not 200 <= response.status_code < 300:
            return f"{target.endpoint_id}: HTTP {response.status_code}"
        return None

    async def _request(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Request:
        """The POST to `url`; unless private networks are allowed, addressed to the public
        address its name resolved to (the name stays the Host and the TLS server name)."""
        if self.allow_private_networks:
            return self._http.build_request("POST", url, content=content, headers=headers)
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            addresses = await self.resolver(host, port)
        # socket.gaierror, or a name IDNA cannot encode (a label over 63 characters): said
        # the same as a private answer.
        except (OSError, UnicodeError) as exc:
            raise RefusedAddress from exc
        if not addresses or not all(webhooks.is_public(address) for address in addresses):
            raise RefusedAddress
        # httpcore's `sni_hostname` extension: the TLS handshake names, and verifies the
        # certificate against, the endpoint's name rather than the address connected to.
        return self._http.build_request(
            "POST",
            parsed.copy_with(host=str(addresses[0])),
            content=content,
            headers={**headers, "host": parsed.netloc.decode("ascii")},
            extensions={"sni_hostname": host},
        )


async def run_until_idle(worker: AlertWorker, passes: int = 50) -> None:
    """Run passes until one finds nothing to do (tests and the CLI's `alerts run`)."""
    for _ in range(passes):
        if not await worker.tick():
            return
