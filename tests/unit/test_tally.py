"""A campaign's channels and the channel that makes its rate: the events decide, never their order."""

from __future__ import annotations

from typing import Any

import msgspec

from attribution.core.model import Event
from attribution.core.tally import snapshot
from attribution.state.base import OpenBatch, UserWrite
from attribution.state.keys import Keys
from attribution.state.ledger import Ledger
from attribution.state.memory import MemoryStore
from tests.support.harness import Run
from tests.support.scenarios import PROJECT, click, goal, send, settings

HOUR = 3600 * 1000


def two_channel_campaign() -> list[Event]:
    """Campaign c1 reaches u1 by KakaoTalk and u2 by push; u2 clicks and both buy."""
    return [
        send("s-kakao", "c1", "d1", 0, user="u1", channel="kakao"),
        send("s-push", "c1", "d2", 10, user="u2", channel="push"),
        click("k-push", "c1", "d2", 20, user="u2", channel="push"),
        goal("g1", "purchase", "d1", HOUR, user="u1", price=100, qty=1),
        goal("g2", "purchase", "d2", HOUR, user="u2", price=200, qty=1),
    ]


def tally_after(batches: list[list[Event]], **overrides: Any) -> dict[str, Any]:
    run = Run([settings(**overrides)]).deliver(batches)
    t = run.tally(PROJECT, "c1")
    return {k: v for k, v in t.items() if k not in ("version", "as_of_ts")}


def test_two_arrival_orders_of_a_two_channel_campaign_give_the_same_tally() -> None:
    events = two_channel_campaign()
    kakao_first = tally_after([events[:1], events[1:]])  # the KakaoTalk send is applied first
    push_first = tally_after([events[1:2], events[2:3], [events[0], *events[3:]]])
    assert kakao_first == push_first
    assert kakao_first["channels"] == ["kakao", "push"]
    # push comes before kakao in the channel order, so the rate is push's primary basis: the click
    purchase = kakao_first["events"]["purchase"]
    assert (purchase["primary"], purchase["rate"]) == ("click", 1.0)  # 1 conversion / 1 user clicked
    assert purchase["send"]["conversions"] == 2


def test_a_declared_campaign_channel_makes_the_rate() -> None:
    events = two_channel_campaign()
    t = tally_after([events], campaign_channels={"c1": "kakao"})
    assert t["channels"] == ["kakao", "push"]
    purchase = t["events"]["purchase"]
    assert (purchase["primary"], purchase["rate"]) == ("send", 1.0)  # 2 conversions / 2 users reached


def test_failed_sends_and_copies_on_another_channel_join_the_channel_set() -> None:
    events: list[Event] = [
        send("s1", "c1", "d1", 0, user="u1", channel="sms"),
        send("s2", "c1", "d1", 5, user="u1", channel="email", message="c1-m1"),  # a copy, other channel
        send("s3", "c1", "d2", 5, user="u2", channel="web_push", status="failed"),
    ]
    t = tally_after([events])
    assert (t["sends"], t["failed"], t["channels"]) == (1, 1, ["email", "sms", "web_push"])
    assert t["events"]["purchase"]["primary"] == "send"  # web_push, whose purchase basis is send


def test_a_legacy_channel_field_counts_as_one_more_channel_seen() -> None:
    fields = {"sends": "2", "send_users": "2", "channel": "kakao", "ch|push": "1", "version": "3"}
    t = snapshot(PROJECT, "c1", fields, settings())
    assert t["channels"] == ["kakao", "push"]
    assert t["events"]["purchase"]["primary"] == "click"  # push's
    assert snapshot(PROJECT, "c1", {"channel": "kakao"}, settings())["channels"] == ["kakao"]
    assert snapshot(PROJECT, "c1", {"channel": "fax"}, settings())["channels"] == []
    assert snapshot(PROJECT, "c1", {}, None)["channels"] == []


def test_a_journal_written_before_the_channel_set_is_recovered_with_its_channel() -> None:
    """A partition journal holds msgpack CampaignDeltas; the previous layout had one ``channel``."""
    store, keys = MemoryStore(), Keys("x")
    user = keys.user(PROJECT, "u1")
    old_delta = {
        "project_id": PROJECT,
        "campaign_id": "c1",
        "counts": {"sends": 1, "send_users": 1},
        "revenue": {},
        "as_of_ts": 5,
        "channel": "kakao",
    }
    body = msgspec.msgpack.encode([[user, [old_delta]]])
    assert store.open_batches([OpenBatch(0, 0, 5, body)]) == {0: 1}
    assert store.write_users([UserWrite(user, 0, 1, b"state", HOUR)]) == [True]
    # the writer died before its counters: whoever reads the partition next finishes the batch
    assert Ledger(store, keys, HOUR).recover(0, now_ms=1) == 1
    (fields,) = store.counters([keys.campaign(PROJECT, "c1")])
    assert (fields["sends"], fields["ch|kakao"]) == ("1", "1")
    assert snapshot(PROJECT, "c1", fields, settings())["channels"] == ["kakao"]
