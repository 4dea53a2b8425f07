"""Identities (``/tmp/k/identity-spec.md``), rule by rule, through the real Processor (``Run``: an
in-memory store, the identity records fed back like the worker reads the ``identity`` topic).

Each test states the tallies and the latest conversions it expects by hand, then checks the whole
outcome against the independent reference over the resolved events (``tests.support.identity_ref``).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from attribution.core.model import Event, Identity
from attribution.core.outputs import conversion_id
from tests.support.harness import Crashing, Run
from tests.support.identity_ref import assert_identity_matches, expected, owners
from tests.support.reference import normalise_tally, reference
from tests.support.scenarios import DAY_MS, PROJECT, click, goal, send, settings, web

SETTINGS = settings()  # purchase: 3 days (push: click basis, web_push: send), KRW; signup: 1 day
W = 3 * DAY_MS  # the identity window: the longest conversion window
T = 1_704_067_200_000  # 2024-01-01 00:00 UTC
SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN


def login(eid: str, device: str, user: str, ts: int) -> Event:
    """Any event with both ids links the device to the user: here a goal no campaign measures."""
    return goal(eid, "login", device, ts, user=user)


def deliver(batches: list[list[Event]], **kw: Any) -> Run:
    return Run([SETTINGS], **kw).deliver(batches)


def counts(run: Run, campaign: str) -> dict[str, Any]:
    t = run.tally(PROJECT, campaign)
    out = {k: t[k] for k in ("sends", "send_users", "failed", "clicks", "click_users")}
    for name, e in t["events"].items():
        for basis in ("send", "click"):
            if e[basis]["conversions"] or e[basis]["revenue"]:
                out[f"{name}/{basis}"] = (e[basis]["conversions"], e[basis]["revenue"])
    return out


def cid(campaign: str, event: str, basis: str, user: str) -> str:
    return conversion_id(PROJECT, campaign, event, basis, user)


def latest(run: Run) -> dict[str, tuple[str, str, str, str, str, str]]:
    """conversion_id -> (campaign, event, basis, user_key, touch_event_id, goal_event_id)."""
    return {
        k: (c["campaign_id"], c["event"], c["basis"], c["user_key"], c["touch_event_id"], c["goal_event_id"])
        for k, c in run.latest_conversions().items()
    }


def retracted(run: Run) -> set[str]:
    """The conversion ids that were published with ``"retracted": true`` at some point."""
    return {c["conversion_id"] for c in run.emitted if c.get("retracted")}


def check(run: Run, events: list[Event], window: int | None = None) -> None:
    assert_identity_matches(run, events, SETTINGS, window)


def flat(batches: list[list[Event]]) -> list[Event]:
    return [e for b in batches for e in b]


# --- the first story: an anonymous send, a login, a purchase -----------------------------------------


@pytest.mark.parametrize("hop", [0, 1, 2])
def test_anonymous_send_then_login_then_purchase_converts_once_for_the_user(hop: int) -> None:
    batches: list[list[Event]] = [
        [send("s1", "c1", "D", T)],
        [login("in", "D", "U", T + MIN)],
        [goal("buy", "purchase", "D", T + 2 * MIN, user="U", price=100, qty=1)],
    ]
    run = deliver(batches, hop_batches=hop)
    assert counts(run, "c1") == {
        "sends": 1,
        "send_users": 1,
        "failed": 0,
        "clicks": 0,
        "click_users": 0,
        "purchase/send": (1, {"KRW": "100"}),
    }
    assert latest(run) == {cid("c1", "purchase", "send", "U"): ("c1", "purchase", "send", "U", "s1", "buy")}
    conv = run.latest_conversions()[cid("c1", "purchase", "send", "U")]
    assert (conv["device_id"], conv["amount"]) == ("D", "100")
    assert retracted(run) == set()  # D never converted: nothing to take back
    check(run, flat(batches))


# --- rule 1, rule 2, rule 3 ----------------------------------------------------------------------------


def test_rule_1_a_link_before_the_touch_gives_the_later_anonymous_events_to_the_user() -> None:
    batches: list[list[Event]] = [
        [login("in", "D", "U", T)],
        [send("s1", "c1", "D", T + MIN)],
        [click("k1", "c1", "D", T + 2 * MIN)],
        [goal("buy", "purchase", "D", T + 3 * MIN, price=50, qty=2)],  # anonymous too
    ]
    run = deliver(batches)
    assert counts(run, "c1") == {
        "sends": 1,
        "send_users": 1,
        "failed": 0,
        "clicks": 1,
        "click_users": 1,
        "purchase/send": (1, {"KRW": "100"}),
        "purchase/click": (1, {"KRW": "100"}),
    }
    assert latest(run) == {
        cid("c1", "purchase", "send", "U"): ("c1", "purchase", "send", "U", "s1", "buy"),
        cid("c1", "purchase", "click", "U"): ("c1", "purchase", "click", "U", "k1", "buy"),
    }
    assert retracted(run) == set()  # routed straight to U: D never held them
    assert {r["to"] for r in run.routed if r["kind"] == "route"} == {"U"}
    check(run, flat(batches))


def test_rule_2_a_link_after_the_touch_within_the_window_takes_it_to_the_user() -> None:
    batches: list[list[Event]] = [
        [send("s1", "c1", "D", T)],
        [goal("buy", "purchase", "D", T + HOUR, price=10, qty=1)],
        [login("in", "D", "U", T + 2 * HOUR)],
    ]
    run = deliver(batches)
    assert counts(run, "c1")["send_users"] == 1
    assert counts(run, "c1")["purchase/send"] == (1, {"KRW": "10"})
    assert latest(run) == {cid("c1", "purchase", "send", "U"): ("c1", "purchase", "send", "U", "s1", "buy")}
    assert retracted(run) == {cid("c1", "purchase", "send", "D")}  # D converted until the link came
    check(run, flat(batches))


@pytest.mark.parametrize(
    ("link_after", "window", "owner_of_send", "owner_of_goal"),
    [
        (W, None, "U", "U"),  # the send exactly W before the link: still the user's (link.ts - t <= W)
        (W + 1, None, "D", "U"),  # 1 ms more: the send stays with D, the goal (1 s later) moves
        (W + SEC + 1, None, "D", "D"),  # both beyond the window: D's
        (HOUR, HOUR, "U", "U"),  # ATTRIBUTION_IDENTITY_WINDOW_MS replaces the longest window
        (HOUR + SEC + 1, HOUR, "D", "D"),
    ],
)
def test_rule_3_a_link_beyond_the_identity_window_leaves_the_events_with_the_device(
    link_after: int, window: int | None, owner_of_send: str, owner_of_goal: str
) -> None:
    batches: list[list[Event]] = [
        [send("s1", "c1", "D", T)],
        [goal("buy", "purchase", "D", T + SEC, price=10, qty=1)],
        [login("in", "D", "U", T + link_after)],
    ]
    events = flat(batches)
    own = owners(events, {PROJECT: SETTINGS}, window)
    assert (own[(PROJECT, "sends", "s1")], own[(PROJECT, "goals", "buy")]) == (owner_of_send, owner_of_goal)
    run = deliver(batches, identity_window_ms=window)
    if owner_of_send == owner_of_goal:
        who = owner_of_send
        assert latest(run) == {
            cid("c1", "purchase", "send", who): ("c1", "purchase", "send", who, "s1", "buy")
        }
    else:  # the touch and the goal went different ways: nothing converts
        assert latest(run) == {}
    assert counts(run, "c1")["send_users"] == 1
    check(run, events, window)


def test_a_device_with_sends_both_anonymous_and_as_the_user_is_one_user() -> None:
    first: list[list[Event]] = [
        [send("s1", "c1", "D", T, message="m1")],
        [send("s4", "c1", "D2", T, message="m1")],  # another device, never linked
    ]
    run = deliver(first)
    assert (counts(run, "c1")["sends"], counts(run, "c1")["send_users"]) == (2, 2)
    then: list[list[Event]] = [
        [send("s2", "c1", "D", T + MIN, user="U", message="m2")],  # logged in: links D to U
        [send("s3", "c1", "D", T + 2 * MIN, message="m2")],  # anonymous copy of m2 to D: U's now
    ]
    run.deliver(then)
    c = counts(run, "c1")
    # (c1, m1, D) and (c1, m2, D) under U, (c1, m1, D2) under D2; U and D2 reached
    assert (c["sends"], c["send_users"]) == (3, 2)
    check(run, flat(first + then))


def test_a_shared_device_follows_each_user_in_turn() -> None:
    batches: list[list[Event]] = [
        [send("a0", "c1", "D", T)],  # before any link, within W of U1's: rule 2, U1
        [login("in1", "D", "U1", T + HOUR)],
        [send("a1", "c2", "D", T + 2 * HOUR)],  # U1 (rule 1)
        [click("a1k", "c2", "D", T + 3 * HOUR)],  # U1
        [login("in2", "D", "U2", T + 4 * HOUR)],
        [send("a2", "c3", "D", T + 5 * HOUR)],  # U2
        [goal("u1buy", "purchase", "D1", T + 5 * HOUR + 30 * MIN, user="U1", price=7, qty=1)],
        [goal("gb", "purchase", "D", T + 6 * HOUR, price=50, qty=1)],  # anonymous: U2
    ]
    run = deliver(batches)
    assert latest(run) == {
        cid("c1", "purchase", "send", "U1"): ("c1", "purchase", "send", "U1", "a0", "u1buy"),
        cid("c2", "purchase", "send", "U1"): ("c2", "purchase", "send", "U1", "a1", "u1buy"),
        cid("c2", "purchase", "click", "U1"): ("c2", "purchase", "click", "U1", "a1k", "u1buy"),
        cid("c3", "purchase", "send", "U2"): ("c3", "purchase", "send", "U2", "a2", "gb"),
    }
    assert counts(run, "c3")["purchase/send"] == (1, {"KRW": "50"})
    assert counts(run, "c2")["purchase/click"] == (1, {"KRW": "7"})
    for campaign in ("c1", "c2", "c3"):
        assert counts(run, campaign)["send_users"] == 1
    check(run, flat(batches))


# --- corrections: a late link, links out of order ------------------------------------------------------


def test_a_late_link_retracts_the_device_conversion_and_emits_the_user_one() -> None:
    before: list[list[Event]] = [
        [send("s1", "c1", "D", T), goal("g1", "purchase", "D", T + MIN, price=100, qty=1)],
    ]
    run = deliver(before)
    assert latest(run) == {cid("c1", "purchase", "send", "D"): ("c1", "purchase", "send", "D", "s1", "g1")}
    assert counts(run, "c1")["purchase/send"] == (1, {"KRW": "100"})
    emitted = len(run.emitted)
    run.deliver([[login("in", "D", "U", T + 2 * MIN)]])
    after = run.emitted[emitted:]
    d_cid, u_cid = cid("c1", "purchase", "send", "D"), cid("c1", "purchase", "send", "U")
    assert [(c["conversion_id"], c.get("retracted", False)) for c in after] == [(d_cid, True), (u_cid, False)]
    gone = after[0]
    assert (gone["user_key"], gone["touch_event_id"], gone["goal_event_id"], gone["amount"]) == (
        "D",
        "s1",
        "g1",
        "100",
    )
    assert latest(run) == {u_cid: ("c1", "purchase", "send", "U", "s1", "g1")}
    c = counts(run, "c1")
    assert (c["sends"], c["send_users"], c["purchase/send"]) == (1, 1, (1, {"KRW": "100"}))
    check(run, flat([*before, [login("in", "D", "U", T + 2 * MIN)]]))


def test_a_late_link_onto_a_user_who_converted_already_takes_a_conversion_and_its_revenue_away() -> None:
    before: list[list[Event]] = [
        [send("s0", "c1", "Dx", T - HOUR, user="U")],
        [goal("g0", "purchase", "Dx", T - 30 * MIN, user="U", price=70, qty=1)],
        [send("s1", "c1", "D", T), goal("g1", "purchase", "D", T + MIN, price=100, qty=1)],
    ]
    run = deliver(before)
    c = counts(run, "c1")
    assert (c["sends"], c["send_users"], c["purchase/send"]) == (2, 2, (2, {"KRW": "170"}))
    link: list[list[Event]] = [[login("in", "D", "U", T + 2 * MIN)]]
    run.deliver(link)
    c = counts(run, "c1")
    # D's touch and goal are U's now: U's first goal (g0) keeps the credit, D's conversion goes
    assert (c["sends"], c["send_users"], c["purchase/send"]) == (2, 1, (1, {"KRW": "70"}))
    assert latest(run) == {cid("c1", "purchase", "send", "U"): ("c1", "purchase", "send", "U", "s0", "g0")}
    assert retracted(run) == {cid("c1", "purchase", "send", "D")}
    check(run, flat(before + link))


def late_link() -> list[list[Event]]:
    """D converts, then a link takes its touch and goal to U: D's conversion is retracted."""
    return [
        [send("s1", "c1", "D", T), goal("g1", "purchase", "D", T + MIN, price=100, qty=1)],
        [send("s2", "c2", "E", T + MIN)],
        [login("in", "D", "U", T + 2 * MIN)],
        [send("s3", "c2", "E", T + 3 * MIN)],
    ]


def out_of_order() -> list[list[Event]]:
    """Links to U1 (T+10 s) and U2 (T+30 s): U2's arrives first, U1's 35 s of event time later
    (grace: 60 s)."""
    return [
        [
            login("in2", "D", "U2", T + 30 * SEC),
            send("s2", "c2", "D", T + 40 * SEC),
            goal("gy", "purchase", "D", T + 45 * SEC, price=2, qty=1),
        ],
        [send("s", "c1", "D", T + 20 * SEC), goal("gx", "purchase", "D", T + 25 * SEC, price=1, qty=1)],
        [login("in1", "D", "U1", T + 10 * SEC)],
    ]


def test_a_link_arriving_out_of_order_within_grace_moves_what_it_decides() -> None:
    batches = out_of_order()
    run = deliver(batches)
    assert latest(run) == {
        cid("c1", "purchase", "send", "U1"): ("c1", "purchase", "send", "U1", "s", "gx"),
        cid("c2", "purchase", "send", "U2"): ("c2", "purchase", "send", "U2", "s2", "gy"),
    }
    # before U1's link, s and gx were U2's (rule 2: U2's link came within W after them)
    assert cid("c1", "purchase", "send", "U2") in retracted(run)
    assert counts(run, "c1")["purchase/send"] == (1, {"KRW": "1"})
    assert counts(run, "c2")["purchase/send"] == (1, {"KRW": "2"})
    check(run, flat(batches))


# --- re-delivery and hops ------------------------------------------------------------------------------


def shared_device() -> list[list[Event]]:
    return [
        [send("a0", "c1", "D", T), goal("g0", "purchase", "D", T + 10 * SEC, price=3, qty=1)],
        [login("in1", "D", "U1", T + 20 * SEC), send("b0", "c2", "E", T + 21 * SEC)],
        [click("a1k", "c1", "D", T + 30 * SEC), goal("in2", "signup", "D", T + 40 * SEC, user="U2")],
        [send("a2", "c2", "D", T + 50 * SEC), login("e1", "E", "U2", T + 55 * SEC)],
        [goal("gb", "purchase", "D", T + 60 * SEC, price=5, qty=1), goal("gs", "signup", "E", T + 61 * SEC)],
    ]


def outcome(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    tallies = {c: normalise_tally(run.tally(PROJECT, c)) for c in ("c1", "c2")}
    return tallies, run.latest_conversions()


@pytest.mark.parametrize("scenario", [shared_device, out_of_order])
def test_replayed_batches_and_slower_hops_change_nothing(scenario: Any) -> None:
    batches: list[list[Event]] = scenario()
    first = deliver(batches)
    check(first, flat(batches))
    want = outcome(first)
    for hop in (0, 1, 2):
        for replay in (None, *range(len(batches))):
            run = Run([SETTINGS], hop_batches=hop).deliver(batches, replay=replay)
            assert outcome(run) == want, (hop, replay)
    # every input record delivered twice, back to back
    doubled = Run([SETTINGS], hop_batches=1)
    for batch in batches:
        records = doubled.records(batch)
        doubled.feed(records)
        doubled.feed(records)
    assert outcome(doubled.drain()) == want


def test_identity_records_read_twice_or_produced_twice_change_nothing() -> None:
    batches = shared_device()
    want = outcome(deliver(batches))
    for produced_again in (False, True):
        run = Run([SETTINGS])
        for batch in batches:
            run.feed(run.records(batch))
            if produced_again:  # the same identity records again, at new offsets
                copies = [
                    msgspec.json.decode(r.value or b"", type=Identity) for b in run.in_flight for r in b
                ]
                run.in_flight.append(run.records(copies))
            else:  # the same records read again (a re-delivery)
                run.in_flight += [list(b) for b in run.in_flight]
        assert outcome(run.drain()) == want, produced_again


@pytest.mark.parametrize("scenario", [late_link, out_of_order, shared_device])
def test_a_crash_after_any_state_write_loses_no_output(scenario: Any) -> None:
    batches: list[list[Event]] = scenario()
    counting = Crashing([SETTINGS])
    counting.deliver(batches)
    failures = []
    for crash_at in range(counting.fed):
        run = Crashing([SETTINGS])
        run.crash_at = {crash_at}
        run.deliver(batches)
        try:
            check(run, flat(batches))
        except AssertionError:
            _, want = expected(flat(batches), SETTINGS)
            stale = [
                (c["user_key"], c["event"], c["basis"])
                for k, c in run.latest_conversions().items()
                if k not in want
            ]
            failures.append((crash_at, "live but not in the reference:", stale))
    assert not failures, failures


# --- identities off ------------------------------------------------------------------------------------


def test_identities_off_keep_every_event_with_its_own_key() -> None:
    batches: list[list[Event]] = [
        [send("s1", "c1", "D", T)],
        [login("in", "D", "U", T + MIN)],
        [goal("buy", "purchase", "D", T + 2 * MIN, user="U", price=100, qty=1)],
        [goal("anon", "purchase", "D", T + 3 * MIN, price=1, qty=1)],
    ]
    run = deliver(batches, identities=False)
    assert run.routed == []
    assert latest(run) == {cid("c1", "purchase", "send", "D"): ("c1", "purchase", "send", "D", "s1", "anon")}
    tallies, convs = reference(flat(batches), {PROJECT: SETTINGS})
    assert normalise_tally(run.tally(PROJECT, "c1")) == tallies[(PROJECT, "c1")]
    assert set(run.latest_conversions()) == set(convs)
    on = deliver(batches)
    assert latest(on) == {cid("c1", "purchase", "send", "U"): ("c1", "purchase", "send", "U", "s1", "buy")}


# --- web events ----------------------------------------------------------------------------------------


def test_an_anonymous_visitor_logs_in_with_identify_and_keeps_its_subscription() -> None:
    batches: list[list[Event]] = [
        [web("w1", "message_open", "V", T, campaign="wc", message="m1")],
        [web("w2", "push_apps_subscribe", "V", T + SEC)],
        [web("w3", "purchase", "V", T + 10 * SEC, price=30, qty=1)],  # an anonymous web goal
        [web("w3f", "talk_message_fail", "V", T + 11 * SEC, campaign="wc", message="m2")],
        # the login: the visitor is U from here on; U itself says it is not subscribed
        [web("w4", "plugin_push_apps_identify", "V", T + MIN, user="U", subscribed=False)],
        [web("w5", "purchase", "V", T + 2 * MIN, user="U", price=300, qty=1)],
        [web("w6", "message_click", "V", T + 3 * MIN, campaign="wc", message="m1")],  # anonymous: U's
    ]
    run = deliver(batches)
    c = counts(run, "wc")
    assert (c["sends"], c["send_users"], c["failed"], c["clicks"], c["click_users"]) == (1, 1, 1, 1, 1)
    assert latest(run) == {
        # web_push purchase: send basis; the first goal is the anonymous one (now U's)
        cid("wc", "purchase", "send", "U"): ("wc", "purchase", "send", "U", "w1", "w3"),
    }
    assert c["purchase/send"] == (1, {"KRW": "30"})
    # the permission stays with the visitor key: V on (its subscribe), U off (its identify)
    now = run.subscriptions(PROJECT)
    assert (now["subscribed_now"], now["subscribed_recent_visitors"]) == (1, 1)
    check(run, flat(batches))


def test_a_web_login_moves_the_anonymous_app_events_of_the_same_id() -> None:
    """A visitor id that is also an app's device id: one key, one set of links."""
    batches: list[list[Event]] = [
        [send("s1", "c1", "X", T), click("k1", "c1", "X", T + SEC)],
        [web("in", "page_view", "X", T + MIN, user="U")],
        [goal("buy", "purchase", "X", T + 2 * MIN, price=5, qty=1)],
    ]
    run = deliver(batches)
    assert latest(run) == {
        cid("c1", "purchase", "send", "U"): ("c1", "purchase", "send", "U", "s1", "buy"),
        cid("c1", "purchase", "click", "U"): ("c1", "purchase", "click", "U", "k1", "buy"),
    }
    check(run, flat(batches))


# --- found by the property tests (tests/unit/test_identity_properties.py) -------------------------------


def test_a_web_event_that_is_a_click_and_a_goal_moves_whole_when_its_owner_changes_again() -> None:
    """One event id, two items: a campaign measuring ``message_click`` makes the click its goal too.
    U0's link (rule 2) moves both from V; U1's earlier link (rule 1) must move both on to U1."""
    goal_too = settings(campaign_goals=[{"campaign_id": "wc", "event": "message_click", "window_ms": HOUR}])
    batches: list[list[Event]] = [
        [web("w1", "message_click", "V", T, campaign="wc", message="m1")],
        [login("in0", "V", "U0", T + SEC)],
        [login("in1", "V", "U1", T)],
    ]
    run = Run([goal_too]).deliver(batches)
    assert latest(run) == {
        cid("wc", "message_click", "click", "U1"): ("wc", "message_click", "click", "U1", "w1", "w1"),
    }
    assert counts(run, "wc")["click_users"] == 1
    assert_identity_matches(run, flat(batches), goal_too)


def test_an_event_naming_its_own_device_as_its_user_is_never_resolved() -> None:
    """user_id == device_id: the event has a user id (the device's own), so it is not anonymous and
    links nothing; a link of the device to U must not take it away."""
    batches: list[list[Event]] = [
        [send("s1", "c1", "D", T + 10 * SEC, user="D")],
        [login("in", "D", "U", T)],
        [goal("buy", "purchase", "D", T + 20 * SEC, user="D", price=1, qty=1)],
    ]
    run = deliver(batches)
    assert latest(run) == {cid("c1", "purchase", "send", "D"): ("c1", "purchase", "send", "D", "s1", "buy")}
    check(run, flat(batches))


def test_a_link_coming_back_after_the_device_clock_passed_grace_still_moves_retained_events() -> None:
    batches: list[list[Event]] = [
        [send("s1", "c1", "D", T)],  # rule 2 for U's link, 1 min inside the identity window
        [
            login("in", "D", "U", T + W - MIN),
            goal("buy", "purchase", "D", T + W - 30 * SEC, user="U", price=1, qty=1),
        ],
        [send("s9", "c2", "D", T + W + 5 * MIN)],  # D's partition moves 5 min on before the link is back
    ]
    run = deliver(batches, hop_batches=1)
    assert latest(run) == {cid("c1", "purchase", "send", "U"): ("c1", "purchase", "send", "U", "s1", "buy")}


# -- found by review: link refresh, replays that re-send only what they moved, long ids ------------


def test_a_user_still_on_its_device_refreshes_the_link_so_the_device_never_forgets_it() -> None:
    """While a device is exclusive only the earliest link is needed, but the device's state (and its
    links) expires 90 days after the newest link it holds: the user sends one again before that."""
    t0 = 1_700_000_000_000
    run = Run([SETTINGS]).deliver(
        [[send("s1", "c1", "D", t0, "U")], [send("s2", "c1", "D", t0 + 100 * DAY_MS, "U")]]
    )
    links = [r for r in run.routed if r["kind"] == "link" and r["to"] == "D"]
    assert [r["ts"] for r in links] == [t0, t0 + 100 * DAY_MS]
    later = Run([SETTINGS]).deliver(
        [[send("s1", "c1", "D", t0, "U")], [send("s2", "c1", "D", t0 + DAY_MS, "U")]]
    )
    assert len([r for r in later.routed if r["kind"] == "link"]) == 1  # within the hold: no refresh


def test_a_replayed_batch_resends_only_the_routes_its_own_records_moved() -> None:
    """An owner may have evicted an older routed touch: a route sent again would count it twice."""
    t0 = 1_700_000_000_000
    run = Run([SETTINGS])
    run.feed_events([goal("l1", "signup", "D", t0, "U")])  # links D to U
    run.drain()
    run.feed_events([send("a1", "c1", "D", t0 + 1000)])  # anonymous: routed to U
    run.drain()
    routes_before = [r for r in run.routed if r["kind"] == "route"]
    assert [r["event_id"] for r in routes_before] == ["a1"]
    records = run.records([click("k1", "c9", "D", t0 + 2000, None, "kakao")])  # routes k1 only
    run.feed(records)
    run.feed(records)  # re-delivered after a crash before its commit: k1's route again, not a1's
    run.drain()
    assert [r["event_id"] for r in run.routed if r["kind"] == "route"] == ["a1", "k1", "k1"]
    assert normalise_tally(run.tally(PROJECT, "c1"))["sends"] == 1


def test_link_and_share_ids_stay_within_the_id_limit_for_the_longest_ids() -> None:
    long_user, long_device = "u" * 256, "d" * 256
    run = Run([SETTINGS]).deliver(
        [[goal("l1", "signup", long_device, 0, long_user), goal("l2", "signup", long_device, 1, "U2")]]
    )
    assert {r["kind"] for r in run.routed} >= {"link", "share"}
    assert all(len(r["event_id"]) <= 256 for r in run.routed)
    assert not run.dead
