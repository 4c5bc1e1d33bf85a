"""Recommendations from co-occurrence (DESIGN: personalised content), pure.

A basket is what went together: the SKUs of one order, or the SKUs one customer added to a
cart. Two SKUs in the same basket co-occur; the more baskets share them, the stronger the pair.
For a cart, candidates are scored by their co-occurrence with every SKU in it ("bought
together"), then the most popular SKUs fill what is left. What is in the cart or was already
bought is never recommended.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

MAX_PARTNERS = 20
MAX_POPULAR = 100
MAX_BASKET = 50  # a basket bigger than this (a bulk order) says little about pairs


def build(baskets: Iterable[Sequence[str]]) -> dict[str, Any]:
    """The model as JSON: {"together": {sku: [[sku, score], ...]}, "popular": [[sku, n], ...]}."""
    pairs: dict[str, Counter[str]] = defaultdict(Counter)
    popularity: Counter[str] = Counter()
    baskets_seen = 0
    for basket in baskets:
        items = sorted(set(basket))[:MAX_BASKET]
        if not items:
            continue
        baskets_seen += 1
        popularity.update(items)
        for a, b in combinations(items, 2):
            pairs[a][b] += 1
            pairs[b][a] += 1
    return {
        "baskets": baskets_seen,
        "together": {
            sku: [[other, n] for other, n in sorted(partners.items(), key=_rank)[:MAX_PARTNERS]]
            for sku, partners in sorted(pairs.items())
        },
        "popular": [[sku, n] for sku, n in sorted(popularity.items(), key=_rank)[:MAX_POPULAR]],
    }


def _rank(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def recommend(
    model: dict[str, Any],
    cart: Iterable[str] = (),
    purchased: Iterable[str] = (),
    limit: int = 4,
) -> list[tuple[str, str]]:
    """Up to `limit` (sku, why) pairs: cross-sell for the cart (or for what was bought when the
    cart is empty), then popular ones; never a SKU in the cart or already bought."""
    in_cart = list(dict.fromkeys(cart))
    bought = set(purchased)
    excluded = set(in_cart) | bought
    anchors = in_cart or sorted(bought)
    scores: Counter[str] = Counter()
    together = model.get("together", {})
    for anchor in anchors:
        for other, n in together.get(anchor, ()):
            if other not in excluded:
                scores[other] += n
    chosen = [(sku, "bought together") for sku, _ in sorted(scores.items(), key=_rank)[:limit]]
    taken = {sku for sku, _ in chosen}
    for sku, _ in model.get("popular", ()):
        if len(chosen) >= limit:
            break
        if sku not in excluded and sku not in taken:
            chosen.append((sku, "popular"))
            taken.add(sku)
    return chosen
