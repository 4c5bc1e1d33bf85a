"""The SDK's cart replicas: a name lent to one operation at a time, numbering its operations
1, 2, 3, … without gaps; a new name after fork()."""

from __future__ import annotations

import os

import pytest

from omnisdk.resources import carts
from omnisdk.resources.carts import Replica


def _name(op_id: str) -> str:
    return op_id.rpartition(":")[0]


def _sent(replica: Replica, customer: str) -> str:
    """An operation id, sent and answered before the next is taken."""
    op_id = replica.next_id(customer)
    replica.answered([op_id])
    return op_id


def test_each_cart_sees_its_own_numbers_one_two_three() -> None:
    replica = Replica("web")
    ids = [_sent(replica, customer) for customer in ("amy", "bob", "amy", "amy", "bob")]
    amy = [ids[0], ids[2], ids[3]]
    assert [op.rpartition(":")[2] for op in amy] == ["1", "2", "3"]
    assert len({_name(op) for op in amy}) == 1
    assert _name(ids[1]) != _name(amy[0])
    assert ids[4].endswith(":2")


def test_an_operation_in_flight_keeps_its_name_from_the_next() -> None:
    replica = Replica("web")
    in_flight = replica.next_id("amy")
    meanwhile = replica.next_id("amy")  # another thread or task, before the first is answered
    assert _name(meanwhile) != _name(in_flight)
    assert in_flight.endswith(":1") and meanwhile.endswith(":1")
    replica.answered([in_flight])
    assert replica.next_id("amy") == f"{_name(in_flight)}:2"


def test_a_name_comes_back_only_with_an_answer_naming_its_latest_operation() -> None:
    replica = Replica("web")
    first = _sent(replica, "amy")
    unanswered = replica.next_id("amy")  # its answer was lost: it may still arrive
    replica.answered([first, "someone-else:7"])  # a late duplicate, an id not lent here
    assert _name(replica.next_id("amy")) not in {_name(first), _name(unanswered)}


def test_a_forgotten_cart_gets_a_new_name_never_a_restarted_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(carts, "REPLICAS_KEPT", 1)
    replica = Replica("web")
    first = _sent(replica, "amy")
    _sent(replica, "bob")  # amy's name is forgotten
    again = replica.next_id("amy")
    assert again.endswith(":1") and _name(again) != _name(first)


def test_a_forked_child_numbers_its_operations_under_a_new_name() -> None:
    replica = Replica("web")
    parent_first = _sent(replica, "amy")
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
    assert _name(parent) == _name(parent_first)
    assert _name(child) != _name(parent)
    assert not child.startswith(replica.name)
