"""The durable outbox on its own: order, durability, limits and their policies, dead letters."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from omnisdk.outbox import Outbox, OutboxFull


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
