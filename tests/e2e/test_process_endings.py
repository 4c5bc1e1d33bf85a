"""Every way a backend process can end without `close()`, and what of its tracked events
reaches the server: all of them, counted one by one on the server's database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from omnisdk.testing import ATTRIBUTED_EVENTS, ServerProcess
from tests.e2e.test_outbox_delivery import stored_event_ids

ROOT = Path(__file__).resolve().parents[2]


def run_scenario(scenario: str, server: ServerProcess, key: str, data_dir: Path, count: int) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.e2e.ending",
            scenario,
            server.url,
            key,
            str(data_dir),
            str(count),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.fixture
def shop_server(tmp_path: Path) -> tuple[ServerProcess, str, Path]:
    database = tmp_path / "shop.sqlite3"
    with ServerProcess(f"sqlite:///{database}") as server:
        yield server, server.create_tenant(settings=ATTRIBUTED_EVENTS).key("web"), database


def test_a_script_that_exits_without_close_delivers_everything(shop_server, tmp_path: Path) -> None:
    server, key, database = shop_server
    run_scenario("exit", server, key, tmp_path / "out", 3_000)
    assert sorted(stored_event_ids(database, "exit-")) == sorted(f"exit-{n}" for n in range(3_000))


def test_a_forked_child_that_exits_without_close_delivers_everything(
    shop_server, tmp_path: Path
) -> None:
    server, key, database = shop_server
    run_scenario("fork", server, key, tmp_path / "out", 2_000)
    assert len(set(stored_event_ids(database, "child-"))) == 2_000
    assert len(set(stored_event_ids(database, "parent-"))) == 10


def test_pool_workers_ended_by_close_and_join_deliver_everything(
    shop_server, tmp_path: Path
) -> None:
    server, key, database = shop_server
    run_scenario("pool", server, key, tmp_path / "out", 2_000)
    stored = stored_event_ids(database, "pool-")
    assert len(stored) == len(set(stored)) == 2_000


def test_pool_workers_ended_by_terminate_deliver_everything(shop_server, tmp_path: Path) -> None:
    server, key, database = shop_server
    log = run_scenario("terminate", server, key, tmp_path / "out", 2_000)
    stored = stored_event_ids(database, "term-")
    assert len(stored) == len(set(stored)) == 2_000, log[-2000:]


def test_sigterm_in_a_childs_exit_hook_ends_it_at_once_with_nothing_lost(
    shop_server, tmp_path: Path
) -> None:
    """`Pool.terminate()` signals workers that may already be leaving by themselves: the
    handler used to run the exit hook again inside the interrupted one and wait for the
    outbox lock it held, until `exit_timeout` (a 61-s `Pool.__exit__` in CI)."""
    server, key, database = shop_server
    run_scenario("hooked", server, key, tmp_path / "out", 500)
    assert sorted(stored_event_ids(database, "hook-")) == sorted(f"hook-{n}" for n in range(500))


def test_a_program_a_pool_worker_runs_can_be_ended_by_sigterm(shop_server, tmp_path: Path) -> None:
    """A signal mask is inherited through exec: the SDK must not leave SIGTERM blocked in a
    worker's main thread (one way of waiting for it did), or `Popen.terminate()` of anything
    the worker starts does nothing."""
    server, key, database = shop_server
    run_scenario("subprocess", server, key, tmp_path / "out", 10)
    assert len(set(stored_event_ids(database, "sub-"))) == 10


def test_an_async_client_left_open_at_exit_delivers_everything(shop_server, tmp_path: Path) -> None:
    server, key, database = shop_server
    run_scenario("async", server, key, tmp_path / "out", 2_000)
    assert len(set(stored_event_ids(database, "a-"))) == 2_000


def test_clients_dropped_without_close_and_collected_still_deliver(
    shop_server, tmp_path: Path
) -> None:
    """A client whose owner let go of it without close() is held while its outbox is open:
    before, the garbage collector freed it before the exit hook ran (held only weakly), and
    what it had not yet written to disk died with the process — 0 of 2,000 in 1 run in 6."""
    server, key, database = shop_server
    run_scenario("dropped", server, key, tmp_path / "out", 1_000)
    assert len(set(stored_event_ids(database, "adrop-"))) == 1_000
    assert len(set(stored_event_ids(database, "sdrop-"))) == 1_000
