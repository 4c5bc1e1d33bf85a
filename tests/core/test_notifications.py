"""The pure rules of stock alerts and messages (omnisdk.core.notifications)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from omnisdk.core.notifications import (
    Kind,
    backoff_seconds,
    batch_size,
    channel_order,
    crossing,
    message_key,
    over_cap,
    quiet_until,
    window_of,
    zone,
)

BERLIN = ZoneInfo("Europe/Berlin")
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
)
clocks = st.times().map(lambda t: f"{t.hour:02d}:{t.minute:02d}")


def test_the_message_key_is_one_per_rule_customer_sku_and_window() -> None:
    key = message_key(Kind.BACK_IN_STOCK, "cus_1", "TR2|size=38", "w1")
    assert key == message_key("back_in_stock", "cus_1", "TR2|size=38", "w1")
    others = {
        message_key(Kind.PRICE_DROP, "cus_1", "TR2|size=38", "w1"),
        message_key(Kind.BACK_IN_STOCK, "cus_2", "TR2|size=38", "w1"),
        message_key(Kind.BACK_IN_STOCK, "cus_1", "TR2|size=39", "w1"),
        message_key(Kind.BACK_IN_STOCK, "cus_1", "TR2|size=38", "w2"),
    }
    assert key not in others and len(others) == 4


@given(instants, st.integers(60, 10**7))
def test_a_window_holds_every_instant_of_its_span(at: datetime, seconds: int) -> None:
    start = datetime.fromtimestamp((at.timestamp() // seconds) * seconds, UTC)
    assert window_of(at, seconds) == window_of(start, seconds)
    assert window_of(start - timedelta(seconds=1), seconds) != window_of(at, seconds)


def test_quiet_hours_across_midnight_end_at_the_next_local_morning() -> None:
    late = datetime(2026, 12, 3, 21, 30, tzinfo=UTC)  # 22:30 in Berlin
    until = quiet_until(late, BERLIN, "21:00", "08:00")
    assert until == datetime(2026, 12, 4, 7, 0, tzinfo=UTC)  # 08:00 in Berlin
    early = datetime(2026, 12, 4, 5, 0, tzinfo=UTC)  # 06:00 in Berlin
    assert quiet_until(early, BERLIN, "21:00", "08:00") == until
    assert quiet_until(datetime(2026, 12, 4, 12, 0, tzinfo=UTC), BERLIN, "21:00", "08:00") is None
    assert quiet_until(late, BERLIN, None, None) is None


@given(instants, clocks, clocks)
def test_a_message_is_never_let_through_inside_quiet_hours(
    now: datetime, start: str, end: str
) -> None:
    until = quiet_until(now, BERLIN, start, end)
    if until is None:
        return
    assert until > now
    assert until - now <= timedelta(hours=25)  # a DST day is one hour longer
    local_end = until.astimezone(BERLIN)
    assert f"{local_end:%H:%M}" == end or local_end.fold or _in_dst_gap(local_end)
    assert quiet_until(until, BERLIN, start, end) is None or start == end


def _in_dst_gap(local: datetime) -> bool:
    return local.utcoffset() != local.replace(fold=1).utcoffset()


def test_an_unknown_time_zone_falls_back_to_the_shops_then_utc() -> None:
    assert zone("Mars/Olympus", "Europe/Berlin") == BERLIN
    assert zone(None, "") == ZoneInfo("UTC")


@given(st.lists(st.integers(0, 10 * 24 * 60), max_size=20), st.integers(0, 5), st.integers(0, 9))
def test_the_caps_count_the_last_day_and_week(minutes_ago: list[int], day: int, week: int) -> None:
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    sent = [now - timedelta(minutes=m) for m in minutes_ago]
    in_day = sum(1 for m in minutes_ago if m < 24 * 60)
    in_week = sum(1 for m in minutes_ago if m < 7 * 24 * 60)
    expected = (day > 0 and in_day >= day) or (week > 0 and in_week >= week)
    assert over_cap(sent, now, day, week) == expected


@given(st.integers(-5, 10_000), st.floats(0.1, 100))
def test_a_batch_is_k_times_the_units_and_none_without_stock(units: int, factor: float) -> None:
    size = batch_size(units, factor)
    if units <= 0:
        assert size == 0
    else:
        assert size >= 1 and units * factor <= size < units * factor + 1


def test_the_preferred_channel_comes_first_then_the_fallback_order() -> None:
    assert channel_order("sms") == ["sms", "email", "push"]
    assert channel_order("store", ["push", "email"]) == ["push", "email"]
    assert channel_order(None) == ["email", "push", "sms"]


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert [backoff_seconds(n, 5, 60) for n in range(1, 6)] == [5, 10, 20, 40, 60]


@given(st.integers(-10, 100), st.integers(-10, 100), st.integers(1, 50))
def test_back_in_stock_is_none_to_some_and_low_stock_is_crossing_the_threshold(
    before: int, after: int, threshold: int
) -> None:
    seen = crossing(before, after, threshold)
    assert seen.back_in_stock == (before <= 0 < after)
    assert seen.low_stock == (0 < after < threshold <= before)
