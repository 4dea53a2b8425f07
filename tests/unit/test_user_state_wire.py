"""The Redis wire form of a user state (layout 3) gives back exactly the state it was made from."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.core.state_codec import decode_state, encode_state
from attribution.core.user_state import (
    KINDS,
    Credit,
    Failed,
    GoalMark,
    Lent,
    Linked,
    Mark,
    SubSession,
    Touch,
    UserState,
    Withdrawn,
)

# ids drawn from a few values so that users share them (the string table), plus any text
ids = st.one_of(st.sampled_from(["camp-1", "camp-1-m9", "u1-d0", "", "é|{}", "s1"]), st.text(max_size=12))
# event times: epoch ms, and the odd value far from the others (deltas must still fit)
ts = st.one_of(st.integers(1_700_000_000_000, 1_700_100_000_000), st.integers(-(2**53), 2**53))
amounts = st.one_of(st.none(), st.sampled_from(["0", "19900", "4500.5"]))
currencies = st.one_of(st.none(), st.sampled_from(["KRW", "USD"]))
seqs = st.integers(-1, 2**40)

touches = st.builds(Touch, ids, st.integers(0, len(KINDS) - 1), ts, ids, ids, ids)
goals = st.builds(GoalMark, ids, ts, ids, ids, amounts, currencies)
credits = st.builds(
    Credit, ids, ids, st.sampled_from(["send", "click"]), ts, ids, ids, ts, ids, ids, ids, amounts, currencies
)
states = st.builds(
    UserState,
    fences=st.dictionaries(ids, seqs, max_size=3),
    touches=st.lists(touches, max_size=8),
    goals=st.lists(goals, max_size=3),
    failed=st.lists(st.builds(Failed, ids, ids, ids, ts), max_size=2),
    reached=st.dictionaries(ids, st.integers(0, 300), max_size=4),
    credits=st.lists(credits, max_size=3),
    expires_ts=st.one_of(st.just(0), ts),
    settings_version=st.integers(-1, 2**31),
    marks=st.lists(st.builds(Mark, ids, ts), max_size=2),
    visit_ts=st.one_of(st.just(-1), ts),
    perm=st.integers(0, 2),
    perm_ts=st.one_of(st.just(-1), ts),
    perm_id=ids,
    bucket=ids,
    sessions=st.dictionaries(ids, st.builds(SubSession, ts, ids), max_size=2),
    links=st.lists(st.builds(Linked, ts, ids), max_size=2),
    lent=st.lists(
        st.builds(
            Lent,
            ids,
            st.lists(ids, max_size=2),
            st.one_of(st.none(), touches),
            st.one_of(st.none(), goals),
            ids,
        ),
        max_size=2,
    ),
    links_out=st.dictionaries(ids, st.lists(ts, max_size=3), max_size=3),
    links_sent=st.dictionaries(ids, ts, max_size=3),
    shared=st.lists(ids, max_size=2),
    pinned=st.lists(ids, max_size=2),
    withdrawn=st.lists(st.builds(Withdrawn, credits, ts), max_size=2),
)


@settings(max_examples=500, deadline=None)
@given(states)
def test_encode_then_decode_is_the_identity(state: UserState) -> None:
    back = decode_state(encode_state(state))
    assert back == state
    # dict order too: the rules iterate them
    for name in ("fences", "reached", "links_out", "links_sent", "sessions"):
        assert list(getattr(back, name)) == list(getattr(state, name))


def test_a_missing_key_is_an_empty_state() -> None:
    assert decode_state(None) == UserState()
    assert decode_state(b"") == UserState()


def test_each_id_is_stored_once_per_user() -> None:
    touch = Touch("camp-7", 0, 1_700_000_000_000, "s1", "camp-7-m123456", "u1-d0")
    state = UserState(
        touches=[
            msgspec.structs.replace(touch, event_id=f"s{i}", ts=touch.ts + i * 60_000) for i in range(10)
        ],
        expires_ts=touch.ts + 7 * 86_400_000,
    )
    blob = encode_state(state)
    assert blob.count(b"camp-7-m123456") == 1
    assert blob.count(b"u1-d0") == 1
    assert decode_state(blob) == state
