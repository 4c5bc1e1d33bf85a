"""The cart CRDT: its laws (hypothesis) and the rules users rely on."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnisdk.core.cart import (
    RECENT,
    Add,
    Applied,
    Attributes,
    Cart,
    CartError,
    Clear,
    MergePolicy,
    OpId,
    Remove,
    apply_all,
    copy,
    line_key,
    line_parts,
    merge_plan,
)

SHOES = line_key("TR2", {"size": "38"})
SOCKS = line_key("SOCK-3P")


def test_line_keys_are_the_sku_and_its_options_in_a_fixed_order() -> None:
    assert line_key("TR2", {"size": "38", "colour": "red"}) == "TR2|colour=red;size=38"
    assert line_key("TR2", {"colour": "red", "size": "38"}) == line_key(
        "TR2", {"size": "38", "colour": "red"}
    )
    with pytest.raises(CartError):
        line_key("")


def test_an_operation_is_applied_at_most_once() -> None:
    cart = Cart()
    add = Add(OpId("laptop", 1), SHOES, 1)
    assert cart.apply(add) and not cart.apply(add)
    assert cart.quantity(SHOES) == 1


def test_a_concurrent_add_survives_a_remove_that_did_not_see_it() -> None:
    laptop, phone = Cart(), Cart()
    first = Add(OpId("laptop", 1), SHOES, 1)
    laptop.apply(first)
    phone.apply(first)
    phone.apply(Add(OpId("phone", 1), SHOES, 1))  # the phone adds another pair
    laptop.apply(
        Remove(OpId("laptop", 2), SHOES, laptop.observed(SHOES))
    )  # laptop removes what it saw
    joined = laptop.join(phone)
    assert joined.quantity(SHOES) == 1
    assert joined.quantities() == {SHOES: 1}


def test_set_quantity_is_a_delta_from_what_the_client_saw() -> None:
    cart = apply_all(Cart(), [Add(OpId("web", 1), SHOES, 1)])
    seen = cart.quantity(SHOES)
    apply_all(cart, [Add(OpId("web", 2), SHOES, 3 - seen)])
    assert cart.quantity(SHOES) == 3
    apply_all(cart, [Add(OpId("web", 3), SHOES, 1 - cart.quantity(SHOES))])
    assert cart.quantity(SHOES) == 1


def test_clear_cancels_what_was_seen_only() -> None:
    cart = apply_all(Cart(), [Add(OpId("a", 1), SHOES, 2), Add(OpId("a", 2), SOCKS, 1)])
    seen = cart.observed()
    late = Add(OpId("b", 1), SOCKS, 1)  # from another device, not yet seen
    apply_all(cart, [Clear(OpId("a", 3), seen), late])
    assert cart.quantities() == {SOCKS: 1}


def test_attributes_are_last_writer_wins_and_prices_are_snapshots() -> None:
    cart = Cart()
    cart.apply(Add(OpId("a", 1), SHOES, 1, Attributes("Trail runner", 89.0, "EUR"), at=10.0))
    cart.apply(Add(OpId("b", 1), SHOES, 1, Attributes("Trail runner 2", 79.0, "EUR"), at=5.0))
    assert cart.lines[SHOES].attributes.unit_price == 89.0  # the older write loses
    cart.apply(Add(OpId("b", 2), SHOES, 1, Attributes("Trail runner", 99.0, "EUR"), at=11.0))
    assert cart.lines[SHOES].attributes.unit_price == 99.0


@pytest.mark.parametrize(
    ("op", "words"),
    [
        (Add(OpId("a", 1), SHOES, 0), "not 0"),
        (Add(OpId("a", 1), SHOES, 5000), "999"),
        (Add(OpId("a", 1), SHOES, 1, Attributes(unit_price=-1.0)), "non-negative"),
        (Remove(OpId("a", 1), "NOPE", {}), "no line"),
    ],
)
def test_bad_operations_are_refused_and_change_nothing(op: Add | Remove, words: str) -> None:
    cart = Cart()
    with pytest.raises(CartError, match=words):
        apply_all(cart, [op])
    assert cart.to_dict() == Cart().to_dict()


def test_limits_on_lines_and_units() -> None:
    cart = apply_all(Cart(), [Add(OpId("a", n), line_key(f"S{n}"), 1) for n in range(1, 101)])
    with pytest.raises(CartError, match="100 lines"):
        apply_all(cart, [Add(OpId("a", 101), line_key("ONE-MORE"), 1)])
    with pytest.raises(CartError, match="999 units"):
        apply_all(cart, [Add(OpId("a", 102), line_key("S1"), 999)])
    with pytest.raises(CartError):
        OpId("", 1)
    with pytest.raises(CartError):
        OpId.parse("no-sequence")


def test_the_state_round_trips_through_its_stored_form() -> None:
    cart = apply_all(Cart(), [Add(OpId("a", 1), SHOES, 2, Attributes("Trail", 89.0, "EUR"), 1.0)])
    cart.apply(Remove(OpId("a", 2), SOCKS, {"x": 9}))
    assert Cart.from_dict(cart.to_dict()).to_dict() == cart.to_dict()


# --- laws -----------------------------------------------------------------------------------

replicas = st.sampled_from(["laptop", "phone", "till"])
keys = st.sampled_from([SHOES, SOCKS, line_key("CAP")])


@st.composite
def histories(draw: st.DrawFn, longest: int = 25) -> list[Cart]:
    """Three replicas that each saw a random mix of their own and each other's operations."""
    carts = {name: Cart() for name in ("laptop", "phone", "till")}
    for seq in range(1, draw(st.integers(1, longest)) + 1):
        name = draw(replicas)
        cart = carts[name]
        kinds = (
            ["add", "add", "remove", "clear", "sync"] if longest <= 25 else ["add"] * 8 + ["sync"]
        )
        kind = draw(st.sampled_from(kinds))
        if kind == "add":
            cart.apply(
                Add(
                    OpId(name, seq),
                    draw(keys),
                    draw(st.integers(-3, 4).filter(bool)),
                    Attributes(unit_price=float(draw(st.integers(1, 99)))),
                    float(seq),
                )
            )
        elif kind == "remove":
            key = draw(keys)
            cart.apply(Remove(OpId(name, seq), key, cart.observed(key)))
        elif kind == "clear":
            cart.apply(Clear(OpId(name, seq), cart.observed()))
        else:
            other = carts[draw(replicas)]
            carts[name] = cart.join(other)
    return list(carts.values())


def same(a: Cart, b: Cart) -> bool:
    return a.to_dict() == b.to_dict()


@settings(max_examples=200)
@given(st.one_of(histories(), histories(longest=200)))
def test_join_is_commutative_associative_and_idempotent(carts: list[Cart]) -> None:
    a, b, c = carts
    assert same(a.join(b), b.join(a))
    assert same(a.join(b).join(c), a.join(b.join(c)))
    assert same(a.join(a), a)


@settings(max_examples=200)
@given(
    st.lists(st.tuples(replicas, keys, st.integers(1, 5)), min_size=1, max_size=20), st.randoms()
)
def test_replicas_that_saw_the_same_operations_agree_whatever_the_order(
    adds: list[tuple[str, str, int]], shuffle: random.Random
) -> None:
    ops = [Add(OpId(r, n), k, d) for n, (r, k, d) in enumerate(adds, start=1)]
    first = apply_all(Cart(), ops)
    shuffled = list(ops)
    shuffle.shuffle(shuffled)
    second = apply_all(Cart(), shuffled + shuffled[:3])  # with some replays
    assert first.quantities() == second.quantities()


@settings(max_examples=200)
@given(histories(), st.sampled_from(list(MergePolicy)))
def test_a_guest_merge_applied_twice_is_applied_once(
    carts: list[Cart], policy: MergePolicy
) -> None:
    customer, guest = copy(carts[0]), carts[1]
    plan = merge_plan(customer, guest, policy, "m-1", 100.0)
    once = apply_all(copy(customer), plan)
    twice = apply_all(apply_all(copy(customer), plan), plan)
    assert same(once, twice)


@settings(max_examples=200)
@given(histories())
def test_max_and_sum_merges_are_symmetric_in_quantities(carts: list[Cart]) -> None:
    a, b = carts[0], carts[1]
    for policy in (MergePolicy.MAX, MergePolicy.SUM):
        ab = apply_all(copy(a), merge_plan(a, b, policy, "ab", 1.0)).quantities()
        ba = apply_all(copy(b), merge_plan(b, a, policy, "ba", 1.0)).quantities()
        assert ab == ba


def test_merge_policies_decide_each_lines_quantity() -> None:
    customer = apply_all(Cart(), [Add(OpId("c", 1), SHOES, 1), Add(OpId("c", 2), SOCKS, 3)])
    guest = apply_all(
        Cart(),
        [Add(OpId("g", 1), SHOES, 2, Attributes("Trail", 89.0)), Add(OpId("g", 2), SOCKS, 1)],
    )
    expected = {
        MergePolicy.MAX: {SHOES: 2, SOCKS: 3},
        MergePolicy.SUM: {SHOES: 3, SOCKS: 4},
        MergePolicy.GUEST_WINS: {SHOES: 2, SOCKS: 1},
        MergePolicy.CUSTOMER_WINS: {SHOES: 1, SOCKS: 3},
    }
    for policy, quantities in expected.items():
        merged = apply_all(copy(customer), merge_plan(customer, guest, policy, "m", 1.0))
        assert merged.quantities() == quantities, policy
    new_line = apply_all(Cart(), merge_plan(Cart(), guest, MergePolicy.MAX, "m", 1.0))
    assert new_line.lines[SHOES].attributes.unit_price == 89.0


# --- bounded state --------------------------------------------------------------------------


def test_a_remove_of_a_line_with_a_million_adds_sends_one_entry_per_replica() -> None:
    cart = Cart()
    for seq in range(1, 1_000_001):  # a million adds, alternately +1 and -1
        cart.apply(Add(OpId("web", seq), SHOES, 1 if seq % 2 else -1))
    cart.apply(Add(OpId("app", 1), SHOES, 2))
    seen = cart.observed(SHOES)
    assert seen == {"app": 1, "web": 1_000_000}
    cart.apply(Add(OpId("till", 1), SHOES, 1))  # not seen by the remove
    cart.apply(Remove(OpId("app", 2), SHOES, seen))
    assert cart.quantities() == {SHOES: 1}
    assert list(cart.lines[SHOES].runs) == ["till"]
    assert cart.applied["web"].upto == 1_000_000 and not cart.applied["web"].extra


def test_state_stays_small_however_long_the_history() -> None:
    cart = Cart()
    for seq in range(1, 10_001):
        cart.apply(Add(OpId("web", seq), line_key(f"S{seq % 7}"), 1 if seq % 3 else -1))
    assert all(
        len(run.recent) <= RECENT for line in cart.lines.values() for run in line.runs.values()
    )
    assert len(str(cart.to_dict())) < 4_000


def test_operations_arriving_out_of_order_are_each_applied_once() -> None:
    cart = Cart()
    order = [3, 1, 2, 6, 5, 4, 3, 1]
    applied = [cart.apply(Add(OpId("web", seq), SHOES, 1)) for seq in order]
    assert applied == [True] * 6 + [False] * 2
    assert cart.quantity(SHOES) == 6
    assert cart.applied["web"].upto == 6 and not cart.applied["web"].extra


def test_a_replica_that_skipped_numbers_keeps_a_bounded_memory_of_its_gaps() -> None:
    seen = Applied()
    for seq in range(2, 1_000, 2):  # every odd number is missing
        seen.add(seq)
    assert len(seen.extra) <= 64
    assert 997 not in seen and 998 in seen


def test_an_old_cart_is_read_into_the_bounded_form() -> None:
    old = {
        "lines": {
            SHOES: {
                "contributions": {"a:1": 2, "a:2": 1, "b:1": 5},
                "attributes": {"name": "Trail", "unit_price": 89.0, "currency": "EUR"},
                "stamp": [1.0, "a"],
            }
        },
        "cancelled": ["b:1"],
        "applied": ["a:1", "a:2", "b:1", "b:2"],
    }
    cart = Cart.from_dict(old)
    assert cart.quantities() == {SHOES: 3}
    assert cart.has_applied(OpId("b", 2)) and not cart.has_applied(OpId("b", 3))
    assert cart.lines[SHOES].attributes.unit_price == 89.0


sequences = st.lists(st.integers(1, 120), max_size=60)


@settings(max_examples=200)
@given(sequences, sequences, sequences)
def test_watermarks_join_like_sets(a: list[int], b: list[int], c: list[int]) -> None:
    def mark(seqs: list[int]) -> Applied:
        seen = Applied()
        for seq in seqs:
            seen.add(seq)
        return seen

    x, y, z = mark(a), mark(b), mark(c)
    assert x.join(y) == y.join(x)
    assert x.join(y).join(z) == x.join(y.join(z))
    assert x.join(x) == x
    assert all(seq in x.join(y) for seq in a + b)


@settings(max_examples=200)
@given(histories(), st.integers(0, RECENT))
def test_compaction_changes_no_visible_quantity(carts: list[Cart], keep: int) -> None:
    for cart in carts:
        before = (cart.quantities(), {k: cart.total(k) for k in cart.lines})
        for line in cart.lines.values():
            for run in line.runs.values():
                run.fold(keep)
        assert (cart.quantities(), {k: cart.total(k) for k in cart.lines}) == before
        assert Cart.from_dict(cart.to_dict()).to_dict() == cart.to_dict()


@settings(max_examples=100)
@given(st.lists(st.tuples(replicas, st.integers(-3, 4).filter(bool)), min_size=1, max_size=200))
def test_a_remove_that_saw_everything_empties_the_line_whatever_was_folded(
    adds: list[tuple[str, int]],
) -> None:
    cart = Cart()
    for n, (replica, delta) in enumerate(adds, start=1):
        cart.apply(Add(OpId(replica, n), SHOES, delta))
    late = Add(OpId("late", 1), SHOES, 2)
    seen = cart.observed(SHOES)
    cart.apply(late)
    cart.apply(Remove(OpId("remover", 1), SHOES, seen))
    assert cart.total(SHOES) == 2


def test_a_late_remove_of_a_line_a_clear_forgot_changes_nothing() -> None:
    cart = apply_all(Cart(), [Add(OpId("a", 1), SHOES, 2)])
    seen = cart.observed(SHOES)
    apply_all(cart, [Clear(OpId("b", 1), cart.observed())])
    assert SHOES not in cart.lines
    apply_all(cart, [Remove(OpId("a", 2), SHOES, seen)])
    assert cart.quantities() == {}


@settings(max_examples=50)
@given(
    st.lists(
        st.tuples(replicas, st.integers(-2, 3).filter(bool), st.sampled_from([None, *range(3)])),
        min_size=1,
        max_size=300,
    )
)
def test_folded_replicas_join_to_the_sum_of_every_add(
    steps: list[tuple[str, int, int | None]],
) -> None:
    names = ["laptop", "phone", "till"]
    carts = {name: Cart() for name in names}
    for seq, (name, delta, sync_with) in enumerate(steps, start=1):
        carts[name].apply(Add(OpId(name, seq), SHOES, delta))
        if sync_with is not None:
            carts[name] = carts[name].join(carts[names[sync_with]])
    everything = carts["laptop"].join(carts["phone"]).join(carts["till"])
    assert everything.total(SHOES) == sum(delta for _, delta, _ in steps)
    lines = [cart.lines[key] for cart in carts.values() for key in cart.lines]
    runs = [run for line in lines for run in line.runs.values()]
    assert all(len(run.recent) <= RECENT for run in runs)


_option_names = st.text(st.characters(blacklist_characters="=;|"), min_size=1, max_size=8)
_option_values = st.text(st.characters(blacklist_characters=";|"), max_size=8)


@given(
    st.text(st.characters(blacklist_characters="|"), min_size=1, max_size=64),
    st.dictionaries(_option_names, _option_values, max_size=4),
)
def test_a_line_key_reads_back_as_the_line_it_was_made_from(
    sku: str, options: dict[str, str]
) -> None:
    assert line_parts(line_key(sku, options)) == (sku, options)
