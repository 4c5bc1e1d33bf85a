"""The shared cart as a CRDT (DESIGN: cart): an observed-remove map from line key to a
quantity counter, with last-writer-wins line attributes.

- Every operation has an id `(replica, seq)` and is applied at most once. Applied ids are
  remembered as one watermark per replica (`Applied`: every number up to `upto`, a few above).
- An add contributes a delta (positive, or negative: "set quantity to N" is sent as the delta
  from the quantity the client saw). A line's quantity is the sum of its contributions that no
  remove has cancelled, and never below zero.
- A remove cancels the contributions it observed, summarised as a vector: per replica, the
  highest sequence number seen (a replica's operations are ordered, so its earlier ones count
  as seen). An add made concurrently on another device (not observed) survives it. Clear
  applies the vector to every line.
- State is bounded (docs/carts.md): per line and replica, the newest RECENT contributions are
  kept one by one and older ones folded into a base (`Run`); a clear forgets the lines it
  emptied. Folding and forgetting change no visible quantity.
- Attributes (name, unit price snapshot, currency, image) are last-writer-wins by
  (time, replica): prices are the shop's snapshots; the cart never invents one.
- `join` merges two replicas of the same cart: it is commutative, associative and idempotent
  (a union of contributions, a maximum of vectors and watermarks, attribute writes by stamp).
  A folded base is a summary of one history: of two, join keeps the later fold.
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
MAX_EXCEPTIONS = 64  # out-of-order sequence numbers remembered per replica


class CartError(ValueError):
    """An operation the cart refuses; the message says why."""


@dataclass(frozen=True, order=True)
class OpId:
    replica: str
    seq: int

    def __post_init__(self) -> None:
        if not self.replica or len(self.replica) > 64 or not self.replica.isprintable():
            raise CartError("an operation id needs a replica name of 1-64 printable characters")
        if not 0 < self.seq < 2**53:
            raise CartError("an operation id needs a sequence number from 1 to 2^53")

    def text(self) -> str:
        return f"{self.replica}:{self.seq}"

    @classmethod
    def parse(cls, text: str) -> OpId:
        replica, _, seq = text.rpartition(":")
        if not replica or not seq.isdigit():
            raise CartError(f"{text!r} is not an operation id (replica:seq)")
        return cls(replica, int(seq))


def line_key(sku: str, options: Mapping[str, str] | None = None) -> str:
    """The key of a cart line: the SKU and its options (size, colour, …) in a fixed order.

    `sku|name=value;name=value`, read back by `line_parts`. The separators are refused where
    they would change the meaning (`{"a=b": "c"}` read back as `{"a": "b=c"}`, a `;` in a value
    as a broken option): a key means one line only."""
    if not sku or len(sku) > 64 or "|" in sku:
        raise CartError("a SKU has 1-64 characters and no '|'")
    items = sorted((options or {}).items())
    for name, value in items:
        if not name or any(mark in name for mark in "=;|") or any(m in value for m in ";|"):
            raise CartError(
                "option names are not empty and hold no '=', ';' or '|'; "
                "option values hold no ';' or '|'"
            )
    parts = [f"{k}={v}" for k, v in items]
    return sku + ("|" + ";".join(parts) if parts else "")


def line_parts(key: str) -> tuple[str, dict[str, str]]:
    """The SKU and options of a line key (`line_key` the other way round)."""
    sku, _, options = key.partition("|")
    if not options:
        return sku, {}
    return sku, dict(part.partition("=")[::2] for part in options.split(";"))


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


Vector = Mapping[str, int]
"""Per replica, the highest sequence number seen: what a remove or clear observed."""


def vector(op_ids: Iterable[OpId]) -> dict[str, int]:
    """The summary of a set of operation ids: each replica's highest sequence number."""
    result: dict[str, int] = {}
    for op in op_ids:
        result[op.replica] = max(result.get(op.replica, 0), op.seq)
    return result


def _join_vectors(a: Vector, b: Vector) -> dict[str, int]:
    return {r: max(a.get(r, 0), b.get(r, 0)) for r in sorted(a.keys() | b.keys())}


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
    observed: Vector


@dataclass(frozen=True)
class Clear:
    op_id: OpId
    observed: Vector


Op = Add | Remove | Clear


@dataclass
class Applied:
    """One replica's applied sequence numbers: every number up to `upto`, and `extra` above
    it (operations that arrived out of order). At most MAX_EXCEPTIONS extras are kept: past
    that, the oldest gap is given up (an operation that arrives that late counts as applied)."""

    upto: int = 0  # sequence numbers start at 1
    extra: set[int] = field(default_factory=set)

    def __contains__(self, seq: int) -> bool:
        return seq <= self.upto or seq in self.extra

    def add(self, seq: int) -> None:
        if seq == self.upto + 1 and not self.extra:  # the usual case: the next in order
            self.upto = seq
            return
        self.extra.add(seq)
        self._normalise()

    def join(self, other: Applied) -> Applied:
        joined = Applied(max(self.upto, other.upto), self.extra | other.extra)
        joined._normalise()
        return joined

    def _normalise(self) -> None:
        self.extra = {seq for seq in self.extra if seq > self.upto}
        while self.extra:
            if self.upto + 1 in self.extra:
                self.upto += 1
            elif len(self.extra) > MAX_EXCEPTIONS:
                self.upto = min(self.extra)
            else:
                break
            self.extra.discard(self.upto)


@dataclass
class Run:
    """One replica's live contributions to one line: the newest few one by one (`recent`,
    sequence number → delta), the older ones folded into `base` (all of sequence ≤ `upto`)."""

    base: int = 0
    upto: int = 0
    recent: dict[int, int] = field(default_factory=dict)

    def total(self) -> int:
        return self.base + sum(self.recent.values())

    def top(self) -> int:
        """The highest sequence number this run holds: what a client that saw it observed."""
        return max(self.recent, default=self.upto)

    def empty(self) -> bool:
        return not self.recent and self.base == 0

    def put(self, seq: int, delta: int) -> None:
        if seq <= self.upto:
            self.base += delta  # a late arrival among folded contributions: still live
        else:
            self.recent[seq] = delta

    def cancel(self, seen: int) -> None:
        """Cancel the contributions of sequence ≤ `seen`. A folded base that holds a later
        contribution than `seen` stays: a remove never cancels what it may not have seen."""
        self.recent = {seq: d for seq, d in self.recent.items() if seq > seen}
        if self.upto <= seen:
            self.base = 0

    def fold(self, keep: int) -> None:
        """Fold all but the newest `keep` contributions into the base (no quantity changes)."""
        old = sorted(self.recent)[: max(len(self.recent) - keep, 0)]
        for seq in old:
            self.base += self.recent.pop(seq)
        self.upto = max(old, default=self.upto)

    def plus(self, other: Run) -> Run:
        """Both runs' contributions, for runs known to hold different ones (a split hands
        back contributions the other cart never had)."""
        result = Run(self.base + other.base, max(self.upto, other.upto))
        for seq, delta in [*self.recent.items(), *other.recent.items()]:
            result.put(seq, delta)
        return result

    def join(self, other: Run) -> Run:
        """The run that has seen what either saw (of one history: the later fold wins)."""
        later = max(self, other, key=lambda run: (run.upto, run.base))
        recent = {**self.recent, **other.recent}
        return Run(later.base, later.upto, {s: d for s, d in recent.items() if s > later.upto})


@dataclass
class Line:
    runs: dict[str, Run] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)  # contributions cancelled up to …
    attributes: Attributes = field(default_factory=Attributes)
    stamp: Stamp | None = None

    def total(self) -> int:
        return sum(run.total() for run in self.runs.values())

    def observed(self) -> dict[str, int]:
        return {replica: run.top() for replica, run in sorted(self.runs.items())}

    def cancel(self, seen: Vector) -> None:
        """A remove: cancel what was seen, and remember it against late arrivals."""
        self.removed = _join_vectors(self.removed, seen)
        self.drop(seen)

    def drop(self, seen: Vector) -> None:
        for replica, seq in seen.items():
            run = self.runs.get(replica)
            if run is not None:
                run.cancel(seq)
        self.runs = {r: run for r, run in self.runs.items() if not run.empty()}


@dataclass
class Cart:
    """A cart's state, bounded: per line and replica at most RECENT contributions one by
    one (older ones folded), per replica one `Applied` watermark, and the removes as vectors
    (per replica, the highest sequence number seen). See docs/carts.md for the bound."""

    lines: dict[str, Line] = field(default_factory=dict)
    cleared: dict[str, int] = field(default_factory=dict)  # cancelled on every line up to …
    applied: dict[str, Applied] = field(default_factory=dict)

    # --- reading ----------------------------------------------------------------------------

    def total(self, key: str) -> int:
        """The line's counter: the sum of its live contributions (below zero after concurrent
        decrements that overshot)."""
        line = self.lines.get(key)
        return 0 if line is None else line.total()

    def quantity(self, key: str) -> int:
        """Units in the cart: the counter, never below zero."""
        return max(self.total(key), 0)

    def quantities(self) -> dict[str, int]:
        """Every line with a positive quantity."""
        return {key: q for key in sorted(self.lines) if (q := self.quantity(key)) > 0}

    def observed(self, key: str | None = None) -> dict[str, int]:
        """What a client sees of a line (or of the cart): per replica, the highest sequence
        number of a live contribution. Its remove or clear cancels exactly that much."""
        keys = [key] if key is not None else list(self.lines)
        return _fold_max(self.lines[k].observed() for k in keys if k in self.lines)

    def has_applied(self, op_id: OpId) -> bool:
        seen = self.applied.get(op_id.replica)
        return seen is not None and op_id.seq in seen

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
        elif isinstance(op, Remove) and op.line not in self.lines and not op.observed:
            # With what it saw, a remove of a line a clear or checkout has since emptied and
            # forgotten is a no-op (a late or replayed remove); without, it names no line.
            raise CartError(f"the cart has no line {op.line!r}")

    def apply(self, op: Op) -> bool:
        """Apply an operation once; False if it was applied before (a retry or replay)."""
        if self.has_applied(op.op_id):
            return False
        seen = self.applied.get(op.op_id.replica)
        if seen is None:
            seen = self.applied[op.op_id.replica] = Applied()
        seen.add(op.op_id.seq)
        if isinstance(op, Add):
            self._add(op)
        elif isinstance(op, Remove):
            self.lines.setdefault(op.line, Line()).cancel(op.observed)
        else:
            self._clear(op.observed)
        return True

    def _add(self, op: Add) -> None:
        line = self.lines.get(op.line) or self.lines.setdefault(op.line, Line())
        replica, seq = op.op_id.replica, op.op_id.seq
        if seq > line.removed.get(replica, 0) and seq > self.cleared.get(replica, 0):
            run = line.runs.get(replica) or line.runs.setdefault(replica, Run())
            run.put(seq, op.delta)
            if len(run.recent) > RECENT:
                run.fold(RECENT // 2)
            if run.empty():
                del line.runs[replica]
        if op.attributes is not None:
            self._write_attributes(line, op.attributes, Stamp(op.at, replica))

    def _clear(self, seen: Vector) -> None:
        """Cancel what was seen on every line, then forget the lines left with nothing live:
        their removes are kept in `cleared` (a clear comes after every remove it saw)."""
        for line in self.lines.values():
            line.cancel(seen)
        gone = [key for key, line in self.lines.items() if not line.runs]
        removes = [self.lines[key].removed for key in gone]
        self.cleared = _fold_max([self.cleared, dict(seen), *removes])
        for key in gone:
            del self.lines[key]
        self.compact()

    @staticmethod
    def _write_attributes(line: Line, attributes: Attributes, stamp: Stamp) -> None:
        if line.stamp is None or (stamp.at, stamp.replica) > (line.stamp.at, line.stamp.replica):
            line.attributes, line.stamp = attributes, stamp

    # --- merging replicas -----------------------------------------------------------------

    def join(self, other: Cart) -> Cart:
        """The cart that has seen everything either replica saw (commutative, associative,
        idempotent)."""
        joined = Cart(cleared=_join_vectors(self.cleared, other.cleared))
        for replica in sorted(self.applied.keys() | other.applied.keys()):
            ours, theirs = self.applied.get(replica), other.applied.get(replica)
            joined.applied[replica] = (ours or Applied()).join(theirs or Applied())
        for key in sorted(self.lines.keys() | other.lines.keys()):
            line = _join_lines(self.lines.get(key, Line()), other.lines.get(key, Line()))
            line.drop(_join_vectors(line.removed, joined.cleared))
            joined.lines[key] = line
        return joined

    def checkout(self) -> None:
        """Empty the cart of everything in it (an order was placed) and compact it; the
        applied operation ids stay, so a late retry of an ordered add is still a duplicate."""
        self._clear(self.observed())

    def adopt_applied(self, other: Cart) -> None:
        """Remember `other`'s applied operations as applied here too (a guest cart folded into
        a customer's: a retry of a guest operation is then a duplicate, not a second add)."""
        for replica, seen in other.applied.items():
            self.applied[replica] = self.applied.get(replica, Applied()).join(seen)

    def compact(self) -> Cart:
        """The same visible cart in its smallest form: every run folded down to RECENT // 2
        contributions (checkout and clear; a clear also forgets the lines it emptied)."""
        for line in self.lines.values():
            for run in line.runs.values():
                run.fold(RECENT // 2)
        return self

    def take_runs(self, replicas: Iterable[str]) -> dict[str, dict[str, Run]]:
        """Remove these replicas' contributions from every line and return them (a split
        hands them back to the customer they were addressed to)."""
        wanted = set(replicas)
        taken: dict[str, dict[str, Run]] = {}
        for key, line in self.lines.items():
            for replica in wanted & line.runs.keys():
                taken.setdefault(key, {})[replica] = line.runs.pop(replica)
        return taken

    def give_runs(self, runs: Mapping[str, Mapping[str, Run]]) -> None:
        for key, by_replica in runs.items():
            line = self.lines.setdefault(key, Line())
            for replica, run in by_replica.items():
                mine = line.runs.get(replica)
                line.runs[replica] = mine.plus(run) if mine else run

    # --- storage --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": {
                key: {
                    "runs": {
                        r: [run.base, run.upto, {str(s): d for s, d in sorted(run.recent.items())}]
                        for r, run in sorted(line.runs.items())
                    },
                    "removed": dict(sorted(line.removed.items())),
                    "attributes": line.attributes.__dict__,
                    "stamp": None if line.stamp is None else [line.stamp.at, line.stamp.replica],
                }
                for key, line in sorted(self.lines.items())
            },
            "cleared": dict(sorted(self.cleared.items())),
            "applied": {
                r: [seen.upto, sorted(seen.extra)] for r, seen in sorted(self.applied.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cart:
        if isinstance(data.get("applied"), list):
            return _from_unbounded(data)
        cart = cls(
            cleared={r: int(s) for r, s in data.get("cleared", {}).items()},
            applied={r: Applied(int(u), set(map(int, x))) for r, (u, x) in data["applied"].items()},
        )
        for key, line in data.get("lines", {}).items():
            stamp = line.get("stamp")
            cart.lines[key] = Line(
                runs={
                    r: Run(int(b), int(u), {int(s): int(d) for s, d in recent.items()})
                    for r, (b, u, recent) in line["runs"].items()
                },
                removed={r: int(s) for r, s in line.get("removed", {}).items()},
                attributes=Attributes(**line.get("attributes", {})),
                stamp=None if stamp is None else Stamp(float(stamp[0]), str(stamp[1])),
            )
        return cart


RECENT = 32  # contributions per line and replica kept one by one before folding


def _fold_max(vectors: Iterable[Vector]) -> dict[str, int]:
    result: dict[str, int] = {}
    for each in vectors:
        result = _join_vectors(result, each)
    return result


def _join_lines(a: Line, b: Line) -> Line:
    line = Line(removed=_join_vectors(a.removed, b.removed))
    for replica in sorted(a.runs.keys() | b.runs.keys()):
        ours, theirs = a.runs.get(replica), b.runs.get(replica)
        line.runs[replica] = (ours or theirs or Run()).join(theirs or ours or Run())
    for source in (a, b):
        if source.stamp is not None:
            Cart._write_attributes(line, source.attributes, source.stamp)
    return line


def _from_unbounded(data: Mapping[str, Any]) -> Cart:
    """A cart stored before watermarks (every applied id, every cancelled id)."""
    cancelled = set(data.get("cancelled", []))
    cart = Cart()
    for text in data.get("applied", []):
        op = OpId.parse(text)
        cart.applied.setdefault(op.replica, Applied()).add(op.seq)
    for key, stored in data.get("lines", {}).items():
        stamp = stored.get("stamp")
        line = Line(
            attributes=Attributes(**stored.get("attributes", {})),
            stamp=None if stamp is None else Stamp(float(stamp[0]), str(stamp[1])),
        )
        for text, delta in stored.get("contributions", {}).items():
            if text not in cancelled:
                op = OpId.parse(text)
                line.runs.setdefault(op.replica, Run()).put(op.seq, int(delta))
        cart.lines[key] = line
    return cart.compact()


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


def merge_replica(merge_id: str) -> str:
    """The replica name of a merge's operations (a split takes them back by it)."""
    return f"merge:{merge_id}"


def merge_plan(
    customer: Cart, guest: Cart, policy: MergePolicy, merge_id: str, at: float
) -> list[Add]:
    """The operations that fold `guest` into `customer` by `policy`. Their ids derive from
    `merge_id`, so applying the plan again (a retried identify) changes nothing."""
    plan: list[Add] = []
    guest_lines = guest.quantities()
    for seq, key in enumerate(sorted(guest_lines), start=1):
        have = customer.quantity(key)
        # From the counter, not the clamped quantity, so that the line ends at the target.
        delta = merged_quantity(policy, have, guest_lines[key]) - customer.total(key)
        if delta:
            # A line new to the customer's cart brings the guest's name and price snapshot.
            attributes = guest.lines[key].attributes if have == 0 else None
            plan.append(Add(OpId(merge_replica(merge_id), seq), key, delta, attributes, at))
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
    "Applied",
    "Attributes",
    "Cart",
    "CartError",
    "Clear",
    "MergePolicy",
    "OpId",
    "Remove",
    "Run",
    "Vector",
    "apply_all",
    "copy",
    "line_key",
    "line_parts",
    "merge_plan",
    "merge_replica",
    "merged_quantity",
    "vector",
]
