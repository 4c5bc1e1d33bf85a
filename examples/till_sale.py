"""A till selling with omnisdk: the example for POS integrators (docs/orders.md).

At payment the clerk scans the customer code her app shows (or nothing). The till checks it
offline with the shop's keys it keeps on disk, then records the sale: at once when the network
is there, through the durable outbox when it is not (delivered and applied once when it is
back). The till never learns who the customer is: the server links the sale to her profile
if her consent allows it.

    OMNISDK_URL=... OMNISDK_POS_KEY=... python examples/till_sale.py RECEIPT-NO [CUSTOMER-CODE]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import omnisdk

STORE = "berlin-1"
BASKET = [
    {"sku": "JACKET-RAIN-M", "quantity": 1, "unit_price": 149.0},
    {"sku": "SOCK-M", "quantity": 2, "unit_price": 9.9, "gift": True},
]


def sell(till: omnisdk.Client, receipt: str, scanned: str | None) -> str:
    """Record one sale; what the clerk's screen says about it."""
    code = None
    if scanned:
        check = till.orders.verify_code(scanned)
        print(f"customer code: {check.message}")
        code = scanned if check.valid else None  # a code that is not genuine is left out
    try:
        sale = till.orders.record(
            receipt, BASKET, currency="EUR", store_id=STORE, customer_code=code
        )
    except omnisdk.APIConnectionError:
        till.orders.queue(receipt, BASKET, currency="EUR", store_id=STORE, customer_code=code)
        return f"sale {receipt} kept on the till; it is sent when the network is back"
    linked = "her account" if sale.order.customer_id else "no account"
    why = f" ({sale.link_refused})" if sale.link_refused else ""
    return f"sale {receipt}: {sale.order.total} {sale.order.currency}, added to {linked}{why}"


def main(argv: list[str]) -> int:
    receipt, scanned = argv[0], argv[1] if len(argv) > 1 else None
    data_dir = Path(os.environ.get("OMNISDK_DATA_DIR", Path.home() / ".cache" / "omnisdk-till"))
    with omnisdk.Client(
        os.environ["OMNISDK_URL"],
        os.environ["OMNISDK_POS_KEY"],
        channel="pos",
        data_dir=data_dir,
        # At a till the customer waits: one quick retry, then the sale goes to the outbox.
        retry_policy=omnisdk.RetryPolicy(max_retries=1, initial_delay=0.2),
        close_timeout=2.0,
    ) as till:
        kept = till.events.flush(timeout=2.0)  # sales kept while offline go out first
        print(f"sales kept on the till: {kept}")
        print(sell(till, receipt, scanned))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
