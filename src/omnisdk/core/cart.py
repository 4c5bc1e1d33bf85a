"""The shared cart as a CRDT (DESIGN: cart): an observed-remove map from line key to a
quantity counter, with last-writer-wins line attributes.

- Every operation has an id `(replica, seq)` and is applied at most once.
- An add contributes a delta (positive, or negative: "set quantity to N" is sent as the delta
  from the quantity the client saw). A line's quantity is the sum of its contributions that no
  remove has cancelled, and never below zero.
- A remove cancels exactly the contributions it observed: an add made concurrently on another
  device (not observed) survives it. Clear is a remove of every line the client saw.
- Attributes (name, unit price snapshot, currency, image) are last-writer-wins by
  (time, replica): prices are the shop's snapshots; the cart never invents one.
- `join` merges two replicas of the same cart: it is commutative, associative and idempotent
  (a union of contributions, cancellations and attribute writes).
- `merge_plan` folds a guest's cart into a customer's by a policy (max, sum, guest_wins,
  customer_wins) as operations whose ids derive from the merge id: applying the plan twice
  changes nothing.

Pure: no I/O, no clocks (times are passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_LINES = 100
MAX_QUANTITY = 999
MAX_DELTA = 999


class CartError(ValueError):
    """An operation the cart refuses; the message says why."""


@dataclass(frozen=True, order=True)
class OpId:
    replica: str
    seq: int

    def __post_init__(self) -> None:
        if not self.replica or len(self.replica) > 64 or not self.replica.isprintable():
            raise CartError("an operation id needs a replica name of 1-64 printable characters")
        if not 0 <= self.seq < 2**53:
            raise CartError("an operation id needs a sequence number from 0 to 2^53")

    def text(self) -> str:
        return f"{self.replica}:{self.seq}"

    @classmethod
    def parse(cls, text: str) -> OpId:
        replica, _, seq = text.rpartition(":")
        if not replica or not seq.isdigit():
            raise CartError(f"{text!r} is not an operation id (replica:seq)")
        return cls(replica, int(seq))


def line_key(sku: str, options: Mapping[str, str] | None = None) -> str:
    """The key of a cart line: the SKU and its options (size, colour, …) in a fixed order."""
    if not sku or len(sku) > 64 or "|" in sku:
        raise CartError("a SKU has 1-64 characters and no '|'")
    parts = [f"{k}={v}" for k, v in sorted((options or {}).items())]
    return sku + ("|" + ";".join(parts) if parts else "")


@dataclass(frozen=True)
class Attributes:
    """A line's descriptive fields, written last-writer-wins as a whole."""

    name: str | None = None
    unit_price: float | None = None
    currency: str | None = None
    image_url: str | None = None


@dataclass(frozen=True)
class Stamp:
    """When and where an attribute write happened: the later (then the greater replica) wins."""

    at: float
    replica: str


@dataclass(frozen=True)
class Add:
    op_id: OpId
    line: str
    delta: int
    attributes: Attributes | None = None
    at: float = 0.0


@dataclass(frozen=True)
class Remove:
    op_id: OpId
    line: str
    observed: frozenset[OpId]


@dataclass(frozen=True)
class Clear:
    op_id: OpId
    observed: frozenset[OpId]


Op = Add | Remove | Clear


@dataclass
class Line:
    contributions: dict[OpId, int] = field(default_factory=dict)
    attributes: Attributes = field(default_factory=Attributes)
    stamp: Stamp | None = None


@dataclass
class Cart:
    lines: dict[str, Line] = field(default_factory=dict)
    cancelled: set[OpId] = field(default_factory=set)
    applied: set[OpId] = field(default_factory=set)

    # --- reading ----------------------------------------------------------------------------

    def total(self, key: str) -> int:
        """The line's counter: the sum of its live contributions (below zero after concurrent
        decrements that overshot)."""
        line = self.lines.get(key)
        if line is None:
            return 0
        return sum(d for op, d in line.contributions.items() if op not in self.cancelled)

    def quantity(self, key: str) -> int:
        """Units in the cart: the counter, never below zero."""
        return max(self.total(key), 0)

    def quantities(self) -> dict[str, int]:
        """Every line with a positive quantity."""
        return {key: q for key in sorted(self.lines) if (q := self.quantity(key)) > 0}

    def observed(self, key: str | None = None) -> frozenset[OpId]:
        """The live contributions a client sees (what its remove or clear will cancel)."""
        keys = [key] if key is not None else list(self.lines)
        return frozenset(
            op
            for k in keys
            if k in self.lines
            for op in self.lines[k].contributions
            if op not in self.cancelled
        )

    # --- changing -----------------------------------------------------------------------------

    def check(self, op: Op) -> None:
        """Raise CartError if `op` breaks a limit (before anything is changed)."""
        if isinstance(op, Add):
            if not -MAX_DELTA <= op.delta <= MAX_DELTA or op.delta == 0:
                raise CartError(f"a quantity change is from -{MAX_DELTA} to {MAX_DELTA}, not 0")
            if op.line not in self.lines and len(self.quantities()) >= MAX_LINES:
                raise CartError(f"a cart holds at most {MAX_LINES} lines")
            if self.total(op.line) + op.delta > MAX_QUANTITY:
                raise CartError(f"a line holds at most {MAX_QUANTITY} units")
            price = op.attributes.unit_price if op.attributes else None
            if price is not None and not 0 <= price < 10**9:
                raise CartError("a unit price is a non-negative amount")
        elif isinstance(op, Remove) and op.line not in self.lines:
            raise CartError(f"the cart has no line {op.line!r}")

    def apply(self, op: Op) -> bool:
        """Apply an operation once; False if it was applied before (a retry or replay)."""
        if op.op_id in self.applied:
            return False
        self.applied.add(op.op_id)
        if isinstance(op, Add):
            line = self.lines.setdefault(op.line, Line())
            line.contributions[op.op_id] = op.delta
            if op.attributes is not None:
                self._write_attributes(line, op.attributes, Stamp(op.at, op.op_id.replica))
        else:
            self.cancelled |= op.observed
        return True

    @staticmethod
    def _write_attributes(line: Line, attributes: Attributes, stamp: Stamp) -> None:
        if line.stamp is None or (stamp.at, stamp.replica) > (line.stamp.at, line.stamp.replica):
            line.attributes, line.stamp = attributes, stamp

    # --- merging replicas -----------------------------------------------------------------

    def join(self, other: Cart) -> Cart:
        """The cart that has seen everything either replica saw (commutative, associative,
        idempotent)."""
        joined = Cart(
            cancelled=self.cancelled | other.cancelled, applied=self.applied | other.applied
        )
        for key in self.lines.keys() | other.lines.keys():
            line = Line()
            for source in (self.lines.get(key), other.lines.get(key)):
                if source is None:
                    continue
                line.contributions.update(source.contributions)
                if source.stamp is not None:
                    self._write_attributes(line, source.attributes, source.stamp)
            joined.lines[key] = line
        return joined

    # --- storage --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": {
                key: {
                    "contributions": {op.text(): d for op, d in sorted(line.contributions.items())},
                    "attributes": line.attributes.__dict__,
                    "stamp": None if line.stamp is None else [line.stamp.at, line.stamp.replica],
                }
                for key, line in sorted(self.lines.items())
            },
            "cancelled": sorted(op.text() for op in self.cancelled),
            "applied": sorted(op.text() for op in self.applied),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cart:
        cart = cls(
            cancelled={OpId.parse(t) for t in data.get("cancelled", [])},
            applied={OpId.parse(t) for t in data.get("applied", [])},
        )
        for key, line in data.get("lines", {}).items():
            stamp = line.get("stamp")
            cart.lines[key] = Line(
                contributions={OpId.parse(t): int(d) for t, d in line["contributions"].items()},
                attributes=Attributes(**line.get("attributes", {})),
                stamp=None if stamp is None else Stamp(float(stamp[0]), str(stamp[1])),
            )
        return cart


class MergePolicy(StrEnum):
    MAX = "max"
    SUM = "sum"
    GUEST_WINS = "guest_wins"
    CUSTOMER_WINS = "customer_wins"


def merged_quantity(policy: MergePolicy, customer: int, guest: int) -> int:
    """The quantity a line has after a guest's cart is folded into a customer's."""
    if policy is MergePolicy.MAX:
        return max(customer, guest)
    if policy is MergePolicy.SUM:
        return min(customer + guest, MAX_QUANTITY)
    if policy is MergePolicy.GUEST_WINS:
        return guest if guest > 0 else customer
    return customer if customer > 0 else guest


def merge_plan(
    customer: Cart, guest: Cart, policy: MergePolicy, merge_id: str, at: float
) -> list[Add]:
    """The operations that fold `guest` into `customer` by `policy`. Their ids derive from
    `merge_id`, so applying the plan again (a retried identify) changes nothing."""
    plan: list[Add] = []
    guest_lines = guest.quantities()
    for seq, key in enumerate(sorted(guest_lines)):
        have = customer.quantity(key)
        # From the counter, not the clamped quantity, so that the line ends at the target.
        delta = merged_quantity(policy, have, guest_lines[key]) - customer.total(key)
        if delta:
            # A line new to the customer's cart brings the guest's name and price snapshot.
            attributes = guest.lines[key].attributes if have == 0 else None
            plan.append(Add(OpId(f"merge:{merge_id}", seq), key, delta, attributes, at))
    return plan


def apply_all(cart: Cart, ops: Iterable[Op]) -> Cart:
    """`cart` after the operations (each checked against the limits first)."""
    for op in ops:
        cart.check(op)
        cart.apply(op)
    return cart


def copy(cart: Cart) -> Cart:
    return Cart.from_dict(cart.to_dict())


__all__ = [
    "Add",
    "Attributes",
    "Cart",
    "CartError",
    "Clear",
    "MergePolicy",
    "OpId",
    "Remove",
    "apply_all",
    "copy",
    "line_key",
    "merge_plan",
    "merged_quantity",
]
