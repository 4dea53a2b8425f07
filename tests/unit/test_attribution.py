"""The seed documents' examples, one behaviour per test, through the processor and the in-memory store."""

from __future__ import annotations

from typing import Any

from attribution.core.model import Event
from tests.support.harness import Run
from tests.support.scenarios import DAY_MS, PROJECT, click, goal, send, settings

HOUR = 3600 * 1000


def test_five_devices_one_user_counts_once() -> None:
    run = Run([settings()])
    events: list[Event] = [send(f"s{i}", "c1", f"d{i}", 1000 + i, user="u1") for i in range(5)]
    events.append(goal("g1", "signup", "d3", 2 * HOUR, user="u1"))
    run.feed_events(events)
    t = run.tally(PROJECT, "c1")
    assert (t["sends"], t["send_users"]) == (5, 1)
    assert t["events"]["signup"]["send"]["conversions"] == 1
    assert t["events"]["signup"]["rate"] == 1.0


def test_two_campaigns_in_window_are_both_credited() -> None:
    run = Run([settings()])
    run.feed_events(
        [
            send("s1", "c1", "d1", 0, user="u1"),
            send("s2", "c2", "d1", HOUR, user="u1"),
            goal("g1", "signup", "d1", 2 * HOUR, user="u1"),
        ]
    )
    assert run.tally(PROJECT, "c1")["events"]["signup"]["send"]["conversions"] == 1
    assert run.tally(PROJECT, "c2")["events"]["signup"]["send"]["conversions"] == 1
    assert {c["campaign_id"] for c in run.emitted} == {"c1", "c2"}


def test_push_purchase_is_primary_on_click_and_still_measured_on_send() -> None:
    run = Run([settings()])
    run.feed_events(
        [
            send("s1", "c1", "d1", 0, user="u1"),
            send("s2", "c1", "d2", 0, user="u2"),
            click("k1", "c1", "d1", 10, user="u1"),
            goal("g1", "purchase", "d1", HOUR, user="u1", price=19900, qty=2),
            goal("g2", "purchase", "d2", HOUR, user="u2", price=100, qty=1),
        ]
    )
    e = run.tally(PROJECT, "c1")["events"]["purchase"]
    assert e["primary"] == "click"
    assert e["click"] == {"conversions": 1, "revenue": {"KRW": "39800"}}
    assert e["send"] == {"conversions": 2, "revenue": {"KRW": "39900"}}
    assert e["rate"] == 1.0  # 1 converted of 1 user who clicked
    primaries = {(c["basis"], c["primary"]) for c in run.emitted}
    assert primaries == {("click", True), ("send", False)}


def test_kakao_is_send_only_even_when_clicked() -> None:
    run = Run([settings()])
    run.feed_events(
        [
            send("s1", "k", "d1", 0, user="u1", channel="kakao"),
            click("k1", "k", "d1", 5, user="u1", channel="kakao"),
            goal("g1", "signup", "d1", 10, user="u1"),
        ]
    )
    e = run.tally(PROJECT, "k")["events"]["signup"]
    assert (e["primary"], e["send"]["conversions"], e["click"]["conversions"]) == ("send", 1, 0)
    assert run.tally(PROJECT, "k")["clicks"] == 1


def test_in_app_is_click_only() -> None:
    run = Run([settings()])
    run.feed_events(
        [
            send("s1", "ia", "d1", 0, user="u1", channel="in_app"),
            send("s2", "ia", "d2", 0, user="u2", channel="in_app"),
            click("k1", "ia", "d1", 5, user="u1", channel="in_app"),
            goal("g1", "signup", "d1", 10, user="u1"),
            goal("g2", "signup", "d2", 10, user="u2"),
        ]
    )
    e = run.tally(PROJECT, "ia")["events"]["signup"]
    assert (e["primary"], e["send"]["conversions"], e["click"]["conversions"], e["rate"]) == (
        "click",
        0,
        1,
        1.0,
    )


def test_goal_outside_the_window_does_not_convert() -> None:
    run = Run([settings()])
    run.feed_events(
        [
            send("s1", "c1", "d1", 0, user="u1"),
            goal("g1", "signup", "d1", DAY_MS + 1, user="u1"),
            goal("g2", "purchase", "d1", DAY_MS + 1, user="u1", price=1, qty=1),
        ]
    )
    e = run.tally(PROJECT, "c1")["events"]
    assert e["signup"]["send"]["conversions"] == 0
    assert e["purchase"]["send"]["conversions"] == 1  # 3-day window


def test_goal_before_its_touch_arrives_is_credited() -> None:
    run = Run([settings()])
    run.feed_events([goal("g1", "signup", "d1", 5000, user="u1")])
    run.feed_events([send("s1", "c1", "d1", 1000, user="u1")])
    assert run.tally(PROJECT, "c1")["events"]["signup"]["send"]["conversions"] == 1


def test_earlier_goal_arriving_late_replaces_the_credit_under_the_same_id() -> None:
    run = Run([settings()])
    run.feed_events(
        [
            send("s1", "c1", "d1", 0, user="u1"),
            goal("g2", "purchase", "d1", 9000, user="u1", price="5", qty=1),
        ]
    )
    run.feed_events([goal("g1", "purchase", "d1", 8000, user="u1", price="3.5", qty=2)])
    ids = {c["conversion_id"] for c in run.emitted if c["event"] == "purchase"}
    assert len(ids) == 1
    latest = run.latest_conversions()[ids.pop()]
    assert (latest["goal_event_id"], latest["amount"]) == ("g1", "7")
    e = run.tally(PROJECT, "c1")["events"]["purchase"]["send"]
    assert e == {"conversions": 1, "revenue": {"KRW": "7"}}


def test_purchase_with_missing_quantity_counts_with_null_amount() -> None:
    run = Run([settings()])
    run.feed_events(
        [send("s1", "c1", "d1", 0, user="u1"), goal("g1", "purchase", "d1", 10, user="u1", price="abc")]
    )
    e = run.tally(PROJECT, "c1")["events"]["purchase"]["send"]
    assert e == {"conversions": 1, "revenue": {}}
    assert run.emitted[0]["amount"] is None


def test_negative_amount_or_bad_quantity_counts_with_null_amount_and_is_counted_missing() -> None:
    run = Run([settings()])
    users: dict[str, dict[str, Any]] = {
        "u1": {"price": -5, "qty": 1},
        "u2": {"price": 100, "qty": 1.5},
        "u3": {"price": 100, "qty": 0},
    }
    events: list[Event] = []
    for user, props in users.items():
        events += [send(f"s-{user}", "c1", f"d-{user}", 0, user=user)]
        events += [goal(f"g-{user}", "purchase", f"d-{user}", 10, user=user, **props)]
    events += [
        send("s-u4", "c1", "d-u4", 0, user="u4"),
        goal("g-u4", "purchase", "d-u4", 10, user="u4", price=0),
    ]
    result = run.processor.process(run.records(events), now_ms=0)
    amounts = {c.user_key: c.amount for c in result.conversions if c.basis == "send"}
    assert amounts == {"u1": None, "u2": None, "u3": None, "u4": None}  # u4: no quantity, so missing
    assert result.amount_missing == {"purchase": 4}  # one conversion each (no click: send basis only)
    free = run.processor.process(
        run.records(
            [
                send("s-u5", "c1", "d-u5", 0, user="u5"),
                goal("g-u5", "purchase", "d-u5", 10, user="u5", price=0, qty=3),
            ]
        ),
        now_ms=0,
    )
    assert {c.amount for c in free.conversions} == {"0"}  # a zero amount is an amount
    assert free.amount_missing == {}


def test_failed_sends_are_counted_but_never_touch() -> None:
    run = Run([settings()])
    run.feed_events(
        [
            send("s1", "c1", "d1", 0, user="u1", status="failed"),
            send("s1b", "c1", "d1", 0, user="u1", status="failed"),
            goal("g1", "signup", "d1", 10, user="u1"),
        ]
    )
    t = run.tally(PROJECT, "c1")
    assert (t["failed"], t["sends"], t["send_users"]) == (1, 0, 0)
    assert t["events"]["signup"]["send"]["conversions"] == 0


def test_redelivered_batch_changes_no_count_and_republishes_conversions() -> None:
    run = Run([settings()])
    records = run.records([send("s1", "c1", "d1", 0, user="u1"), goal("g1", "signup", "d1", 10, user="u1")])
    run.feed(records)
    before = run.tally(PROJECT, "c1")
    run.feed(records)
    # the tally's dirty mark was durable before the offsets were committed: no new version needed
    assert run.tally(PROJECT, "c1") == before
    assert len(run.emitted) == 2 and run.emitted[0] == run.emitted[1]


def test_bad_records_go_to_the_dlq_and_the_rest_is_applied() -> None:
    run = Run([settings()])
    good = run.records([send("s1", "c1", "d1", 0, user="u1")])
    bad = [
        good[0]._replace(offset=10, value=b"{not json"),
        good[0]._replace(offset=11, value=b'{"event_id": 1}'),
        good[0]._replace(offset=12, value=b"x" * 70_000),
        good[0]._replace(offset=13, key=b"someone-else"),
    ]
    run.feed([*bad, *good])
    assert [d["offset"] for d in run.dead] == [10, 11, 12, 13]
    assert "not JSON" in run.dead[0]["error"]
    assert "event_id" in run.dead[1]["error"]
    assert "over the 65536-byte limit" in run.dead[2]["error"]
    assert "not the event's user key" in run.dead[3]["error"]
    assert "someone-else" not in run.dead[3]["error"]  # the record carries the key; the reason does not
    assert run.tally(PROJECT, "c1")["sends"] == 1


def test_unconfigured_project_counts_sends_but_no_conversions() -> None:
    run = Run([])
    run.feed_events([send("s1", "c1", "d1", 0, user="u1"), goal("g1", "signup", "d1", 10, user="u1")])
    t = run.tally(PROJECT, "c1")
    assert (t["sends"], t["events"]) == (1, {})


def test_touch_arriving_as_late_as_grace_allows_still_finds_the_buffered_goal() -> None:
    grace = 60_000
    run = Run([settings()], grace_ms=grace)
    run.feed_events([goal("g1", "signup", "d1", 100_000, user="u1")])
    # the partition clock moves to goal + grace and u1's state is rewritten (evicting what is too old)
    clock = 100_000 + grace
    run.feed_events(
        [send("s9", "c9", "d2", clock, user="u2"), goal("x", "unconfigured", "d1", clock, user="u1")]
    )
    run.feed_events([send("s1", "c1", "d1", clock - grace, user="u1")])  # exactly grace behind
    assert run.tally(PROJECT, "c1")["events"]["signup"]["send"]["conversions"] == 1


def test_goal_arriving_as_late_as_grace_allows_still_finds_its_touch() -> None:
    grace = 60_000
    run = Run([settings()], grace_ms=grace)  # purchase has the longest window: 3 days
    run.feed_events([send("s1", "c1", "d1", 0, user="u1")])
    clock = 3 * DAY_MS + grace
    run.feed_events(
        [send("s9", "c9", "d2", clock, user="u2"), goal("x", "unconfigured", "d1", clock, user="u1")]
    )
    run.feed_events(
        [goal("g1", "purchase", "d1", 3 * DAY_MS, user="u1", price=1, qty=1)]
    )  # last ms of window
    assert run.tally(PROJECT, "c1")["events"]["purchase"]["send"]["conversions"] == 1


def test_new_settings_recompute_every_credit_at_the_users_next_batch() -> None:
    """Credits are recomputed only for what a batch adds, except after a settings change: then the
    user's next batch recomputes all of them under the new windows, whatever it adds."""
    narrow = {"name": "signup", "window_ms": HOUR}
    run = Run([settings(conversion_events=[narrow])], grace_ms=DAY_MS)
    run.feed_events([send("s1", "c1", "d1", 0, user="u1"), goal("g1", "signup", "d1", 2 * HOUR, user="u1")])
    assert run.tally(PROJECT, "c1")["events"]["signup"]["send"]["conversions"] == 0
    run.book.put(settings(version=2, conversion_events=[{**narrow, "window_ms": DAY_MS}]))
    run.feed_events([send("s2", "c2", "d1", 2 * HOUR + 1, user="u1")])  # another campaign, no goal
    assert run.tally(PROJECT, "c1")["events"]["signup"]["send"]["conversions"] == 1
    assert run.tally(PROJECT, "c2")["events"]["signup"]["send"]["conversions"] == 0
