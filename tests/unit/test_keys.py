"""Key layout: hash tags per user/campaign, no two ids sharing a key, dirty members that round-trip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from attribution.core.rules import SettingsBook
from attribution.engine.tally_feed import TallyFeed
from attribution.state.keys import Keys
from tests.support.harness import Run
from tests.support.scenarios import send, settings

ids = st.text(min_size=1, max_size=8, alphabet="ab|:{}%")


@given(ids, ids, ids, ids)
def test_different_ids_never_share_a_key(p1: str, u1: str, p2: str, u2: str) -> None:
    keys = Keys("x")
    if (p1, u1) != (p2, u2):
        assert keys.user(p1, u1) != keys.user(p2, u2)
        assert keys.campaign(p1, u1) != keys.campaign(p2, u2)


@given(ids, ids)
def test_dirty_member_round_trips(project: str, campaign: str) -> None:
    assert Keys.parse_member(Keys.member(project, campaign)) == (project, campaign)


def test_every_key_carries_one_hash_tag() -> None:
    keys = Keys("attribution")
    assert keys.user("shop", "u{1}") == "attribution:u:{shop|u%7B1%7D}"
    assert keys.campaign("a|b", "c") == "attribution:c:{a%7Cb|c}"


def test_a_project_id_with_a_colon_still_gets_its_tally_published() -> None:
    run = Run([settings(project_id="acme:eu")])
    ev = send("s1", "c1", "d1", 0, user="u1")
    run.feed_events(
        [type(ev)(**{**{f: getattr(ev, f) for f in ev.__struct_fields__}, "project_id": "acme:eu"})]
    )
    published: dict[str, Any] = {}
    feed = TallyFeed(run.store, run.keys, SettingsBook(run.settings))

    def publish(topic: str, key: str, snap: dict[str, Any], on_offset: Callable[[int], None]) -> None:
        assert topic == "tallies"
        published[key] = snap
        on_offset(len(published))

    assert feed.publish_dirty(publish, lambda: None) == 1
    assert published["acme:eu:c1"]["sends"] == 1
    assert run.store.dirty(10) == []
