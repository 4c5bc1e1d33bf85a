"""Gift or for herself, per order line (issue 19), pure: a label with a confidence.

Evidence, strongest first:
- an explicit flag from the shop (gift wrap, gift message, gift receipt): decides alone;
- shipped to another name (strong) or only another address (weak: her office, her parents);
- a size, gender or age band unlike her own history (children's sizes for an adult buyer);
- a category she bought once and never again although she kept buying (a one-off).
And against: a size she usually buys, a category she buys again and again.

Each piece adds its weight to the log-odds of a gift, from a prior of 15 %; the label is the
likelier side and the confidence its probability. Gift lines stay out of her interests and
recommendations but count in her value (services/profile.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

PRIOR = 0.15
WEIGHTS: dict[str, float] = {
    "ship_to_other_name": 3.2,
    "ship_to_other_address": 0.9,
    "size_unlike_hers": 1.6,
    "gender_unlike_hers": 1.6,
    "age_band_unlike_hers": 2.2,
    "category_never_again": 1.0,
    "size_she_buys": -1.6,
    "category_she_buys_again": -1.2,
}
EXPLICIT_CONFIDENCE = 0.98
MIN_HISTORY = 2  # orders of hers needed before her history says anything


@dataclass(frozen=True)
class Line:
    """What the shop knows of one line: product attributes and the order's shipping."""

    category: str | None = None
    size: str | None = None
    gender: str | None = None  # of the product: "women", "men", "unisex", ...
    age_band: str | None = None  # of the product: "adult", "kids", "baby", ...
    explicit_gift: bool | None = None  # None: the shop did not say
    ship_to_other_name: bool = False
    ship_to_other_address: bool = False


@dataclass(frozen=True)
class History:
    """Her own purchases on every channel (gift lines left out): how often each value was
    bought, and categories bought after this order."""

    orders: int = 0
    sizes: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (category, size)
    genders: Mapping[str, int] = field(default_factory=dict)
    age_bands: Mapping[str, int] = field(default_factory=dict)
    categories: Mapping[str, int] = field(default_factory=dict)
    orders_after: int = 0  # her orders placed after this one
    categories_after: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GiftLabel:
    gift: bool
    confidence: float
    reasons: tuple[str, ...]


def evidence(line: Line, history: History) -> list[str]:
    """The names of the pieces of evidence that apply (keys of WEIGHTS)."""
    found = []
    if line.ship_to_other_name:
        found.append("ship_to_other_name")
    elif line.ship_to_other_address:
        found.append("ship_to_other_address")
    if history.orders >= MIN_HISTORY:
        if line.size and line.category:
            sizes_here = {s for (c, s) in history.sizes if c == line.category}
            if (line.category, line.size) in history.sizes:
                found.append("size_she_buys")
            elif sizes_here:
                found.append("size_unlike_hers")
        genders = history.genders
        if line.gender and genders and line.gender not in genders and line.gender != "unisex":
            found.append("gender_unlike_hers")
        if line.age_band and history.age_bands and line.age_band not in history.age_bands:
            found.append("age_band_unlike_hers")
    if line.category:
        if history.categories.get(line.category, 0) >= 2:
            found.append("category_she_buys_again")
        elif history.orders_after >= MIN_HISTORY and line.category not in history.categories_after:
            found.append("category_never_again")
    return found


def classify(line: Line, history: History) -> GiftLabel:
    """Gift or self for one line, with a confidence in [0.5, 1] and the reasons."""
    if line.explicit_gift is not None:
        reason = "marked as a gift" if line.explicit_gift else "marked as not a gift"
        return GiftLabel(line.explicit_gift, EXPLICIT_CONFIDENCE, (reason,))
    found = evidence(line, history)
    odds = math.log(PRIOR / (1 - PRIOR)) + sum(WEIGHTS[name] for name in found)
    probability = 1 / (1 + math.exp(-odds))
    gift = probability >= 0.5
    return GiftLabel(gift, round(probability if gift else 1 - probability, 3), tuple(found))
