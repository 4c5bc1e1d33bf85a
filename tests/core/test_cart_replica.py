"""The SDK's cart replica: one gap-free counter per customer's cart, a new name after fork()."""

from __future__ import annotations

import os

import pytest

from omnisdk.resources import carts
from omnisdk.resources.carts import Replica


def test_each_cart_sees_its_own_numbers_one_two_three() -> None:
    replica = Replica("web")
    ids = [replica.next_id(customer) for customer in ("amy", "bob", "amy", "amy", "bob")]
    amy = [ids[0], ids[2], ids[3]]
    assert [op.rpartition(":")[2] for op in amy] == ["1", "2", "3"]
    assert len({op.rpartition(":")[0] for op in amy}) == 1
    assert ids[1].rpartition(":")[0] != amy[0].rpartition(":")[0]
    assert ids[4].endswith(":2")


def test_a_forgotten_cart_gets_a_new_name_never_a_restarted_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(carts, "REPLICAS_KEPT", 1)
    replica = Replica("web")
    first = replica.next_id("amy")
    replica.next_id("bob")  # amy's counter is forgotten
    again = replica.next_id("amy")
    assert again.endswith(":1") and again.rpartition(":")[0] != first.rpartition(":")[0]


def test_a_forked_child_numbers_its_operations_under_a_new_name() -> None:
    replica = Replica("web")
    parent_first = replica.next_id("amy")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its next id and leaves at once
        os.write(write, replica.next_id("amy").encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    parent = replica.next_id("amy")
    assert parent.rpartition(":")[0] == parent_first.rpartition(":")[0]
    assert child.rpartition(":")[0] != parent.rpartition(":")[0]
    assert not child.startswith(replica.name)
