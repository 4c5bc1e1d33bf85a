"""Consent rules: state from the ledger, the withdrawal rule, merges in any order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnisdk.core.consent import (
    ConsentError,
    ConsentScope,
    Decision,
    Status,
    consent_mode,
    granted,
    merge,
    state,
)


def grant(at: float, purpose: str = "personalisation", **kw: object) -> Decision:
    return Decision(at, purpose, Status.GRANTED, decision_id=f"g{at}", **kw)  # type: ignore[arg-type]


def withdraw(at: float, purpose: str = "personalisation", **kw: object) -> Decision:
    return Decision(at, purpose, Status.WITHDRAWN, decision_id=f"w{at}", **kw)  # type: ignore[arg-type]


def test_no_decision_and_pending_mean_not_granted() -> None:
    assert not granted([], "personalisation")
    pending = Decision(1, "marketing:email", Status.PENDING, decision_id="p")
    assert not granted([pending], "marketing:email")


def test_the_latest_decision_counts() -> None:
    assert granted([withdraw(1), grant(2)], "personalisation")
    assert not granted([grant(1), withdraw(2)], "personalisation")


def test_a_grant_under_an_older_notice_never_overrides_a_withdrawal() -> None:
    ledger = [withdraw(10, notice_version=3), grant(20, notice_version=2)]
    assert not granted(ledger, "personalisation")
    assert granted([*ledger, grant(30, notice_version=3)], "personalisation")


def test_device_decisions_stay_with_their_device() -> None:
    ledger = [grant(1), withdraw(2, scope=ConsentScope.DEVICE, device_id="family-tablet")]
    assert granted(ledger, "personalisation", device_id="amy-phone")
    assert not granted(ledger, "personalisation", device_id="family-tablet")


def test_conflicting_decisions_within_the_skew_resolve_to_deny_and_a_reprompt() -> None:
    merged = merge([grant(150, origin="phone")], [withdraw(100, origin="laptop")])
    current = state(merged)["personalisation"]
    assert not current.granted and current.reprompt
    far = state(merge([grant(100, origin="a")], [withdraw(500, origin="b")]))["personalisation"]
    assert not far.granted and not far.reprompt
    later_grant = merge([withdraw(100, origin="a")], [grant(500, origin="b")])
    assert granted(later_grant, "personalisation")
    # One customer changing her mind within two minutes is no conflict.
    assert granted([withdraw(100, origin="a"), grant(150, origin="a")], "personalisation")


def test_consent_mode_signals_follow_our_purposes() -> None:
    signals = consent_mode(
        state([grant(1, "analytics"), grant(2, "ad_storage"), withdraw(3, "ad_storage")])
    )
    assert signals == {
        "ad_storage": "denied",
        "analytics_storage": "granted",
        "ad_user_data": "denied",
        "ad_personalization": "denied",
    }


purposes = st.sampled_from(["personalisation", "analytics"])


def ledger_of(origin: str) -> st.SearchStrategy[list[Decision]]:
    return st.lists(
        st.builds(
            Decision,
            at=st.integers(0, 600).map(float),
            purpose=purposes,
            status=st.sampled_from([Status.GRANTED, Status.WITHDRAWN, Status.DENIED]),
            scope=st.just(ConsentScope.PERSON),
            notice_version=st.integers(0, 2),
            decision_id=st.uuids().map(str),
            origin=st.just(origin),
        ),
        max_size=4,
    )


def outcome(ledger: tuple[Decision, ...]) -> dict[str, tuple[bool, bool]]:
    return {p: (s.granted, s.reprompt) for p, s in state(ledger).items()}


@settings(max_examples=300)
@given(ledger_of("a"), ledger_of("b"), ledger_of("c"))
def test_the_order_of_linking_does_not_change_the_consent_state(
    a: list[Decision], b: list[Decision], c: list[Decision]
) -> None:
    first = outcome(merge(merge(a, b), c))
    assert first == outcome(merge(merge(c, a), b)) == outcome(merge(b, merge(c, a)))
    assert outcome(merge(a, b)) == outcome(merge(b, a))


@settings(max_examples=300)
@given(ledger_of("a"), st.integers(0, 600))
def test_a_withdrawal_is_never_undone_by_an_older_grant(ledger: list[Decision], at: int) -> None:
    withdrawal = Decision(
        float(at),
        "personalisation",
        Status.WITHDRAWN,
        notice_version=2,
        decision_id="w",
        origin="a",
    )
    older = [d for d in ledger if d.at < at or d.status is not Status.GRANTED]
    assert not granted([*older, withdrawal], "personalisation")


def test_recording_rules_name_what_is_wrong() -> None:
    from omnisdk.core.consent import PurposeState, check_purpose, check_transition

    check_purpose("marketing:email")
    check_purpose("loyalty:scoring", custom=["loyalty:scoring"])
    with pytest.raises(ConsentError, match="unknown purpose") as unknown:
        check_purpose("mind_reading")
    assert unknown.value.kind == "unknown-purpose"
    with pytest.raises(ConsentError, match="nothing to withdraw"):
        check_transition(None, Status.WITHDRAWN)
    denied = PurposeState("analytics", False, Status.DENIED, 1.0)
    with pytest.raises(ConsentError, match="standing decision is denied"):
        check_transition(denied, Status.WITHDRAWN)
    with pytest.raises(ConsentError, match="pending cannot be recorded"):
        check_transition(None, Status.PENDING)
    check_transition(PurposeState("analytics", True, Status.GRANTED, 1.0), Status.WITHDRAWN)
    check_transition(denied, Status.GRANTED)


def test_can_contact_needs_the_channel_s_marketing_grant() -> None:
    from omnisdk.core.consent import can_contact

    current = state([grant(1, "marketing:sms"), grant(2, "marketing:email")])
    assert can_contact(current, "sms") and can_contact(current, "email")
    assert not can_contact(current, "push")
    with pytest.raises(ValueError, match="unknown marketing channel"):
        can_contact(current, "fax")


@given(st.binary(min_size=16, max_size=32), st.text(max_size=20), st.integers(0, 2**40))
def test_confirmation_tokens_round_trip_and_any_altered_byte_is_refused(
    key: bytes, decision: str, expires: int
) -> None:
    from omnisdk.core.consent import ConfirmationInvalid, issue_confirmation, read_confirmation

    token = issue_confirmation(key, {"d": decision, "exp": expires})
    if expires < 1_000:
        with pytest.raises(ConfirmationInvalid, match="expired"):
            read_confirmation(key, token, now=1_000)
        return
    assert read_confirmation(key, token, now=0)["d"] == decision
    for position in range(4, len(token)):
        altered = (
            token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]
        )
        with pytest.raises(ConfirmationInvalid):
            read_confirmation(key, altered, now=0)
    with pytest.raises(ConfirmationInvalid):
        read_confirmation(key + b"x", token, now=0)
