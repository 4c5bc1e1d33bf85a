"""The delivery rules without I/O: a refused batch is split until its bad event is alone, so
only that one becomes a dead letter; batches stay under the body limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from omnisdk._delivery import Courier, _until
from omnisdk.errors import APIConnectionError, ValidationError
from omnisdk.models import BatchResult
from omnisdk.outbox import Outbox


def queued(tmp_path: Path, keys: list[str], padding: int = 0) -> Outbox:
    outbox = Outbox(tmp_path / "o.sqlite3")
    for key in keys:
        outbox.append("event", key, {"name": "x", "event_id": key, "pad": "p" * padding})
    outbox.sync(5)
    return outbox


def deliver_all(outbox: Outbox, courier: Courier, refuses: set[str]) -> tuple[list[str], int]:
    """Run the courier against a server that refuses any batch holding a key of `refuses`."""
    buried: list[str] = []
    requests = 0
    while (shipment := courier.next_shipment(outbox.head(500, ("event",)))) is not None:
        requests += 1
        keys = [item.key for item in shipment.items]
        if refuses & set(keys):
            bury, delay = courier.failed(shipment, ValidationError(413, {"type": "x"}))
            assert delay == 0.0
        else:
            ack, bury = courier.delivered(shipment, BatchResult(accepted=len(keys), duplicates=0))
            outbox.ack(ack)
        for key, _problem in bury:
            outbox.bury(key, _problem)
            buried.append(key)
    return buried, requests


def test_a_refused_batch_is_split_until_only_the_bad_event_is_a_dead_letter(
    tmp_path: Path,
) -> None:
    keys = [f"k{n}" for n in range(300)]
    outbox = queued(tmp_path, keys)
    courier = Courier(outbox)
    buried, requests = deliver_all(outbox, courier, {"k137"})
    assert buried == ["k137"]
    assert courier.status.delivered == 299 and outbox.status().depth == 0
    assert requests < 40  # halving, not one request per event
    outbox.close()


def test_batches_are_sized_by_bytes_under_the_body_limit(tmp_path: Path) -> None:
    outbox = queued(tmp_path, [f"k{n}" for n in range(100)], padding=4_000)
    courier = Courier(outbox, max_bytes=64_000)
    shipment = courier.next_shipment(outbox.head(500, ("event",)))
    assert shipment is not None and shipment.call is not None
    body = shipment.call.body
    assert body is not None and len(body) <= 64_000
    following = outbox.head(500, ("event",))[len(shipment.items)]
    assert len(body) + len(following.raw) + 1 > 64_000  # as full as the limit allows
    outbox.close()


def test_the_idempotency_key_is_the_body_digest(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    one, other = queued(first, ["same"]), queued(second, ["same"], padding=1)
    calls = [Courier(o).next_shipment(o.head(10, ("event",))) for o in (one, other)]
    keys = [c.call.idempotency_key for c in calls if c is not None and c.call is not None]
    assert len(keys) == 2 and keys[0] != keys[1]  # same event id, different bodies
    again = Courier(one).next_shipment(one.head(10, ("event",)))
    assert again is not None and again.call is not None
    assert again.call.idempotency_key == keys[0]  # a retry reuses its key
    one.close()
    other.close()


def test_an_unreachable_server_backs_off_and_buries_nothing(tmp_path: Path) -> None:
    outbox = queued(tmp_path, ["a", "b"])
    courier = Courier(outbox)
    shipment = courier.next_shipment(outbox.head(500, ("event",)))
    assert shipment is not None
    bury, delay = courier.failed(shipment, APIConnectionError("down"))
    assert bury == [] and delay > 0 and courier.status.breaker == "open"
    outbox.close()


async def test_a_pause_cancelled_as_its_event_is_set_ends_cancelled() -> None:
    """The async courier's waits end with the cancellation that arrives as they are woken.
    `asyncio.wait_for` on Python 3.11 returned instead (the woken wait had finished first):
    the courier went on, and asyncio.run, which cancels every task at its end and waits for
    them, never returned."""
    woken = asyncio.Event()
    pause = asyncio.create_task(_until(woken, 30))
    await asyncio.sleep(0)  # the pause is waiting
    woken.set()
    pause.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pause
    assert pause.cancelled()
