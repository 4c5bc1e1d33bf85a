"""Long jobs give freed heap pages back to the system between windows (server_stub/memory)."""

from __future__ import annotations

import sys

import pytest

from server_stub import memory


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux's")
def test_freed_pages_between_kept_objects_go_back_to_the_system() -> None:
    if memory._malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim (not glibc)")
    # 2 kB buffers come from the C heap, not Python's small-object arenas; keeping one in a
    # hundred leaves freed pages between kept ones, as a job's batches do.
    buffers = [bytearray(2048) for _ in range(150_000)]  # about 300 MB
    kept = buffers[::100]
    del buffers
    before = _resident_mb()
    assert memory.give_back() is True
    after = _resident_mb()
    assert before - after > 150, (before, after)
    assert len(kept) == 1_500
