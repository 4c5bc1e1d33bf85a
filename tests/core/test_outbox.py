"""The durable outbox on its own: order, durability, limits and their policies, dead letters."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omnisdk.outbox import Outbox, OutboxFull, OutboxWriteError


def fill(outbox: Outbox, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        outbox.append("event", f"k{n}", {"n": n})


def test_items_come_back_in_append_order_and_survive_reopening(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    fill(outbox, 50)
    assert outbox.sync(5)
    outbox.close()
    again = Outbox(tmp_path / "o.sqlite3")
    assert [item.payload["n"] for item in again.head(100)] == list(range(50))
    again.ack([item.seq for item in again.head(10)])
    assert again.status().depth == 40
    again.close()


def test_sync_durability_returns_only_once_on_disk(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", durability="sync")
    outbox.append("event", "only", {"n": 1})
    # Nothing waits in memory: another connection already sees it.
    other = Outbox(tmp_path / "o.sqlite3")
    assert [item.key for item in other.head(10)] == ["only"]
    other.close()
    outbox.close()


def test_the_same_key_is_queued_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.append("event", "same", {"n": 1})
    outbox.append("event", "same", {"n": 2})
    outbox.sync(5)
    assert [item.payload for item in outbox.head(10)] == [{"n": 1}]
    assert outbox.status().depth == 1
    outbox.close()


def test_full_outbox_raises_under_the_raise_policy(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_items=10, full_policy="raise")
    fill(outbox, 10)
    with pytest.raises(OutboxFull):
        outbox.append("event", "one-too-many", {})
    assert outbox.status().depth == 10
    outbox.close()


def test_full_outbox_drops_the_oldest_and_counts_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_items=10, full_policy="drop_oldest")
    fill(outbox, 10)
    outbox.sync(5)
    with caplog.at_level(logging.WARNING, logger="omnisdk.outbox"):
        fill(outbox, 3, start=10)
    outbox.sync(5)
    assert [item.payload["n"] for item in outbox.head(100)] == list(range(3, 13))
    assert outbox.status().dropped == 3
    assert sum("dropped the oldest" in r.message for r in caplog.records) == 3
    assert "omnisdk_outbox_dropped_total 3" in outbox.metrics()
    outbox.close()


def test_full_outbox_blocks_until_room_or_timeout(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_items=5, full_policy="block", block_timeout=0.2)
    fill(outbox, 5)
    outbox.sync(5)
    with pytest.raises(OutboxFull):
        outbox.append("event", "waits-too-long", {})
    patient = Outbox(tmp_path / "p.sqlite3", max_items=5, full_policy="block", block_timeout=30)
    fill(patient, 5)
    patient.sync(5)
    appended = threading.Event()

    def append_when_room() -> None:
        patient.append("event", "waits", {})
        appended.set()

    waiter = threading.Thread(target=append_when_room)
    waiter.start()
    assert not appended.wait(0.2)  # still full: it waits
    patient.ack([patient.head(1)[0].seq])
    assert appended.wait(10)
    waiter.join()
    patient.sync(5)
    assert patient.status().depth == 5
    outbox.close()
    patient.close()


def test_buried_items_become_dead_letters_with_their_error(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    fill(outbox, 3)
    outbox.sync(5)
    outbox.bury("k1", '{"type": "invalid-event"}')
    assert [item.key for item in outbox.head(10)] == ["k0", "k2"]
    (dead,) = outbox.dead_letters()
    assert (dead.key, dead.payload, dead.error) == ("k1", {"n": 1}, '{"type": "invalid-event"}')
    assert outbox.status().dead_letters == 1
    outbox.close()


def test_one_process_at_a_time_holds_the_sender_lease(tmp_path: Path) -> None:
    first, second = Outbox(tmp_path / "o.sqlite3"), Outbox(tmp_path / "o.sqlite3")
    assert first.take_lease("a")
    assert not second.take_lease("b")
    assert first.take_lease("a")
    first.release_lease("a")
    assert second.take_lease("b")
    first.close()
    second.close()


def test_status_reports_depth_and_oldest_age(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    assert outbox.status().oldest_age_seconds is None
    fill(outbox, 4)
    status = outbox.status()
    assert status.depth == 4 and status.oldest_age_seconds is not None
    assert "omnisdk_outbox_depth 4" in outbox.metrics()
    outbox.close()


class FailingDisk:
    """A connection whose writes fail while `full` is set, as on a full or read-only disk."""

    def __init__(self, real: sqlite3.Connection, error: str = "database or disk is full") -> None:
        self.real = real
        self.full = True
        self.error = error

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        if self.full:
            raise sqlite3.OperationalError(self.error)
        return self.real.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.005)


@pytest.mark.parametrize(
    "error", ["database or disk is full", "attempt to write a readonly database"]
)
def test_a_failed_write_keeps_the_items_retries_and_raises_until_it_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: str
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    disk = FailingDisk(outbox._db, error)  # type: ignore[arg-type]
    outbox._db = disk  # type: ignore[assignment]
    returned: list[str] = []
    with caplog.at_level(logging.ERROR, logger="omnisdk.outbox"):
        for n in range(20):
            try:
                outbox.append("event", f"k{n}", {"n": n})
                returned.append(f"k{n}")
            except OutboxWriteError:
                pass
            if n == 4:
                wait_for(lambda: outbox.status().write_failures > 0)
    assert returned == [f"k{n}" for n in range(5)]  # every append after the failure raised
    with pytest.raises(OutboxWriteError, match=error):
        outbox.sync(1)
    assert outbox.status().unwritten == 5
    assert "outbox write failed" in caplog.text
    disk.full = False  # space again: the kept group goes to disk by itself
    wait_for(lambda: outbox.unwritten() == 0)
    assert outbox.sync(5)
    assert [item.key for item in outbox.head(100)] == returned
    outbox.append("event", "after", {})  # and appends work again
    outbox.close()


def test_sync_durability_tells_each_caller_of_a_failed_write(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", durability="sync")
    disk = FailingDisk(outbox._db)  # type: ignore[arg-type]
    outbox._db = disk  # type: ignore[assignment]
    with pytest.raises(OutboxWriteError):
        outbox.append("event", "lost", {})
    disk.full = False
    outbox.append("event", "kept", {})
    assert [item.key for item in outbox.head(10)] == ["kept"]
    assert outbox.status().depth == 1
    outbox.close()


def test_drop_oldest_drops_only_analytics_events_never_money_or_consent(tmp_path: Path) -> None:
    outbox = Outbox(
        tmp_path / "o.sqlite3", max_items=3, full_policy="drop_oldest", block_timeout=0.1
    )
    outbox.append("redemption", "r1", {})
    outbox.append("consent", "c1", {})
    outbox.append("event", "e1", {})
    outbox.append("event", "e2", {})  # e1 goes
    outbox.append("redemption", "r2", {})  # e2 goes
    outbox.append("event", "e3", {})  # nothing droppable is queued: the new event goes
    with pytest.raises(OutboxFull):
        outbox.append("redemption", "r3", {})  # a refund is never dropped: it waits, then raises
    outbox.sync(5)
    assert [item.key for item in outbox.head(10)] == ["r1", "c1", "r2"]
    assert outbox.status().dropped == 3
    outbox.close()


def test_try_append_never_waits(tmp_path: Path) -> None:
    full = Outbox(tmp_path / "o.sqlite3", max_items=2, full_policy="block")
    assert not full.try_append("event", "a", {})  # the first starts the committer: a thread
    full.append("event", "a", {})
    assert full.try_append("event", "b", {})
    assert not full.try_append("event", "c", {})  # it would wait for room
    synced = Outbox(tmp_path / "s.sqlite3", durability="sync")
    assert not synced.try_append("event", "d", {})  # it would wait for the disk
    full.sync(5)
    assert [item.key for item in full.head(10)] == ["a", "b"]
    full.close()
    synced.close()


def test_nothing_waits_in_memory_longer_than_the_unsynced_window(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_unsynced=0.01)
    with outbox._db_lock:  # a disk that takes its time: "first" cannot be written meanwhile
        outbox.append("event", "first", {})
        time.sleep(0.02)  # now "first" has waited longer than the 10 ms window
        assert not outbox.try_append("event", "second", {})
    outbox.append("event", "second", {})  # waits until "first" is on disk
    assert [item.key for item in outbox.head(10)][:1] == ["first"]
    outbox.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_writes_its_own_items_and_not_the_parents(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", commit_window=0.5)
    outbox.append("event", "parent", {})  # still in the parent's memory at the fork
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            outbox.append("event", "child", {})
            code = 0 if outbox.sync(10) and outbox.status().unwritten == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    outbox.sync(10)
    assert sorted(item.key for item in outbox.head(10)) == ["child", "parent"]
    outbox.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_keeps_writing_after_the_parent_closes_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path)
    outbox.append("event", "parent", {})
    outbox.sync(5)
    child_ready, parent_closed = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # no connection crossed the fork: the parent closing cannot take our WAL away
        code = 1
        try:
            for n in range(20):
                outbox.append("event", f"child-{n}", {})
            outbox.sync(10)
            os.write(child_ready[1], b"x")
            os.read(parent_closed[0], 1)
            for n in range(20, 40):
                outbox.append("event", f"child-{n}", {})
            code = 0 if outbox.sync(10) else 2
            outbox.close()
        finally:
            os._exit(code)
    os.read(child_ready[0], 1)
    outbox.close()
    os.write(parent_closed[1], b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with sqlite3.connect(path) as db:
        keys = {key for (key,) in db.execute("SELECT key FROM items")}
    assert keys == {"parent", *(f"child-{n}" for n in range(40))}


@pytest.mark.parametrize("key", ["bad\ud800", "nul\x00"])
def test_a_key_sqlite_cannot_store_is_refused_at_append_and_the_rest_go_on(
    tmp_path: Path, key: str
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.append("event", "before", {})
    with pytest.raises(ValueError):
        outbox.append("event", key, {})
    outbox.append("event", "after", {})
    assert outbox.sync(5)
    assert [item.key for item in outbox.head(10)] == ["before", "after"]
    outbox.close()


def test_appends_racing_close_are_either_on_disk_or_refused(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    returned: list[str] = []
    refused: list[str] = []
    started = threading.Event()

    def produce() -> None:
        for n in range(1_000_000):
            try:
                outbox.append("event", f"k{n}", {})
                returned.append(f"k{n}")
            except OutboxWriteError:
                refused.append(f"k{n}")
                return
            started.set()

    producer = threading.Thread(target=produce)
    producer.start()
    started.wait(10)
    outbox.close()
    producer.join(10)
    assert len(refused) == 1  # the producer was told, once, and stopped
    with sqlite3.connect(tmp_path / "o.sqlite3") as db:
        stored = [key for (key,) in db.execute("SELECT key FROM items ORDER BY seq")]
    assert stored == returned


def test_the_bound_counts_what_other_processes_sent_meanwhile(tmp_path: Path) -> None:
    producer = Outbox(tmp_path / "o.sqlite3", max_items=5, full_policy="raise")
    sender = Outbox(tmp_path / "o.sqlite3")  # another process, holding the sender lease
    fill(producer, 5)
    producer.sync(5)
    sender.ack([item.seq for item in sender.head(10)])
    fill(producer, 5, start=5)  # the file is empty again: room for five more, none refused
    producer.sync(5)
    assert [item.payload["n"] for item in sender.head(10)] == [5, 6, 7, 8, 9]
    with pytest.raises(OutboxFull):
        producer.append("event", "sixth", {})
    producer.close()
    sender.close()
