"""The shared session document on the server."""

from __future__ import annotations

from tests.server.conftest import ShopForTest


async def identify(shop: ShopForTest, **body: str) -> str:
    return str(
        (await shop.request("POST", "/v1/identity/identify", json=body)).json()["customer_id"]
    )


async def test_the_laptop_continues_where_the_phone_stopped(shop: ShopForTest) -> None:
    amy = await identify(shop, anonymous_id="phone", email="amy@example.com")
    write = await shop.request(
        "POST",
        f"/v1/sessions/{amy}",
        "app",
        json={"entries": {"last_page": "/billboard-7", "form": {"step": 2}}},
    )
    assert write.status_code == 200
    seen = (await shop.request("GET", f"/v1/sessions/{amy}", "web")).json()["entries"]
    assert seen["form"]["value"] == {"step": 2} and seen["form"]["channel"] == "app"
    await shop.request("POST", f"/v1/sessions/{amy}", "web", json={"entries": {"form": None}})
    assert "form" not in (await shop.request("GET", f"/v1/sessions/{amy}")).json()["entries"]


async def test_bad_session_writes_are_refused_and_change_nothing(shop: ShopForTest) -> None:
    amy = await identify(shop, anonymous_id="phone")
    await shop.request("POST", f"/v1/sessions/{amy}", json={"entries": {"a": 1}})
    for entries in ({"Bad Key": 1}, {"big": "x" * 5000}):
        response = await shop.request("POST", f"/v1/sessions/{amy}", json={"entries": entries})
        assert response.status_code == 422
    assert list((await shop.request("GET", f"/v1/sessions/{amy}")).json()["entries"]) == ["a"]


async def test_sessions_merge_with_identities_and_split_back(shop: ShopForTest) -> None:
    phone = await identify(shop, anonymous_id="phone", email="amy@example.com")
    await shop.request(
        "POST", f"/v1/sessions/{phone}", "app", json={"entries": {"chat_thread": "t-1"}}
    )
    laptop = await identify(shop, anonymous_id="laptop")
    await shop.request(
        "POST", f"/v1/sessions/{laptop}", "web", json={"entries": {"last_page": "/shoes"}}
    )
    merged = (
        await shop.request(
            "POST",
            "/v1/identity/identify",
            json={"anonymous_id": "laptop", "email": "amy@example.com"},
        )
    ).json()
    both = (await shop.request("GET", f"/v1/sessions/{phone}")).json()["entries"]
    assert set(both) == {"chat_thread", "last_page"}
    await shop.request("POST", f"/v1/merges/{merged['merge_ids'][0]}/split")
    assert set((await shop.request("GET", f"/v1/sessions/{laptop}")).json()["entries"]) == {
        "last_page"
    }
    # The survivor keeps its own keys, not the split-off customer's.
    assert set((await shop.request("GET", f"/v1/sessions/{phone}")).json()["entries"]) == {
        "chat_thread"
    }


async def test_writes_to_the_guest_after_the_merge_go_back_with_the_split(
    shop: ShopForTest,
) -> None:
    amy = await identify(shop, anonymous_id="phone", email="amy@example.com")
    await shop.request("POST", f"/v1/sessions/{amy}", "app", json={"entries": {"chat": "t-1"}})
    guest = await identify(shop, anonymous_id="laptop")
    await shop.request("POST", f"/v1/sessions/{guest}", "web", json={"entries": {"page": "/a"}})
    merged = (
        await shop.request(
            "POST",
            "/v1/identity/identify",
            json={"anonymous_id": "laptop", "email": "amy@example.com"},
        )
    ).json()
    # The laptop still names the guest id: its writes land on Amy until the split...
    await shop.request(
        "POST", f"/v1/sessions/{guest}", "web", json={"entries": {"page": "/b", "form": 2}}
    )
    await shop.request("POST", f"/v1/sessions/{amy}", "app", json={"entries": {"wish": "x"}})
    both = (await shop.request("GET", f"/v1/sessions/{amy}")).json()["entries"]
    assert {key: entry["value"] for key, entry in both.items()} == {
        "chat": "t-1",
        "page": "/b",
        "form": 2,
        "wish": "x",
    }
    await shop.request("POST", f"/v1/merges/{merged['merge_ids'][0]}/split")
    # ...and go back to it with the split: exactly what was merged plus what was written to it.
    laptop = (await shop.request("GET", f"/v1/sessions/{guest}")).json()["entries"]
    assert {key: entry["value"] for key, entry in laptop.items()} == {"page": "/b", "form": 2}
    phone = (await shop.request("GET", f"/v1/sessions/{amy}")).json()["entries"]
    assert {key: entry["value"] for key, entry in phone.items()} == {"chat": "t-1", "wish": "x"}
