"""The reference's reading of the KARTE rules (/tmp/k/karte-spec.md), on small examples computed by hand.

The engine is compared with the reference elsewhere; these tests pin down what the reference itself
says, so that a disagreement can be blamed on the right side.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from attribution.core.model import Event
from attribution.core.outputs import conversion_id
from tests.support.reference import local_day, reference, subscriptions
from tests.support.scenarios import DAY_MS, PROJECT, goal, send, settings, web

HOUR = 3600 * 1000
MIN = 60_000
T = int(datetime(2024, 1, 10, tzinfo=UTC).timestamp() * 1000)  # 2024-01-10 09:00 in Tokyo

KARTE = settings(
    campaign_goals=[
        {"campaign_id": "wc", "event": "push_apps_subscribe", "window_ms": HOUR},
        {"campaign_id": "wc", "event": "purchase", "window_ms": HOUR},
    ],
    visitor_days=3,
    timezone="Asia/Tokyo",
)


def run_ref(events: list[Event]) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, dict[str, Any]]]:
    return reference(events, {PROJECT: KARTE})


def test_every_serve_event_is_counted_where_the_spec_says() -> None:
    events: list[Event] = [
        web("o1", "message_open", "v1", T, campaign="wc", message="m1"),
        web("o2", "message_open", "v1", T + 10, campaign="wc", message="m1"),  # a copy: one send
        web("o3", "message_open", "v2", T, campaign="wc", message="m1"),
        web("o4", "message_open", "v1", T + 20, campaign="wc"),  # no message_id: its own message
        web("a1", "talk_message_send", "v1", T, campaign="wc", message="m1"),
        web("a2", "talk_message_send", "v1", T + 1, campaign="wc", message="m1"),
        web("a1", "talk_message_send", "v1", T, campaign="wc", message="m1"),  # the same event again
        web("f1", "talk_message_fail", "v1", T, campaign="wc", message="m1"),
        web("f2", "talk_message_fail", "v1", T + 5, campaign="wc", message="m1"),  # same serve: once
        web("f3", "talk_message_fail", "v2", T, campaign="wc", message="m2"),
        web("d1", "talk_message_open", "v1", T + 30, campaign="wc", message="m1"),
        web("k1", "message_click", "v1", T + 40, campaign="wc", message="m1"),
        web("k2", "message_click", "v1", T + 50, campaign="wc", message="m1"),
        web("x1", "messaeg_clicked", "v2", T + 40, campaign="wc", message="m1"),
        web("l1", "message_link_click", "v1", T + 60, campaign="wc", message="m1"),
        web("l2", "message_link_click", "v1", T + 61, campaign="wc", message="m1"),
        web("p1", "page_view", "v9", T, campaign="wz"),  # not a serve: no tally for wz
    ]
    tallies, convs = run_ref(events)
    assert set(tallies) == {(PROJECT, "wc")}
    t = tallies[(PROJECT, "wc")]
    counts = {k: v for k, v in t.items() if k != "events"}
    assert counts == {
        "project_id": PROJECT,
        "campaign_id": "wc",
        "sends": 3,
        "send_users": 2,
        "failed": 2,
        "clicks": 2,
        "click_users": 1,
        "accepted": 2,
        "displayed": 1,
        "clicked_alias": 1,
        "link_clicks": 2,
        "channels": ["web_push"],
    }
    assert sorted(t["events"]) == ["purchase", "push_apps_subscribe", "signup"]
    assert convs == {}


def test_counted_only_serve_events_make_a_web_push_tally_with_zero_sends() -> None:
    tallies, _ = run_ref([web("a1", "talk_message_send", "v1", T, campaign="only")])
    t = tallies[(PROJECT, "only")]
    assert (t["sends"], t["accepted"], t["displayed"]) == (0, 1, 0)
    # web push, no basis setting for purchase's web_push in the demo settings -> send; signup send
    assert {n: e["primary"] for n, e in t["events"].items()} == {"purchase": "send", "signup": "send"}


def test_flarelane_campaigns_get_the_four_new_counts_at_zero() -> None:
    tallies, _ = run_ref([send("s1", "c1", "d1", T, user="u1")])
    t = tallies[(PROJECT, "c1")]
    assert (t["accepted"], t["displayed"], t["clicked_alias"], t["link_clicks"]) == (0, 0, 0, 0)


def test_campaign_goal_on_send_basis_and_click_basis() -> None:
    events: list[Event] = [
        # v1: served, clicked, subscribed -> credited on both bases
        web("o1", "message_open", "v1", T, campaign="wc", message="m1"),
        web("k1", "message_click", "v1", T + 1000, campaign="wc", message="m1"),
        web("p1", "push_apps_subscribe", "v1", T + 2000, session="s7"),
        # v2 (logged in as u2): served, not clicked, subscribed -> send basis only
        web("o2", "message_open", "v2", T, user="u2", campaign="wc", message="m1"),
        web("x2", "messaeg_clicked", "v2", T + 500, user="u2", campaign="wc", message="m1"),
        web("p2", "push_apps_subscribe", "v2", T + 3000, user="u2"),
        # v3: subscribed after the window (1 h)
        web("o3", "message_open", "v3", T, campaign="wc", message="m1"),
        web("p3", "push_apps_subscribe", "v3", T + HOUR + 1),
    ]
    tallies, convs = run_ref(events)
    e = tallies[(PROJECT, "wc")]["events"]["push_apps_subscribe"]
    empty: dict[str, Decimal] = {}
    assert e == {
        "primary": "send",
        "send": {"conversions": 2, "revenue": empty},
        "click": {"conversions": 1, "revenue": empty},
        "rate": round(2 / 3, 6),
    }
    want = {
        conversion_id(PROJECT, "wc", "push_apps_subscribe", "send", "v1"): ("o1", "p1", "v1"),
        conversion_id(PROJECT, "wc", "push_apps_subscribe", "click", "v1"): ("k1", "p1", "v1"),
        conversion_id(PROJECT, "wc", "push_apps_subscribe", "send", "u2"): ("o2", "p2", "v2"),
    }
    assert {
        cid: (c["touch_event_id"], c["goal_event_id"], c["device_id"]) for cid, c in convs.items()
    } == want
    c = convs[conversion_id(PROJECT, "wc", "push_apps_subscribe", "click", "v1")]
    assert (c["channel"], c["message_id"], c["primary"], c["amount"], c["currency"]) == (
        "web_push",
        "m1",
        False,
        None,
        None,
    )


def test_campaign_goal_replaces_the_project_event_for_its_campaign_only() -> None:
    events: list[Event] = [
        web("o1", "message_open", "v1", T, campaign="wc"),  # message_id absent: the event id
        web("o2", "message_open", "v1", T, campaign="wd", message="m1"),
        web("g1", "purchase", "v1", T + 2 * HOUR, price=100, qty=2),  # a web event that is a goal
        web("g0", "purchase", "v1", T + 30 * MIN, price=7, qty=1),
    ]
    _, convs = run_ref(events)
    wc = convs[conversion_id(PROJECT, "wc", "purchase", "send", "v1")]
    wd = convs[conversion_id(PROJECT, "wd", "purchase", "send", "v1")]
    # wc: its own goal, 1 h window, no amount; the first goal (g0) in the window
    assert (wc["goal_event_id"], wc["message_id"], wc["amount"], wc["currency"]) == ("g0", "o1", None, None)
    # wd: the project's purchase (3 days, KRW price x qty), first goal g0
    assert (wd["goal_event_id"], wd["amount"], wd["currency"]) == ("g0", Decimal(7), "KRW")
    assert len(convs) == 2  # no click: send basis only


def test_goal_topic_goals_count_for_a_campaign_goal_too() -> None:
    events: list[Event] = [
        web("o1", "message_open", "v1", T, campaign="wc", message="m1"),
        goal("g1", "push_apps_subscribe", "v1", T + 10),
    ]
    _, convs = run_ref(events)
    assert set(convs) == {conversion_id(PROJECT, "wc", "push_apps_subscribe", "send", "v1")}


def test_web_goal_credits_a_flarelane_send_of_the_same_user_key() -> None:
    events: list[Event] = [
        send("s1", "c1", "d1", T, user="u1", channel="web_push"),
        web("g1", "signup", "v1", T + HOUR, user="u1"),
    ]
    _, convs = run_ref(events)
    c = convs[conversion_id(PROJECT, "c1", "signup", "send", "u1")]
    assert (c["device_id"], c["touch_event_id"], c["goal_event_id"]) == ("v1", "s1", "g1")


def test_a_serve_event_without_campaign_changes_nothing() -> None:
    tallies, _ = run_ref([web("o1", "message_open", "v1", T)])
    assert tallies == {}
    subs = subscriptions([web("o1", "message_open", "v1", T + DAY_MS), web("v", "page_view", "v2", T)], {})
    assert subs[PROJECT]["now"]["as_of_ts"] == T  # a dead letter is no visit and does not move the clock


def test_days_are_cut_in_the_project_time_zone() -> None:
    assert local_day(T + 15 * HOUR + 30 * MIN, "Asia/Tokyo").isoformat() == "2024-01-11"
    assert local_day(T + 15 * HOUR - 1, "Asia/Tokyo").isoformat() == "2024-01-10"
    assert local_day(T + 15 * HOUR + 30 * MIN, "UTC").isoformat() == "2024-01-10"
    assert local_day(T - 1, "UTC").isoformat() == "2024-01-09"


def subscription_events() -> list[Event]:
    return [
        # v1: subscribes then unsubscribes in one session -> 1 session, permission off
        web("e1", "push_apps_subscribe", "v1", T + HOUR, session="a"),
        web("e2", "push_apps_unsubscribe", "v1", T + 2 * HOUR, session="a"),
        # v2: subscribes in two sessions, the second on the next Tokyo day (15:30 UTC)
        web("e3", "push_apps_subscribe", "v2", T + HOUR, session="a"),
        web("e4", "push_apps_subscribe", "v2", T + 15 * HOUR + 30 * MIN, session="b"),
        # v3: subscribes twice in one session -> 1 session
        web("e5", "push_apps_subscribe", "v3", T + 3 * HOUR, session="a"),
        web("e6", "push_apps_subscribe", "v3", T + 4 * HOUR, session="a"),
        # v4: identified as subscribed five days ago, not seen since
        web("e7", "plugin_push_apps_identify", "v4", T - 5 * DAY_MS, subscribed=True),
        # v5: identify with a string: no permission change
        web("e8", "plugin_push_apps_identify", "v5", T, subscribed="true"),
        # v6: subscribes, then identify says not subscribed
        web("e9", "push_apps_subscribe", "v6", T, session="a"),
        web("e10", "plugin_push_apps_identify", "v6", T + 1, subscribed=False),
        # v7: the newest permission event (by ts) arrives first
        web("e12", "push_apps_unsubscribe", "v7", T + 2 * HOUR),
        web("e11", "push_apps_subscribe", "v7", T + HOUR, session="z"),
        # u8 (visitor v8 logged in): same ts, the greater event_id wins
        web("e13b", "push_apps_subscribe", "v8", T + HOUR, user="u8", session="q"),
        web("e13a", "push_apps_unsubscribe", "v8", T + HOUR, user="u8"),
        # an unknown event name: a visit only; it moves the clock
        web("e14", "page_view", "v9", T + 16 * HOUR),
    ]


def test_subscriptions_now_and_days() -> None:
    subs = subscriptions(subscription_events(), {PROJECT: KARTE})[PROJECT]
    assert subs["now"] == {
        "project_id": PROJECT,
        "as_of_ts": T + 16 * HOUR,
        "today": "2024-01-11",
        "timezone": "Asia/Tokyo",
        "visitor_days": 3,
        "subscribed_now": 4,  # v2, v3, v4, u8
        "subscribed_recent_visitors": 3,  # v2 (01-11), v3 (01-10), u8 (01-10); v4 (01-05) too old
    }
    assert subs["days"] == {
        # v1/a, v2/a, v3/a, v6/a, v7/z, u8/q
        "2024-01-10": {"project_id": PROJECT, "day": "2024-01-10", "subscribe_sessions": 6},
        "2024-01-11": {"project_id": PROJECT, "day": "2024-01-11", "subscribe_sessions": 1},  # v2/b
    }


def test_a_visitor_drops_out_of_recent_visitors_as_the_clock_moves() -> None:
    later: list[Event] = [*subscription_events(), web("e15", "page_view", "v9", T + 3 * DAY_MS)]
    subs = subscriptions(later, {PROJECT: KARTE})[PROJECT]["now"]
    # today 2024-01-13: the last three days are 01-11..01-13; v3 and u8 (01-10) dropped out
    assert (subs["today"], subs["subscribed_now"], subs["subscribed_recent_visitors"]) == ("2024-01-13", 4, 1)


def test_the_earliest_subscribe_of_a_session_decides_its_day() -> None:
    events: list[Event] = [
        web("s2", "push_apps_subscribe", "v1", T + 15 * HOUR + 30 * MIN, session="a"),  # 01-11 Tokyo
        web("s1", "push_apps_subscribe", "v1", T + 14 * HOUR, session="a"),  # 01-10 Tokyo, earlier
    ]
    days = subscriptions(events, {PROJECT: KARTE})[PROJECT]["days"]
    assert {d: r["subscribe_sessions"] for d, r in days.items()} == {"2024-01-10": 1}
