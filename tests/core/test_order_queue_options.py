"""An order queued through the outbox takes every option of one recorded at once: the two
build their request with the one `record_request`, and their parameters may not drift."""

from __future__ import annotations

import inspect

import pytest

from omnisdk.resources.orders import Orders, record_request


def _options(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def test_queue_takes_the_options_of_record() -> None:
    recorded, queued = Orders.record.signature(), Orders.queue.signature()
    assert _options(queued) == _options(recorded)


@pytest.mark.parametrize("flag", ["ship_to_other_name", "ship_to_other_address"])
def test_a_shipping_flag_reaches_the_queued_request(flag: str) -> None:
    line = {"sku": "BOOK-2", "quantity": 1, "unit_price": 12.0}
    queued = record_request("Q-1", [line], currency="EUR", **{flag: True})
    assert queued.model_dump(mode="json", exclude_none=True)[flag] is True
