from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnisdk.core import session
from omnisdk.core.session import SessionError


def test_later_writes_win_per_key_whatever_the_order() -> None:
    doc = session.write({}, {"last_page": "/billboard"}, "app", at=10, ttl=100)
    doc = session.write(doc, {"last_page": "/old"}, "web", at=5, ttl=100)  # arrives late
    assert session.live(doc, 11)["last_page"].value == "/billboard"
    doc = session.write(doc, {"last_page": "/shoes"}, "web", at=12, ttl=100)
    assert session.live(doc, 13)["last_page"].channel == "web"


def test_a_deleted_key_stays_deleted_against_older_writes() -> None:
    doc = session.write({}, {"form": {"step": 2}}, "web", at=10, ttl=100)
    doc = session.write(doc, {"form": None}, "app", at=11, ttl=100)
    doc = session.write(doc, {"form": {"step": 1}}, "web", at=9, ttl=100)
    assert "form" not in session.live(doc, 12)


def test_entries_expire() -> None:
    doc = session.write({}, {"chat_thread": "t-1"}, "web", at=0, ttl=60)
    assert session.live(doc, 59) and not session.live(doc, 61)
    assert session.prune(doc, 61) == {}


def test_limits_are_refused() -> None:
    with pytest.raises(SessionError, match="keys"):
        session.write({}, {"Bad Key": 1}, "web", at=0, ttl=1)
    with pytest.raises(SessionError, match="bytes"):
        session.write({}, {"big": "x" * 5000}, "web", at=0, ttl=1)
    many = {f"k{n}": n for n in range(51)}
    with pytest.raises(SessionError, match="at most 50"):
        session.write({}, many, "web", at=0, ttl=1)


documents = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.builds(
        session.Entry,
        st.one_of(st.none(), st.integers(0, 9)),
        st.sampled_from(["web", "app"]),
        st.integers(0, 20).map(float),
        st.just(100.0),
    ),
)


@given(documents, documents, documents)
def test_merge_is_commutative_associative_and_idempotent(
    a: session.Document, b: session.Document, c: session.Document
) -> None:
    assert session.merge(a, b) == session.merge(b, a)
    assert session.merge(session.merge(a, b), c) == session.merge(a, session.merge(b, c))
    assert session.merge(a, a) == a
