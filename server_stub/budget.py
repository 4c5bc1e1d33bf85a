"""The per-key request budget: a token bucket per API key, in each server process.

One key (a leaked one, or a runaway loop in a shop's backend) must not take a process's whole
capacity from the tenant's other keys and from other tenants. Each key earns
`OMNISDK_RATE_LIMIT_PER_SECOND` requests a second up to `OMNISDK_RATE_LIMIT_BURST`; a request
with nothing left is answered 429 `rate-limited` with `Retry-After`, before its transaction
opens. The budget is per process (the server keeps no state outside its database): with N
processes behind a balancer, a key may make up to N times the rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

MAX_TRACKED_KEYS = 100_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class RequestBudget:
    """Token buckets by key id; `rate` 0 turns the budget off."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def spend(self, key_id: str) -> float | None:
        """Take one request from the key's budget: None if it may go on, else the seconds
        until it may (for `Retry-After`)."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_KEYS:
                self._buckets.clear()  # a full bucket for everyone: never a refusal by mistake
            bucket = self._buckets[key_id] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least one (RFC 9110 §10.2.3 allows no fractions)."""
    return str(max(1, math.ceil(seconds)))
