"""Laws of the identity graph, checked on generated histories (hypothesis).

- Any order of the same identify calls ends in the same partition of identifiers.
- A merge moves events; none is lost or duplicated.
- A merge followed by its split gives back both customers as they were.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnisdk.testing import ATTRIBUTED_EVENTS
from tests.server.conftest import ShopForTest, start_harness

POOL = (
    [("anonymous", f"device-{n}") for n in range(5)]
    + [("email", f"person{n}@example.com") for n in range(3)]
    + [("loyalty_card", f"LC-{n}") for n in range(2)]
)
PROPERTIES = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

calls_strategy = st.lists(
    st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True), min_size=1, max_size=6
)


def body(call: list[tuple[str, str]]) -> dict[str, Any]:
    return {"identifiers": [{"type": t, "value": v} for t, v in call]}


async def _partition(
    shop: ShopForTest, used: set[tuple[str, str]]
) -> set[frozenset[tuple[str, str]]]:
    owner: dict[str, set[tuple[str, str]]] = {}
    for type, value in used:
        response = await shop.request(
            "POST", "/v1/identity/resolve", json={"type": type, "value": value}
        )
        owner.setdefault(response.json()["customer_id"], set()).add((type, value))
    return {frozenset(group) for group in owner.values()}


def expected_partition(calls: list[list[tuple[str, str]]]) -> set[frozenset[tuple[str, str]]]:
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for call in calls:
        for item in call[1:]:
            parent[find(item)] = find(call[0])
        find(call[0])
    groups: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for item in list(parent):
        groups.setdefault(find(item), set()).add(item)
    return {frozenset(g) for g in groups.values()}


@PROPERTIES
@given(calls=calls_strategy, order=st.randoms(use_true_random=False))
def test_any_order_of_identify_calls_gives_the_same_partition(
    migrated_database_url: str, calls: list[list[tuple[str, str]]], order: Any
) -> None:
    shuffled = list(calls)
    order.shuffle(shuffled)
    used = {item for call in calls for item in call}

    async def scenario() -> tuple[set[frozenset[tuple[str, str]]], ...]:
        async for server in start_harness(migrated_database_url, log_level="WARNING"):
            results = []
            for sequence in (calls, shuffled):
                shop = await server.shop()
                for call in sequence:
                    response = await shop.request("POST", "/v1/identity/identify", json=body(call))
                    assert response.status_code == 200, response.text
                results.append(await _partition(shop, used))
            return tuple(results)
        raise AssertionError("no harness")

    first, second = asyncio.run(scenario())
    assert first == second == expected_partition(calls)


@PROPERTIES
@given(calls=calls_strategy)
def test_merges_lose_and_duplicate_no_event(
    migrated_database_url: str, calls: list[list[tuple[str, str]]]
) -> None:
    used = sorted({item for call in calls for item in call})

    async def scenario() -> None:
        async for server in start_harness(migrated_database_url, log_level="WARNING"):
            shop = await server.shop(settings=ATTRIBUTED_EVENTS)
            tracked: dict[str, tuple[str, str]] = {}
            for n, (type, value) in enumerate(used):
                event = {
                    "identifier": {"type": type, "value": value},
                    "name": "product_viewed",
                    "event_id": f"evt-{n}",
                }
                assert (await shop.request("POST", "/v1/events", json=event)).status_code == 200
                tracked[f"evt-{n}"] = (type, value)
            for call in calls:
                await shop.request("POST", "/v1/identity/identify", json=body(call))
            seen: list[str] = []
            for group in await _partition(shop, set(used)):
                type, value = next(iter(group))
                customer = (
                    await shop.request(
                        "POST", "/v1/identity/resolve", json={"type": type, "value": value}
                    )
                ).json()["customer_id"]
                page = (
                    await shop.request(
                        "GET", f"/v1/customers/{customer}/timeline", params={"limit": "200"}
                    )
                ).json()
                ids = [e["event_id"] for e in page["items"]]
                assert {tracked[i] for i in ids} == set(group)
                seen += ids
            assert sorted(seen) == sorted(tracked)

    asyncio.run(scenario())


@PROPERTIES
@given(
    left=st.lists(st.sampled_from(POOL[:5]), min_size=1, max_size=3, unique=True),
    right=st.lists(st.sampled_from(POOL[5:]), min_size=1, max_size=3, unique=True),
    left_traits=st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), max_size=2),
    right_traits=st.dictionaries(st.sampled_from("bcd"), st.integers(0, 9), max_size=2),
)
def test_merge_then_split_restores_both_customers(
    migrated_database_url: str,
    left: list[tuple[str, str]],
    right: list[tuple[str, str]],
    left_traits: dict[str, int],
    right_traits: dict[str, int],
) -> None:
    async def view(shop: ShopForTest, customer: str) -> tuple[Any, ...]:
        profile = (await shop.request("GET", f"/v1/customers/{customer}/profile")).json()
        return (
            profile["customer_id"],
            sorted((i["type"], i["value"]) for i in profile["identifiers"]),
            profile["traits"],
            sorted(e["event_id"] for e in profile["recent_events"]),
        )

    async def scenario() -> None:
        async for server in start_harness(migrated_database_url, log_level="WARNING"):
            shop = await server.shop()
            ids = []
            for side, traits in ((left, left_traits), (right, right_traits)):
                result = await shop.request(
                    "POST", "/v1/identity/identify", json={**body(side), "traits": traits}
                )
                customer = result.json()["customer_id"]
                ids.append(customer)
                for n in range(2):
                    await shop.request(
                        "POST", "/v1/events", json={"customer_id": customer, "name": f"e{n}"}
                    )
            before = [await view(shop, c) for c in ids]
            joined = await shop.request(
                "POST", "/v1/identity/identify", json=body([left[0], right[0]])
            )
            assert joined.json()["merged"]
            split = await shop.request("POST", f"/v1/merges/{joined.json()['merge_ids'][0]}/split")
            assert split.status_code == 200, split.text
            after = [await view(shop, c) for c in ids]
            assert after == before

    asyncio.run(scenario())
