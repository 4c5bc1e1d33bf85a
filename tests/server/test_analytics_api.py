"""The analytics API: scopes, reports, the lifetime value fit feeding the profile, bad input."""

from __future__ import annotations

from datetime import timedelta

import pytest

from omnisdk.core.channels import Channel
from omnisdk.core.conditions import compile_condition
from omnisdk.models import Profile
from omnisdk.resources.content import profile_facts
from tests.server.conftest import Harness, ShopForTest
from tests.server.test_analytics_service import AS_OF, T0, amy_and_friends, customer, sell

PERIOD = {"since": T0.isoformat(), "until": AS_OF.isoformat()}


async def test_analytics_needs_an_admin_key(server: Harness, shop: ShopForTest) -> None:
    for channel in (Channel.WEB, Channel.APP, Channel.POS):
        answer = await shop.request("GET", "/v1/analytics/ropo", channel)
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/problem+json"
    assert (await server.http.get("/v1/analytics/ropo")).status_code == 401


async def test_attribution_credits_every_conversion_by_every_model(
    server: Harness, shop: ShopForTest
) -> None:
    await amy_and_friends(server, shop)
    answer = await shop.request(
        "GET", "/v1/analytics/attribution", params={**PERIOD, "bootstrap": 20}
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["journeys"] == 3 and report["distinct_paths"] == 3
    assert len(report["models"]) == 9
    for model in report["models"]:
        assert model["conversions"] == 2 and model["revenue"] == 200.0
        assert sum(c["conversions"] for c in model["credits"]) == pytest_approx(2)
    last = next(m for m in report["models"] if m["model"] == "last_touch")
    assert {c["channel"]: c["revenue"] for c in last["credits"]}["email_click"] == 120.0


def pytest_approx(value: float) -> object:
    import pytest

    return pytest.approx(value)


async def test_another_tenant_sees_none_of_it(server: Harness, shop: ShopForTest) -> None:
    await amy_and_friends(server, shop)
    other = await server.shop("other shop")
    answer = await other.request("GET", "/v1/analytics/ropo", params=PERIOD)
    assert answer.json()["store"]["orders"] == 0
    answer = await other.request("GET", "/v1/analytics/attribution", params=PERIOD)
    assert answer.json()["journeys"] == 0


async def test_ropo_counts_the_store_sale_researched_online(
    server: Harness, shop: ShopForTest
) -> None:
    await amy_and_friends(server, shop)
    report = (await shop.request("GET", "/v1/analytics/ropo", params=PERIOD)).json()
    assert report["store"]["researched_online_revenue"] == 120.0
    assert report["store"]["links"]["customer_code"] == {"orders": 1, "revenue": 120.0}
    assert report["online"]["reverse_ropo_share"] == 1.0
    assert report["unattributed"] == {"orders": 1, "revenue": 50.0}


async def test_bad_input_is_a_problem_and_changes_nothing(
    server: Harness, shop: ShopForTest
) -> None:
    cases = [
        ("GET", "/v1/analytics/attribution", {"params": {"since": "2099-01-01T00:00:00Z"}}),
        ("GET", "/v1/analytics/attribution", {"params": {"models": "magic"}}),
        ("GET", "/v1/analytics/attribution", {"params": {"group": "telepathy=crm"}}),
        ("GET", "/v1/analytics/attribution", {"params": {"since": "2026-10-01T00:00:00"}}),
        ("GET", "/v1/analytics/ropo", {"params": {"lookback_days": 0}}),
        ("POST", "/v1/analytics/ltv", {"json": {"months": 0}}),
        ("POST", "/v1/analytics/ltv", {"json": {"surprise": 1}}),
    ]
    for method, path, kwargs in cases:
        answer = await shop.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert answer.status_code == 422, (path, kwargs, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"].endswith("validation-error")


async def test_lifetime_value_feeds_the_profile_and_content_rules(
    server: Harness, shop: ShopForTest
) -> None:
    people = await amy_and_friends(server, shop)
    await sell(server, shop, people["amy"], "web", T0 + timedelta(days=20), "30.00")
    answer = await shop.request("POST", "/v1/analytics/ltv", json={})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "rfm" and answer.json()["customers"] == 2
    answer = await shop.request("GET", f"/v1/customers/{people['amy']}/profile", Channel.WEB)
    profile = Profile.model_validate(answer.json())
    assert profile.rfm is not None and profile.rfm.frequency == 5 and profile.ltv is None
    facts = profile_facts(profile, 0.0)
    assert compile_condition({"rfm.frequency": {"$gte": 4}})(facts.attributes, {})
    nobody = await customer(server, shop)
    blank = Profile.model_validate(
        (await shop.request("GET", f"/v1/customers/{nobody}/profile", Channel.WEB)).json()
    )
    assert blank.rfm is None and blank.ltv is None


async def test_the_html_report_is_self_contained(server: Harness, shop: ShopForTest) -> None:
    await amy_and_friends(server, shop)
    answer = await shop.request("GET", "/v1/analytics/report", params={**PERIOD, "bootstrap": 5})
    assert answer.status_code == 200
    page = answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert page.count("<svg") >= 4
    for remote in ("<script", "<link", "src=", "@import", "url("):
        assert remote not in page
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0


async def test_scores_are_exported_and_erased_with_her(server: Harness, shop: ShopForTest) -> None:
    people = await amy_and_friends(server, shop)
    assert (await shop.request("POST", "/v1/analytics/ltv", json={})).status_code == 200
    amy = people["amy"]
    exported = (await shop.request("POST", f"/v1/privacy/{amy}/export")).json()
    assert [score["customer_id"] for score in exported["scores"]] == [amy]
    assert exported["scores"][0]["rfm_frequency"] >= 1
    erased = await shop.request("POST", f"/v1/privacy/{amy}/erase")
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["customer_scores"] == 1
    fit = (await shop.request("POST", "/v1/analytics/ltv", json={})).json()
    assert fit["customers"] == 1  # Bob; her sale stays as an anonymous accounting record


async def test_a_server_without_the_analytics_extra_says_how_to_get_it(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a)
    )
    answer = await shop.request("GET", "/v1/analytics/attribution")
    assert answer.status_code == 501
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"].endswith("analytics-unavailable")
    assert "omnisdk[server,analytics]" in answer.json()["detail"]
