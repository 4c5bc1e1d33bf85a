"""The preferred channel rule: declared wins over observed; observed follows engagement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from omnisdk.core.preferences import (
    PreferenceSource,
    PreferredChannel,
    Signal,
    observed_channel,
    preferred,
)

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def signal(name: str, channel: str = "web", days: float = 1, message: str | None = None) -> Signal:
    return Signal(name, channel, message, NOW - timedelta(days=days))


def test_declared_wins_over_observed() -> None:
    assert preferred(PreferredChannel.SMS, PreferredChannel.EMAIL) == (
        PreferredChannel.SMS,
        PreferenceSource.DECLARED,
    )


def test_observed_when_nothing_declared_and_none_when_nothing_seen() -> None:
    assert preferred(None, PreferredChannel.APP) == (
        PreferredChannel.APP,
        PreferenceSource.OBSERVED,
    )
    assert preferred(None, None) == (None, PreferenceSource.NONE)


def test_clicks_on_e_mails_outweigh_a_few_page_views() -> None:
    signals = [signal("email_clicked", days=2), signal("product_viewed"), signal("product_viewed")]
    assert observed_channel(signals, NOW) is PreferredChannel.EMAIL


def test_message_events_name_their_channel_in_a_property() -> None:
    signals = [signal("message_clicked", message="sms"), signal("message_opened", message="fax")]
    assert observed_channel(signals, NOW) is PreferredChannel.SMS


def test_shopping_counts_for_the_backend_channel_and_a_till_is_the_store() -> None:
    signals = [signal("order_completed", "pos"), signal("product_viewed", "app")]
    assert observed_channel(signals, NOW) is PreferredChannel.STORE


def test_an_old_habit_fades_behind_a_recent_one() -> None:
    old = [signal("email_clicked", days=300) for _ in range(5)]
    recent = [signal("product_added", "app", days=1)]
    assert observed_channel(old + recent, NOW) is PreferredChannel.APP


def test_a_tie_goes_to_the_latest_signal() -> None:
    signals = [signal("product_viewed", "web", days=1), signal("product_viewed", "app", days=1)]
    signals[1] = Signal(
        "product_viewed", "app", None, signals[0].occurred_at + timedelta(seconds=1)
    )
    assert observed_channel(signals, NOW) is PreferredChannel.APP


def test_events_that_are_no_engagement_choose_nothing() -> None:
    assert observed_channel([signal("experiment_viewed"), signal("x", "admin")], NOW) is None
