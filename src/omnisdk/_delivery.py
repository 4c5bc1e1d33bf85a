"""Delivery of the outbox to the server: a thread for `Client`, a task for `AsyncClient`.

What to send and what to do with each answer is decided once (`Courier`, no I/O); the two
drivers only execute it. Items go out in append order (so in order per customer): a run of
events as one batch request, a queued redemption as its own request. An item the server
refuses for good becomes a dead letter; when the server is away, the courier backs off
(0.1 s up to 30 s) — a circuit breaker whose next attempt is the half-open probe — and picks up
by itself when the server answers again, or after a restart from what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnisdk._base import Call
from omnisdk._lifecycle import cut_short, start_daemon
from omnisdk.core.events import MAX_BATCH_BYTES
from omnisdk.errors import (
    APIConnectionError,
    APIError,
    ConflictError,
    OutboxWriteError,
    ValidationError,
)
from omnisdk.models import BatchResult, RedeemRequest, Redemption
from omnisdk.outbox import Item, Outbox
from omnisdk.resources.consent import CONSENT, delivery_call
from omnisdk.resources.events import EVENT, raw_batch_call
from omnisdk.resources.inventory import INVENTORY
from omnisdk.resources.inventory import delivery_call as inventory_call
from omnisdk.resources.orders import ORDER
from omnisdk.resources.orders import delivery_call as order_call
from omnisdk.resources.returns import REDEMPTION, redeem_call

if TYPE_CHECKING:
    from omnisdk._async import AsyncClient
    from omnisdk._sync import Client

log = logging.getLogger("omnisdk.delivery")

KINDS = (EVENT, REDEMPTION, CONSENT, ORDER, INVENTORY)
MAX_EVENTS_PER_REQUEST = 500
_ENVELOPE_BYTES = len('{"events":[]}')
# The outbox's own disk failing (full, read-only): the sender waits and tries again.
DISK_ERRORS = (sqlite3.Error, OSError, OutboxWriteError)
BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
IDLE_WAIT = 0.5
LINGER = 0.05  # a short wait for a fuller batch: fewer, larger requests while a burst lasts


@dataclass
class DeliveryStatus:
    delivered: int = 0
    duplicates: int = 0
    refused: int = 0
    failed_attempts: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    confirmed_redemptions: list[Redemption] = field(default_factory=list)

    @property
    def breaker(self) -> str:
        """closed: sending; open: the server failed and the courier is waiting to retry."""
        return "open" if self.consecutive_failures else "closed"


def _past(deadline: float | None) -> bool:
    """A flush's time is up: its deadline passed, or SIGTERM cut its exit hook short."""
    return cut_short() or (deadline is not None and time.monotonic() >= deadline)


def _final(error: Exception) -> bool:
    """The server refused these items as they are: sending them again cannot help. Anything
    else (no answer, 5xx, 429, a revoked or under-scoped key, 404) is waited out and retried:
    an operator's fix must not find the queue emptied into dead letters."""
    return isinstance(error, ValidationError | ConflictError)


def _size(item: Item) -> int:
    return len(item.raw) if item.raw.isascii() else len(item.raw.encode())


Pause = Callable[[float], None]


@dataclass(frozen=True)
class Shipment:
    """One request to make for a run of outbox items (None: an item no request can carry)."""

    items: list[Item]
    call: Call[Any] | None
    problem: str | None = None


class Courier:
    """The delivery rules, without I/O: what to send next, and what an answer means."""

    def __init__(
        self,
        outbox: Outbox,
        batch_size: int = MAX_EVENTS_PER_REQUEST,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.outbox = outbox
        self.batch_size = min(batch_size, MAX_EVENTS_PER_REQUEST)
        self.max_bytes = max_bytes
        # Halved when the server refuses a whole batch, so a bad event ends up alone (and only
        # it becomes a dead letter); doubled back after each batch that goes through.
        self.cap = self.batch_size
        self.status = DeliveryStatus()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    def next_shipment(self, head: list[Item]) -> Shipment | None:
        if not head:
            return None
        first = head[0]
        if first.kind == EVENT:
            run: list[Item] = []
            size = _ENVELOPE_BYTES
            for item in head:
                size += _size(item) + 1
                if item.kind != EVENT or len(run) == self.cap or (run and size > self.max_bytes):
                    break
                run.append(item)
            return Shipment(run, raw_batch_call([i.raw for i in run]))
        if first.kind == REDEMPTION:
            try:
                request = RedeemRequest.model_validate(first.payload["request"])
            except (ValueError, KeyError, TypeError) as error:  # stored by another SDK version
                return Shipment([first], None, f"unreadable queued redemption: {error}")
            return Shipment([first], redeem_call(request))
        if first.kind == CONSENT:
            try:
                return Shipment([first], delivery_call(first.payload, first.key))
            except (ValueError, KeyError, TypeError) as error:
                return Shipment([first], None, f"unreadable queued consent decision: {error!r}")
        if first.kind == ORDER:
            try:
                return Shipment([first], order_call(first.payload))
            except (ValueError, KeyError, TypeError) as error:
                return Shipment([first], None, f"unreadable queued order: {error!r}")
        if first.kind == INVENTORY:
            try:
                return Shipment([first], inventory_call(first.payload, first.key))
            except (ValueError, KeyError, TypeError) as error:
                return Shipment([first], None, f"unreadable queued inventory write: {error!r}")
        raise ValueError(f"no courier for outbox items of kind {first.kind!r}")

    def delivered(self, shipment: Shipment, answer: Any) -> tuple[list[int], list[tuple[str, str]]]:
        """(seqs to acknowledge, (key, error) to bury) after a successful request."""
        self.status.consecutive_failures = 0
        self.cap = min(self.batch_size, self.cap * 2)
        if isinstance(answer, BatchResult):
            refused = {r.index: r for r in answer.rejected}
            self.status.delivered += answer.accepted
            self.status.duplicates += answer.duplicates
            self.status.refused += len(refused)
            bury = [
                (shipment.items[i].key, json.dumps({"type": r.type, "detail": r.detail}))
                for i, r in refused.items()
            ]
            for rejection in refused.values():
                log.warning(
                    "the server refused a queued event; kept as a dead letter: %s (%s)",
                    rejection.detail,
                    rejection.type,
                    extra={"event_id": rejection.event_id},
                )
            ack = [item.seq for i, item in enumerate(shipment.items) if i not in refused]
            return ack, bury
        if isinstance(answer, Redemption):
            self.status.confirmed_redemptions.append(answer)
        self.status.delivered += len(shipment.items)
        return [item.seq for item in shipment.items], []

    def failed(self, shipment: Shipment, error: Exception) -> tuple[list[tuple[str, str]], float]:
        """(key, error) to bury if the refusal is final, and how long to wait before trying on."""
        self.status.failed_attempts += 1
        self.status.last_error = f"{type(error).__name__}: {error}"
        if _final(error) and len(shipment.items) > 1:
            self.cap = max(1, len(shipment.items) // 2)  # split the batch to find the bad ones
            return [], 0.0
        if _final(error):
            assert isinstance(error, APIError)
            (item,) = shipment.items
            self.status.refused += 1
            log.warning(
                "the server refused a queued %s; kept as a dead letter: %s (%s)",
                item.kind,
                error.detail or error.title,
                error.type,
                extra={"key": item.key},
            )
            return [(item.key, json.dumps(error.problem))], 0.0
        if isinstance(error, APIError):
            log.error(
                "the server refused queued items (%s); retrying with backoff", error, extra={}
            )
        self.status.consecutive_failures += 1
        delay = BACKOFF[min(self.status.consecutive_failures - 1, len(BACKOFF) - 1)]
        retry_after = getattr(error, "retry_after", None)
        if retry_after:
            delay = max(delay, retry_after)
        return [], delay

    def unreadable(self, shipment: Shipment) -> list[tuple[str, str]]:
        """(key, error) to bury for an item no request can carry."""
        self.status.refused += len(shipment.items)
        problem = shipment.problem or "unreadable"
        log.error("a queued item cannot be sent; kept as a dead letter: %s", problem, extra={})
        return [(item.key, json.dumps({"detail": problem})) for item in shipment.items]

    def disk_failed(self, error: Exception) -> float:
        """The outbox's own file failed (full, read-only): wait, then try again."""
        self.status.last_error = f"{type(error).__name__}: {error}"
        self.status.consecutive_failures += 1
        return BACKOFF[min(self.status.consecutive_failures - 1, len(BACKOFF) - 1)]


class Delivery:
    """The sync client's courier: a daemon thread; restarted in a child after fork()."""

    def __init__(self, client: Client, outbox: Outbox) -> None:
        self._client = client
        self.outbox = outbox
        self._courier = Courier(outbox)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()  # the process the courier, its events and its thread belong to
        self._events()

    def _events(self) -> None:
        # New in a forked child too: the parent's may have been locked at the fork.
        self._wake = threading.Event()  # something was appended
        self._probe = threading.Event()  # someone waits (flush): try now, even while backing off
        self._stop = threading.Event()
        self._sending = threading.Lock()  # one sender at a time: the thread or a flushing caller

    @property
    def status(self) -> DeliveryStatus:
        return self._courier.status

    def nudge(self) -> None:
        """Something was appended: make sure the thread runs, and let it look soon."""
        if not self._running():
            self._start()
        if not self._wake.is_set():
            self._wake.set()

    def _running(self) -> bool:
        thread = self._thread
        return self._pid == os.getpid() and thread is not None and thread.is_alive()

    def _start(self) -> None:
        # One sender per process. Threads making their first call at once each started one,
        # with a lease holder of its own: the losers waited for the lease holding the send
        # lock, which the winner then waited for until its lease ran out (15 s), sending
        # nothing. Under the client's lock (new in a forked child) the others find it running.
        with self._client._lazy:
            if self._running():
                return
            self._own_process()
            self._stop.clear()
            self._thread = start_daemon(self._run, "omnisdk-delivery")

    def _own_process(self) -> None:
        """In a forked child, a courier of its own (a new holder id) and new events (the
        parent's may have been locked at the fork); under the client's lock (reentrant, new in
        a forked child)."""
        with self._client._lazy:
            if self._pid != os.getpid():
                self._courier = Courier(self.outbox)
                self._events()
                self._thread = None  # the parent's: it does not run here
                self._pid = os.getpid()

    def _run(self) -> None:
        courier = self._courier
        while not self._stop.is_set():
            with self._sending:
                self._guarded_step(courier, self._wait, self._backoff, linger=True)
        with contextlib.suppress(*DISK_ERRORS):
            self.outbox.release_lease(courier.holder)

    def _guarded_step(
        self,
        courier: Courier,
        wait: Pause,
        backoff: Pause,
        *,
        linger: bool,
        execute: Callable[[Call[Any]], Any] | None = None,
    ) -> None:
        """One step; whatever fails, the sender lives on (and says why)."""
        try:
            self._step(courier, wait, backoff, linger=linger, execute=execute)
        except DISK_ERRORS as error:
            log.error("the outbox file failed; the sender tries again: %s", error, extra={})
            with contextlib.suppress(*DISK_ERRORS):
                self.outbox.reclaim()
            backoff(courier.disk_failed(error))
        except Exception as error:  # a bug or a surprise: logged, and retried with backoff
            log.exception("the outbox sender failed; it tries again", extra={})
            backoff(courier.disk_failed(error))

    def _step(
        self,
        courier: Courier,
        wait: Pause,
        backoff: Pause,
        *,
        linger: bool,
        execute: Callable[[Call[Any]], Any] | None = None,
    ) -> None:
        if not self.outbox.take_lease(courier.holder):
            wait(1.0)  # another process of this backend is sending
            return
        head = self.outbox.head(courier.batch_size, KINDS)
        if not head:
            wait(IDLE_WAIT)
            return
        if linger and len(head) < courier.batch_size and not self._probe.is_set():
            self._probe.wait(LINGER)  # a burst may be on its way: wait for a fuller batch
            head = self.outbox.head(courier.batch_size, KINDS)
        shipment = courier.next_shipment(head)
        assert shipment is not None
        if shipment.call is None:  # an item no request can carry: a dead letter at once
            for key, problem in courier.unreadable(shipment):
                self.outbox.bury(key, problem)
            return
        try:
            answer = (execute or self._client.execute)(shipment.call)
        except (APIError, APIConnectionError) as error:
            bury, delay = courier.failed(shipment, error)
            for key, problem in bury:
                self.outbox.bury(key, problem)
            backoff(delay)
            return
        ack, bury = courier.delivered(shipment, answer)
        for key, problem in bury:
            self.outbox.bury(key, problem)
        self.outbox.ack(ack)

    def _backoff(self, delay: float) -> None:
        if delay:
            self._probe.wait(delay)
            self._probe.clear()

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def flush(self, timeout: float | None) -> int:
        """Wait until the outbox is empty or `timeout` passes; return how many items are left.
        Raises OutboxWriteError if what was appended cannot be written to disk. Without a
        sender thread in this process (none started yet, or at interpreter exit, where no
        thread may start) the calling thread delivers."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.outbox.sync(timeout)
        if not self.outbox.status().depth:
            return 0
        if self._running():
            self._wake.set()  # out of an idle wait ...
            self._probe.set()  # ... and of a backoff: try now
            return self._wait_until_empty(deadline)
        return self._deliver_here(deadline)

    def _wait_until_empty(self, deadline: float | None) -> int:
        while True:
            left = self.outbox.status().depth
            if left == 0 or _past(deadline):
                return left
            time.sleep(0.01)

    def _deliver_here(self, deadline: float | None) -> int:
        self._own_process()
        courier = self._courier

        def pause(seconds: float) -> None:
            left = seconds if deadline is None else min(seconds, deadline - time.monotonic())
            if left > 0:
                time.sleep(min(left, 0.1))  # short naps: another process may finish sooner

        # With a deadline, requests go through a twin that tries once and waits at most the
        # time left: retries and long timeouts must not outlast an exit hook's budget.
        hasty = None
        if deadline is not None:
            hasty = self._client._hasty_twin(max(deadline - time.monotonic(), 0.1))
        try:
            while True:
                left = self.outbox.status().depth
                if left == 0 or _past(deadline):
                    return left
                with self._sending:
                    self._guarded_step(
                        courier,
                        pause,
                        pause,
                        linger=False,
                        execute=None if hasty is None else hasty.execute,
                    )
        finally:
            if hasty is not None:
                hasty._discard()
            if not self._running():
                with contextlib.suppress(*DISK_ERRORS):
                    self.outbox.release_lease(courier.holder)

    def close(self, timeout: float) -> int:
        # A forked child that sent nothing still holds its parent's events, which the parent's
        # sender may have had locked at the fork: stopping must set events of its own.
        self._own_process()
        try:
            left = self.flush(timeout)
        finally:
            self._stop.set()
            self._wake.set()
            self._probe.set()
            if self._thread is not None and self._pid == os.getpid():
                self._thread.join(timeout=5)
        if left:
            log.warning(
                "closing with %d items not yet delivered; they stay on disk in %s",
                left,
                self.outbox.path,
                extra={"items": left},
            )
        return left


async def _until(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass. Not `asyncio.wait_for`: on Python 3.11 a
    cancellation that arrives in the turn its wait ends (the event set) is lost, and the
    courier went on for ever, so the loop's end (asyncio.run cancelling every task and
    waiting for them) never came. `asyncio.timeout` keeps the cancellation."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class AsyncDelivery:
    """The async client's courier: a task; every disk operation runs off the event loop."""

    def __init__(self, client: AsyncClient, outbox: Outbox) -> None:
        self._client = client
        self.outbox = outbox
        self._courier = Courier(outbox)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._probe: asyncio.Event | None = None
        self._stopping = False

    @property
    def status(self) -> DeliveryStatus:
        return self._courier.status

    def nudge(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._probe = asyncio.Event()
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="omnisdk-delivery")
        assert self._wake is not None
        self._wake.set()

    async def _wait(self, seconds: float) -> None:
        assert self._wake is not None
        await _until(self._wake, seconds)
        self._wake.clear()

    async def _run(self) -> None:
        courier = self._courier
        while not self._stopping:
            try:
                await self._step(courier)
            except DISK_ERRORS as error:
                log.error("the outbox file failed; the sender tries again: %s", error, extra={})
                with contextlib.suppress(*DISK_ERRORS):
                    await asyncio.to_thread(self.outbox.reclaim)
                await self._backoff(courier.disk_failed(error))
            except Exception as error:  # a bug or a surprise: logged, and retried with backoff
                log.exception("the outbox sender failed; it tries again", extra={})
                await self._backoff(courier.disk_failed(error))

    async def _step(self, courier: Courier) -> None:
        outbox = self.outbox
        if not await asyncio.to_thread(outbox.take_lease, courier.holder):
            await self._wait(1.0)
            return
        # Reading the head and building the request body (joining and hashing up to 1 MiB)
        # happen in a worker thread too: the loop only awaits the answer.
        shipment = await asyncio.to_thread(self._next_shipment, courier)
        if shipment is None:
            await self._wait(IDLE_WAIT)
            return
        if shipment.call is None:  # an item no request can carry: a dead letter at once
            for key, problem in courier.unreadable(shipment):
                await asyncio.to_thread(outbox.bury, key, problem)
            return
        try:
            answer = await self._client.execute(shipment.call)
        except (APIError, APIConnectionError) as error:
            bury, delay = courier.failed(shipment, error)
            for key, problem in bury:
                await asyncio.to_thread(outbox.bury, key, problem)
            await self._backoff(delay)
            return
        ack, bury = courier.delivered(shipment, answer)
        for key, problem in bury:
            await asyncio.to_thread(outbox.bury, key, problem)
        await asyncio.to_thread(outbox.ack, ack)

    def _next_shipment(self, courier: Courier) -> Shipment | None:
        return courier.next_shipment(self.outbox.head(courier.batch_size, KINDS))

    async def _backoff(self, delay: float) -> None:
        if delay:
            assert self._probe is not None
            await _until(self._probe, delay)
            self._probe.clear()

    def stop(self) -> None:
        """Stop the task now, delivering no more (a close cut short: what is left stays on
        disk for the next client)."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def release(self) -> None:
        """Give up the sender lease (at exit, when the loop that ran the task is gone)."""
        with contextlib.suppress(*DISK_ERRORS):
            self.outbox.release_lease(self._courier.holder)

    async def flush(self, timeout: float | None) -> int:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        await asyncio.to_thread(self.outbox.sync, timeout)
        if (await asyncio.to_thread(self.outbox.status)).depth:
            self.nudge()
            assert self._probe is not None
            self._probe.set()
        while True:
            left = (await asyncio.to_thread(self.outbox.status)).depth
            if left == 0 or (deadline is not None and loop.time() >= deadline):
                return left
            await asyncio.sleep(0.01)

    async def close(self, timeout: float) -> int:
        left = await self.flush(timeout)
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.outbox.release_lease, self._courier.holder)
        if left:
            log.warning(
                "closing with items not yet delivered; they stay on disk", extra={"items": left}
            )
        return left
