"""Event ids made without a system call each stay unique, also across fork()."""

from __future__ import annotations

import os

from omnisdk.resources.events import event_ids, make_event


def test_ids_are_unique_and_shaped_like_128_bit_hex() -> None:
    ids = {make_event("x", anonymous_id="a")["event_id"] for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_forked_child_draws_its_own_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its next id and leaves at once
        os.write(write, event_ids.next().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = event_ids.next()
    assert child[:16] != parent[:16]  # a fresh random half, not the parent's
