"""Gift or self per order line, on labelled examples (issue 19)."""

from __future__ import annotations

import pytest

from omnisdk.core.gifts import GiftLabel, History, Line, classify

ADULT_WOMAN = History(
    orders=6,
    sizes={("shoes", "38"): 4, ("dresses", "M"): 2},
    genders={"women": 6},
    age_bands={"adult": 6},
    categories={"shoes": 4, "dresses": 2},
    orders_after=3,
    categories_after=frozenset({"shoes", "dresses"}),
)

# (what she bought, her history, the label a person would give it)
LABELLED: list[tuple[str, Line, History, bool]] = [
    (
        "explicit gift wrap",
        Line(category="shoes", size="38", explicit_gift=True),
        ADULT_WOMAN,
        True,
    ),
    (
        "said not a gift, shipped away",
        Line(explicit_gift=False, ship_to_other_name=True),
        ADULT_WOMAN,
        False,
    ),
    (
        "her usual shoes",
        Line(category="shoes", size="38", gender="women", age_band="adult"),
        ADULT_WOMAN,
        False,
    ),
    (
        "her usual shoes, to her office",
        Line(category="shoes", size="38", ship_to_other_address=True),
        ADULT_WOMAN,
        False,
    ),
    (
        "shipped to another person",
        Line(category="books", ship_to_other_name=True),
        ADULT_WOMAN,
        True,
    ),
    (
        "kids' trainers",
        Line(category="shoes", size="31", gender="unisex", age_band="kids"),
        ADULT_WOMAN,
        True,
    ),
    (
        "men's shirt",
        Line(category="shirts", size="L", gender="men", age_band="adult"),
        ADULT_WOMAN,
        True,
    ),
    ("a one-off category she never bought again", Line(category="watches"), ADULT_WOMAN, False),
    ("one-off, men's, never again", Line(category="watches", gender="men"), ADULT_WOMAN, True),
    (
        "a new customer's first order",
        Line(category="shoes", size="44", gender="men"),
        History(),
        False,
    ),
    (
        "a new customer's order to someone else",
        Line(category="shoes", ship_to_other_name=True),
        History(),
        True,
    ),
    (
        "a size unlike hers in her own category",
        Line(category="shoes", size="44"),
        ADULT_WOMAN,
        False,
    ),
    (
        "size and gender unlike hers",
        Line(category="shoes", size="44", gender="men"),
        ADULT_WOMAN,
        True,
    ),
]


@pytest.mark.parametrize(
    ("line", "history", "gift"), [x[1:] for x in LABELLED], ids=[x[0] for x in LABELLED]
)
def test_labelled_examples(line: Line, history: History, gift: bool) -> None:
    label = classify(line, history)
    assert label.gift is gift, label


def test_agreement_on_the_labelled_set_is_complete() -> None:
    right = sum(classify(line, history).gift is gift for _, line, history, gift in LABELLED)
    assert right == len(LABELLED)


def test_an_explicit_flag_decides_alone_with_high_confidence() -> None:
    label = classify(Line(explicit_gift=True), History())
    assert label == GiftLabel(True, 0.98, ("marked as a gift",))


def test_more_evidence_means_more_confidence() -> None:
    one = classify(Line(category="shoes", ship_to_other_name=True), ADULT_WOMAN)
    two = classify(
        Line(category="shoes", size="31", age_band="kids", ship_to_other_name=True), ADULT_WOMAN
    )
    assert one.gift and two.gift and two.confidence > one.confidence
    assert "age_band_unlike_hers" in two.reasons


def test_her_history_says_nothing_until_she_has_a_few_orders() -> None:
    short = History(orders=1, sizes={("shoes", "38"): 1}, genders={"women": 1})
    label = classify(Line(category="shoes", size="44", gender="men"), short)
    assert not label.gift and label.reasons == ()
