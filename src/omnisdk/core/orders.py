"""Rules of orders shared by the SDK and the server: how a buyer was identified, and how sure
that link is."""

from __future__ import annotations

from typing import Final, Literal

LinkMethod = Literal[
    "checkout", "customer_code", "loyalty_id", "email_hash", "phone_hash", "e_receipt", "none"
]

# How sure each way of identifying a buyer is (0 to 1), documented in docs/orders.md. A
# checkout and a customer code are signed proof of who she is; an e-mail address matches one
# person; a loyalty card or a phone number is often shared within a household.
LINK_CONFIDENCE: Final[dict[LinkMethod, float]] = {
    "checkout": 1.0,
    "customer_code": 1.0,
    "e_receipt": 0.95,
    "email_hash": 0.95,
    "phone_hash": 0.85,
    "loyalty_id": 0.8,
    "none": 0.0,
}

# The consent purpose a store sale needs to be linked to the customer's profile: linking an
# offline purchase to her online behaviour is analytics about her (DESIGN: consent).
LINK_PURPOSE: Final = "analytics"
