"""Background delivery of tracked events, in batches, for `Client` (a thread) and
`AsyncClient` (a task).

A full queue makes `track` wait rather than drop anything. A batch that cannot be delivered
(server down, 5xx after the client's own retries) is retried with backoff until it is, or until
`close` gives up; events the server rejects as invalid are counted and logged, never retried.
The queue is in memory: a process that dies loses what it holds (the durable outbox is the
answer to that).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnisdk.errors import APIConnectionError, APIError, RateLimitedError, ServerError
from omnisdk.models import BatchResult, EventRejection
from omnisdk.resources.events import batch_call

if TYPE_CHECKING:
    from omnisdk._async import AsyncClient
    from omnisdk._sync import Client

log = logging.getLogger("omnisdk.events")

DEFAULT_BATCH_SIZE = 250
DEFAULT_LINGER = 0.05
DEFAULT_MAX_QUEUE = 100_000
RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
Event = dict[str, Any]


@dataclass
class SenderStatus:
    """What the sender did so far: for operators and tests."""

    delivered: int = 0
    duplicates: int = 0
    rejected: list[EventRejection] = field(default_factory=list)
    failed_attempts: int = 0
    last_error: str | None = None


def batch_key(batch: list[Event]) -> str:
    """The same batch always gets the same idempotency key, so its retries apply once."""
    digest = hashlib.sha256("\n".join(e["event_id"] for e in batch).encode())
    return f"events-{digest.hexdigest()[:40]}"


def retryable(error: Exception) -> bool:
    return isinstance(error, APIConnectionError | ServerError | RateLimitedError)


def record(status: SenderStatus, result: BatchResult, batch: list[Event]) -> None:
    status.delivered += result.accepted
    status.duplicates += result.duplicates
    for rejection in result.rejected:
        status.rejected.append(rejection)
        log.warning(
            "event rejected by the server",
            extra={
                "event_id": rejection.event_id,
                "event": batch[rejection.index]["name"],
                "problem": rejection.type,
                "detail": rejection.detail,
            },
        )


def record_unsendable(status: SenderStatus, error: APIError, batch: list[Event]) -> None:
    for index, event in enumerate(batch):
        status.rejected.append(
            EventRejection(
                index=index, event_id=event["event_id"], type=error.type, detail=str(error)
            )
        )
    log.error(
        "event batch refused by the server", extra={"events": len(batch), "problem": error.type}
    )


class EventSender:
    """The sync client's sender: a daemon thread draining a bounded queue in batches."""

    def __init__(
        self,
        client: Client,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger: float = DEFAULT_LINGER,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self._client = client
        self.batch_size = batch_size
        self.linger = linger
        self._queue: queue.Queue[Event] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.status = SenderStatus()

    def put(self, event: Event) -> None:
        self._ensure_running()
        self._queue.put(event)

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                # Forked: the parent's thread does not exist here; start our own.
                self._pid = os.getpid()
                self._thread = None
            if self._thread is None or not self._thread.is_alive():
                self._closing.clear()
                self._thread = threading.Thread(
                    target=self._run, name="omnisdk-events", daemon=True
                )
                self._thread.start()

    def _next_batch(self) -> list[Event]:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.linger
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                self._deliver(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _deliver(self, batch: list[Event]) -> None:
        attempt = 0
        call = batch_call(batch, batch_key(batch))
        while True:
            try:
                record(self.status, self._client.execute(call), batch)
                return
            except APIError as error:
                if not retryable(error):
                    record_unsendable(self.status, error, batch)
                    return
                self._note_failure(error)
            except APIConnectionError as error:
                self._note_failure(error)
            if self._closing.wait(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]):
                # Closing and still failing: the rest stays undelivered, and is reported.
                self._note_failure(RuntimeError("closed before the server took these events"))
                return
            attempt += 1

    def _note_failure(self, error: Exception) -> None:
        self.status.failed_attempts += 1
        self.status.last_error = f"{type(error).__name__}: {error}"

    @property
    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every queued event is delivered (or `timeout`); return how many are left."""
        done = self._queue.all_tasks_done
        deadline = None if timeout is None else time.monotonic() + timeout
        with done:
            while self._queue.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                done.wait(remaining)
            return self._queue.unfinished_tasks

    def close(self, timeout: float) -> int:
        left = self.flush(timeout)
        self._closing.set()
        if left:
            log.warning("closing with events not delivered", extra={"events": left})
        return left


class AsyncEventSender:
    """The async client's sender: a task draining a bounded asyncio queue in batches."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger: float = DEFAULT_LINGER,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self._client = client
        self.batch_size = batch_size
        self.linger = linger
        self._max_queue = max_queue
        self._queue: asyncio.Queue[Event] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._outstanding = 0  # queued or being delivered
        self.status = SenderStatus()

    def _running_queue(self) -> asyncio.Queue[Event]:
        if self._queue is None:
            self._queue = asyncio.Queue(self._max_queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(self._queue), name="omnisdk-events")
        return self._queue

    async def put(self, event: Event) -> None:
        await self._running_queue().put(event)
        self._outstanding += 1

    async def _next_batch(self, events: asyncio.Queue[Event]) -> list[Event]:
        batch = [await events.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger
        while len(batch) < self.batch_size:
            try:
                batch.append(await asyncio.wait_for(events.get(), max(deadline - loop.time(), 0)))
            except TimeoutError:
                break
        return batch

    async def _run(self, events: asyncio.Queue[Event]) -> None:
        while True:
            batch = await self._next_batch(events)
            try:
                await self._deliver(batch)
            finally:
                self._outstanding -= len(batch)
                for _ in batch:
                    events.task_done()

    async def _deliver(self, batch: list[Event]) -> None:
        call = batch_call(batch, batch_key(batch))
        attempt = 0
        while True:
            try:
                record(self.status, await self._client.execute(call), batch)
                return
            except APIError as error:
                if not retryable(error):
                    record_unsendable(self.status, error, batch)
                    return
                self._note_failure(error)
            except APIConnectionError as error:
                self._note_failure(error)
            if self._closing:
                return
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1

    def _note_failure(self, error: Exception) -> None:
        self.status.failed_attempts += 1
        self.status.last_error = f"{type(error).__name__}: {error}"

    @property
    def pending(self) -> int:
        return self._outstanding

    async def flush(self, timeout: float | None = None) -> int:
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
        return self.pending

    async def close(self, timeout: float) -> int:
        left = await self.flush(timeout)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if left:
            log.warning("closing with events not delivered", extra={"events": left})
        return left
