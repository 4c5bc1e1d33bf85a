"""A backend process that tracks events and then ends in one of the ways a process can end,
never calling `close()`. Run by tests/e2e/test_process_endings.py, which counts what arrived.

    python -m tests.e2e.ending SCENARIO URL KEY DATA_DIR COUNT
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
from typing import Any

import omnisdk

CONTEXT = multiprocessing.get_context("fork")
# What an exit hook may spend delivering: a bound for a hang, not a figure. The default (5 s)
# is what a shop's process gets; on a loaded CI machine a SQLite server took longer for 2,000
# events, and what was left stayed on disk for the next client, as documented (1,700 of
# 2,000 arrived once). These tests are about what survives each ending, not about speed.
EXIT_TIMEOUT = 60.0
LONG_EXIT = 600.0  # an exit hook that only SIGTERM can cut short within a test's time
NOBODY_LISTENS = "http://127.0.0.1:9"  # the discard port: refused at once on a test machine
client: omnisdk.Client  # made before any fork, as gunicorn --preload or Celery prefork do


def track(prefix: str, start: int, count: int) -> int:
    for n in range(start, start + count):
        client.events.track("product_viewed", anonymous_id=f"v{n % 5}", event_id=f"{prefix}-{n}")
    return count


def exit_plainly(count: int) -> None:
    track("exit", 0, count)  # and the script ends: no close(), no flush()


def fork_and_exit(count: int) -> None:
    track("parent", 0, 10)
    pid = os.fork()
    if pid == 0:
        track("child", 0, count)
        sys.exit(0)  # the child ends without close(): its atexit hook must see to its events
    os.waitpid(pid, 0)


def pool_close_join(count: int) -> None:
    pool = CONTEXT.Pool(2)
    results = [pool.apply_async(track, ("pool", n * 100, 100)) for n in range(count // 100)]
    assert sum(r.get() for r in results) == count
    pool.close()
    pool.join()


def pool_terminate(count: int) -> None:
    with CONTEXT.Pool(2) as pool:  # __exit__ calls terminate(): SIGTERM to each worker
        assert sum(pool.starmap(track, [("term", n * 100, 100) for n in range(count // 100)])) == (
            count
        )


class _SignalledWhileHeld:
    """An outbox's lock that, once armed, sends its own process SIGTERM right after it is next
    taken: the handler then runs on the main thread with the lock held by the frame it
    interrupted, as when `Pool.terminate()` signals a worker inside its exit hook."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.armed = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        taken = bool(self.inner.acquire(blocking, timeout))
        if taken and self.armed:
            self.armed = False
            os.kill(os.getpid(), signal.SIGTERM)
        return taken

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


def terminated_in_exit_hook(url: str, key: str, data_dir: str, count: int) -> None:
    """SIGTERM reaches a child inside its exit hook, the outbox lock held (a worker leaving by
    itself as `Pool.terminate()` signals it): the child must end at once, all it held on disk.
    Its server never answers here, so only the signal can end the hook before its timeout."""

    def child() -> None:
        unanswered = omnisdk.Client(
            NOBODY_LISTENS, key, channel="web", data_dir=data_dir, exit_timeout=LONG_EXIT
        )
        for n in range(count):
            unanswered.events.track("product_viewed", anonymous_id="v", event_id=f"hook-{n}")
        outbox = unanswered.outbox
        lock = outbox._lock = _SignalledWhileHeld(outbox._lock)  # type: ignore[assignment]
        at_exit = unanswered._at_exit

        def armed_at_exit(deliver: bool) -> None:
            lock.armed = True
            at_exit(deliver)

        unanswered._at_exit = armed_at_exit  # type: ignore[method-assign]
        # returns without close(): multiprocessing's finaliser runs the exit hook

    process = CONTEXT.Process(target=child, daemon=True)  # a failure here ends it too
    process.start()
    process.join(LONG_EXIT / 10)
    assert process.exitcode is not None, "SIGTERM did not end a child in its exit hook"
    # A later client on that data_dir (a restarted worker) delivers what the child left.
    with omnisdk.Client(url, key, channel="web", data_dir=data_dir) as later:
        assert later.events.flush(timeout=60) == 0


def _sigterm_of_a_subprocess(_: int) -> bool:
    """Whether SIGTERM reaches a program a Pool worker runs (not blocked, not ignored)."""
    status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    bit = 1 << (signal.SIGTERM - 1)
    return not (int(fields["SigBlk"], 16) & bit or int(fields["SigIgn"], 16) & bit)


def subprocess_of_a_worker(count: int) -> None:
    track("sub", 0, count)
    with CONTEXT.Pool(1) as pool:
        assert pool.map(_sigterm_of_a_subprocess, [0]) == [True], "SIGTERM blocked in a subprocess"


async def _async_track(url: str, key: str, data_dir: str, count: int, prefix: str = "a") -> None:
    aclient = omnisdk.AsyncClient(
        url, key, channel="web", data_dir=data_dir, exit_timeout=EXIT_TIMEOUT
    )
    for n in range(count):
        await aclient.events.track(
            "product_viewed", anonymous_id=f"v{n % 5}", event_id=f"{prefix}-{n}"
        )
    # the loop ends and the process exits without close()


def dropped(url: str, key: str, data_dir: str, count: int) -> None:
    """Clients their owner dropped without close(), and the garbage collector ran before the
    process ended: what they queued must still arrive."""
    synced = omnisdk.Client(
        url, key, channel="web", data_dir=f"{data_dir}/sync", exit_timeout=EXIT_TIMEOUT
    )
    for n in range(count):
        synced.events.track("product_viewed", anonymous_id=f"v{n % 5}", event_id=f"sdrop-{n}")
    del synced
    asyncio.run(_async_track(url, key, f"{data_dir}/async", count, "adrop"))
    gc.collect()  # both clients are unreachable now; the process ends at once


SCENARIOS = {
    "exit": exit_plainly,
    "fork": fork_and_exit,
    "pool": pool_close_join,
    "terminate": pool_terminate,
    "subprocess": subprocess_of_a_worker,
}


def main() -> None:
    global client
    scenario, url, key, data_dir, count = sys.argv[1:6]
    if scenario == "async":
        asyncio.run(_async_track(url, key, data_dir, int(count)))
        return
    if scenario == "hooked":
        terminated_in_exit_hook(url, key, data_dir, int(count))
        return
    if scenario == "dropped":
        dropped(url, key, data_dir, int(count))
        return
    client = omnisdk.Client(url, key, channel="web", data_dir=data_dir, exit_timeout=EXIT_TIMEOUT)
    SCENARIOS[scenario](int(count))


if __name__ == "__main__":
    main()
