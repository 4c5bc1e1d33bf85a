"""Faults at the outbox's edges, each ending in exact counts on the server: a full disk (a real
tmpfs; a disk turning read-only is injected in tests/core/test_outbox.py, as Linux refuses to
remount a file system read-only while the outbox holds its files open), events the server would
refuse, batches larger than its body limit, the same
exposure sent by two backends, and an async client whose server comes and goes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import omnisdk
from omnisdk.errors import InvalidRequestError, OutboxWriteError
from omnisdk.testing import ATTRIBUTED_EVENTS, ServerProcess
from tests.e2e.test_outbox_delivery import stored_event_ids


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[ServerProcess, str, Path]]:
    database = tmp_path / "shop.sqlite3"
    with ServerProcess(f"sqlite:///{database}") as server:
        yield server, server.create_tenant(settings=ATTRIBUTED_EVENTS).key("web"), database


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (the machine's root may mount one; elsewhere the injected-error tests in
    tests/core/test_outbox.py cover the same path)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def track_until_refused(client: omnisdk.Client, prefix: str, limit: int) -> list[str]:
    """Track until the outbox says it cannot write; the ids whose track returned."""
    returned: list[str] = []
    for n in range(limit):
        try:
            returned.append(
                client.events.track(
                    "product_viewed",
                    anonymous_id=f"v{n % 7}",
                    event_id=f"{prefix}-{n}",
                    properties={"padding": "x" * 200},
                )
            )
        except OutboxWriteError:
            return returned
    raise AssertionError(f"{limit} events fit on a disk with 1 MB free")


def test_a_full_disk_raises_a_typed_error_and_loses_nothing_that_returned(
    shop: tuple[ServerProcess, str, Path], small_disk: Path
) -> None:
    server, key, database = shop
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * 7_000_000)
    # The server is away while the disk fills, so nothing is delivered and freed meanwhile.
    client = omnisdk.Client(
        "http://127.0.0.1:9", key, channel="web", data_dir=small_disk / "outbox", close_timeout=0.2
    )
    returned = track_until_refused(client, "full", 20_000)
    assert client.outbox.status().write_failures >= 1
    with pytest.raises(OutboxWriteError):
        client.events.flush(0.5)
    ballast.unlink()  # space again: what returned is written from memory, then delivered
    client.close()
    with omnisdk.Client(server.url, key, channel="web", data_dir=small_disk / "outbox") as again:
        assert again.events.flush(60) == 0
        assert again.outbox.dead_letters() == []
    assert sorted(stored_event_ids(database, "full-")) == sorted(returned)


def test_sync_durability_on_a_full_disk_raises_the_typed_error(small_disk: Path) -> None:
    (small_disk / "ballast").write_bytes(b"\0" * 7_900_000)
    client = omnisdk.Client(
        "http://127.0.0.1:9",
        "osk_web_0123456789abcdef_" + "x" * 43,
        data_dir=small_disk / "outbox",
        durability="sync",
        close_timeout=0.1,
    )
    try:
        with pytest.raises(OutboxWriteError):
            for _ in range(20_000):
                client.events.track("product_viewed", anonymous_id="a", properties={"p": "x" * 500})
    finally:
        with contextlib.suppress(OutboxWriteError):
            client.close()


def test_events_the_server_would_refuse_are_refused_at_track_and_the_rest_arrive(
    shop: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    server, key, database = shop
    bad_fields = [
        {"anonymous_id": "a", "event_id": "x" * 65},
        {"customer_id": "c" * 41},
        {"anonymous_id": "a", "properties": {"price": float("nan")}},
        {"anonymous_id": "a", "properties": {"n": 10**401}},
        {"anonymous_id": "a", "properties": {"note": "\udfff"}},
        {"anonymous_id": "a" * 300},
    ]
    with omnisdk.Client(server.url, key, channel="web", data_dir=tmp_path / "o") as client:
        for n in range(600):
            client.events.track("product_viewed", anonymous_id="a", event_id=f"good-{n}")
            if n % 100 == 0:
                with pytest.raises(InvalidRequestError) as refused:
                    client.events.track("product_viewed", **bad_fields[n // 100])
                assert isinstance(refused.value, ValueError | omnisdk.ValidationError)
        assert client.events.flush(60) == 0
        assert client.outbox.dead_letters() == []
    assert len(set(stored_event_ids(database, "good-"))) == 600


def test_batches_stay_under_the_body_limit(
    shop: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    server, key, database = shop
    with omnisdk.Client(server.url, key, channel="web", data_dir=tmp_path / "o") as client:
        for n in range(500):
            client.events.track(
                "product_viewed",
                anonymous_id="a",
                event_id=f"big-{n}",
                properties={"description": "y" * 4_000},
            )
        assert client.events.flush(60) == 0
        assert client.outbox.dead_letters() == []
        assert client.delivery.status.delivered == 500
    assert len(set(stored_event_ids(database, "big-"))) == 500


def test_one_exposure_sent_by_two_backends_is_delivered_once_and_never_dead(
    shop: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    server, key, database = shop
    clients = [
        omnisdk.Client(server.url, key, channel="web", data_dir=tmp_path / f"backend{n}")
        for n in range(2)
    ]
    for n in range(50):
        for client in clients:  # each backend decides the same experiment for the same visitor
            client.events.track(
                "experiment_viewed",
                anonymous_id=f"v{n}",
                event_id=f"exp-hero-v{n}",
                properties={"experiment": "hero", "variant": "b"},
            )
    for client in clients:
        assert client.events.flush(60) == 0
        assert client.outbox.dead_letters() == []
        client.close()
    assert sum(c.delivery.status.delivered + c.delivery.status.duplicates for c in clients) == 100
    assert len(stored_event_ids(database, "exp-")) == 50


def test_async_tracking_never_blocks_the_loop_while_the_server_comes_and_goes(
    shop: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    server, key, database = shop
    server.port = int(server.url.rsplit(":", 1)[1])
    loop_thread: list[int] = []
    blocked_on_loop: list[str] = []

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        client = omnisdk.AsyncClient(
            server.url, key, channel="web", data_dir=tmp_path / "o", max_group=500
        )
        real_append = client.outbox.append

        def append(*args: object) -> None:  # the path that may wait: never on the loop
            if threading.get_ident() == loop_thread[0]:
                blocked_on_loop.append(str(args[1]))
            real_append(*args)  # type: ignore[arg-type]

        client.outbox.append = append  # type: ignore[method-assign]
        for n in range(50_000):
            if n == 20_000:
                await asyncio.to_thread(server.stop)  # the server goes away mid-stream ...
            if n == 35_000:
                await asyncio.to_thread(server.start)  # ... and comes back
            await client.events.track(
                "product_viewed", anonymous_id=f"v{n % 9}", event_id=f"as-{n}"
            )
        assert await client.events.flush(120) == 0
        assert await asyncio.to_thread(client.outbox.dead_letters) == []
        await client.close()

    asyncio.run(main())
    assert blocked_on_loop == []
    assert len(set(stored_event_ids(database, "as-"))) == 50_000
    with contextlib.suppress(Exception):
        server.stop()


def test_a_server_with_a_lower_body_limit_gets_every_event_in_smaller_batches(
    tmp_path: Path,
) -> None:
    database = tmp_path / "shop.sqlite3"
    # An operator lowered the limit below what the SDK's batches assume: 413s, then halving.
    with ServerProcess(f"sqlite:///{database}", env={"OMNISDK_MAX_BODY_BYTES": "20000"}) as server:
        key = server.create_tenant(settings=ATTRIBUTED_EVENTS).key("web")
        with omnisdk.Client(server.url, key, channel="web", data_dir=tmp_path / "o") as client:
            for n in range(500):
                client.events.track("product_viewed", anonymous_id="a", event_id=f"lim-{n}")
            assert client.events.flush(60) == 0
            assert client.outbox.dead_letters() == []
    assert len(set(stored_event_ids(database, "lim-"))) == 500
