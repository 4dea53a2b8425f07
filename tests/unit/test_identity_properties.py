"""Identities against the independent reference on generated event sets (``tests.support.identity_ref``).

A few devices and visitors shared by a few users: events anonymous or logged in (every logged-in
event links its device to its user at its ts), so links come at random times, before, between and
after the anonymous events, within the identity window or beyond it. The engine (``Run``: real
Processor, in-memory store, identity records fed back ``hop_batches`` input batches later) must give
the reference's answer over the resolved events whatever the arrival order within grace, the batch
cuts, duplicates and a re-delivered batch.

A link must reach its device's partition before that partition's event-time clock passes grace of
the link (the README: "a routed event reaches its owner a batch cycle later; in a catch-up ... that
hop can exceed grace"; ``test_identity_rules`` shows what happens then). Two ways keep within it:
the event time of a set spans no more than grace (any batch cuts), or the sets span more (three
bursts: evictions happen in between) and arrive ``paced``: batches are ticks of arrival time.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attribution.core.model import Event
from attribution.core.rules import ProjectSettings, parse_settings
from tests.support.harness import Crashing, Run
from tests.support.identity_ref import assert_identity_matches, identity_window
from tests.support.scenarios import PROJECT, click, goal, send, web

GRACE_MS = 30_000
SPAN_S = 30  # event times within T0 .. T0 + 30 s: no more than grace
#: the paced sets: three bursts of 20 s, 45 s apart (beyond window + identity window + grace: evictions)
BURSTS_S = (0, 45, 90)
T0 = 1_704_067_200_000
DEVICES = ["d0", "d1", "d2"]  # app devices; d2 is also a web visitor id
VISITORS = ["v0", "d2"]
USERS = ["u0", "u1", "u2"]
CAMPAIGNS = {"c-push": "push", "c-kakao": "kakao", "c-web": "web_push"}
WEB_NAMES = [
    "message_open",
    "message_open",
    "message_click",
    "talk_message_fail",
    "talk_message_send",
    "push_apps_subscribe",
    "push_apps_unsubscribe",
    "plugin_push_apps_identify",
    "purchase",
    "signup",
    "page_view",
]
PRICES: list[Any] = [100, "2.5", None]

SETTINGS: ProjectSettings = parse_settings(
    {
        "project_id": PROJECT,
        "version": 1,
        "conversion_events": [
            {
                "name": "purchase",
                "window_ms": 8_000,
                "basis": {"push": "click"},
                "purchase": {"amount_key": "price", "quantity_key": "qty", "currency": "KRW"},
            },
            {"name": "signup", "window_ms": 5_000},
        ],
        # the longest window (so the identity window) is a campaign goal's; a serve event as a goal
        "campaign_goals": [{"campaign_id": "c-web", "event": "message_click", "window_ms": 12_000}],
    }
)
assert identity_window(SETTINGS) == 12_000


def _bucket(ts: int) -> int:
    """A message is sent within 10 s: the engine dedupes copies of a message only while it retains
    them (window + identity window + grace), a limit of its own that these tests leave alone."""
    return (ts - T0) // 10_000


@st.composite
def event_sets(
    draw: st.DrawFn, span_s: int = SPAN_S, bursts: tuple[int, ...] = (0,), self_ids: bool = False
) -> list[Event]:
    """``self_ids``: some events name their own device (or visitor) as their user id: such an event
    is its device's own, links nothing and is never resolved."""
    n = draw(st.integers(1, 30 * len(bursts)))
    events: list[Event] = []
    for i in range(n):
        what = draw(
            st.sampled_from(["send", "send", "failed", "click", "goal", "goal", "login", "web", "web"])
        )
        start = draw(st.sampled_from(bursts))
        ts = T0 + (start + draw(st.integers(0, span_s))) * 1000 + draw(st.sampled_from([0, 0, 1, 999]))
        # anonymous a bit more often than not; a login always names its user
        user = None if what != "login" and draw(st.integers(0, 9)) < 6 else draw(st.sampled_from(USERS))
        itself = self_ids and what != "login" and draw(st.integers(0, 4)) == 0
        if what == "web":
            visitor = draw(st.sampled_from(VISITORS))
            user = visitor if itself else user
            name = draw(st.sampled_from(WEB_NAMES))
            campaign = message = None
            if name.startswith(("message_", "talk_")):
                campaign = "c-web"
                message = draw(st.sampled_from(["m0", "m1", None]))
                message = message and f"{message}-{_bucket(ts)}"
            values: dict[str, Any] = {}
            if name in ("purchase", "signup"):
                values = {"price": draw(st.sampled_from(PRICES)), "qty": 1}
            elif name == "plugin_push_apps_identify":
                values = {"subscribed": draw(st.booleans())}
            session = f"s{draw(st.integers(0, 1))}"
            events.append(web(f"w{i}", name, visitor, ts, user, session, campaign, message, **values))
            continue
        device = draw(st.sampled_from(DEVICES))
        user = device if itself else user
        if what == "login":
            events.append(goal(f"l{i}", "login", device, ts, user))
            continue
        if what == "goal":
            name = draw(st.sampled_from(["purchase", "purchase", "signup", "other"]))
            props = {"price": draw(st.sampled_from(PRICES)), "qty": draw(st.integers(1, 2))}
            events.append(goal(f"g{i}", name, device, ts, user, **props))
            continue
        campaign = draw(st.sampled_from(sorted(CAMPAIGNS)))
        channel = CAMPAIGNS[campaign]
        message = f"{campaign}-m{draw(st.integers(0, 1))}-{_bucket(ts)}"
        if what == "click":
            events.append(click(f"k{i}", campaign, device, ts, user, channel, message))
        else:
            status = "failed" if what == "failed" else "sent"
            events.append(send(f"s{i}", campaign, device, ts, user, channel, message, status))
    return events


Delivery = tuple[list[Event], list[list[Event]], int | None, int]


@st.composite
def deliveries(
    draw: st.DrawFn,
    span_s: int = SPAN_S,
    grace_ms: int = GRACE_MS,
    paced: bool = False,
    bursts: tuple[int, ...] = (0,),
    self_ids: bool = False,
) -> Delivery:
    """The event set; its batches in arrival order (within grace, with duplicates); a batch to
    re-deliver; how many input batches an identity record takes to come back.

    ``paced``: the batches are the arrivals of consecutive ticks of grace/8 (an empty batch when
    nothing arrives: time passes), maybe cut further, and events arrive within grace/4. An identity
    record then comes back (after at most 2 batches, a re-delivered one and the record it causes in
    turn) before its partition's event time passes grace of the event that made it:
    grace/4 + 5 ticks < grace. Event time can then span more than grace (evictions happen)."""
    events = draw(event_sets(span_s, bursts, self_ids))
    dupes = draw(st.lists(st.sampled_from(events), max_size=4))
    most = grace_ms // 4 if paced else grace_ms
    jitter = st.sampled_from([0, most // 2, most - 1]) | st.integers(0, most - 1)
    arrivals = sorted(
        ((e.ts + draw(jitter), i, e) for i, e in enumerate([*events, *dupes])), key=lambda a: a[:2]
    )
    ordered = [e for _, _, e in arrivals]
    groups = [ordered]
    if paced:
        tick = grace_ms // 8
        first = arrivals[0][0]
        groups = [[] for _ in range((arrivals[-1][0] - first) // tick + 1)]
        for at, _, e in arrivals:
            groups[(at - first) // tick].append(e)
    batches: list[list[Event]] = []
    for group in groups:
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(group) - 1)), max_size=len(group))))
        batches += [group[a:b] for a, b in zip([0, *cuts], [*cuts, len(group)], strict=True) if group[a:b]]
        if not group:
            batches.append([])
    replay = draw(st.none() | st.integers(0, len(batches) - 1))
    hop = draw(st.sampled_from([0, 1, 2]))
    return events, batches, replay, hop


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_engine_equals_the_reference_over_resolved_events(case: Delivery) -> None:
    events, batches, replay, hop = case
    run = Run([SETTINGS], grace_ms=GRACE_MS, hop_batches=hop).deliver(batches, replay)
    assert_identity_matches(run, events, SETTINGS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.sampled_from([1_000, 5_000, 60_000]))
def test_a_configured_identity_window_is_the_one_used(case: Delivery, window: int) -> None:
    events, batches, replay, hop = case
    run = Run([SETTINGS], grace_ms=GRACE_MS, hop_batches=hop, identity_window_ms=window)
    assert_identity_matches(run.deliver(batches, replay), events, SETTINGS, window)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(span_s=20, paced=True, bursts=BURSTS_S))
def test_paced_deliveries_over_more_than_grace_evict_and_stay_exact(case: Delivery) -> None:
    """Three bursts further apart than window + identity window + grace: links, lent items and
    touches are evicted in between, and a burst's links must not reach back into the one before."""
    events, batches, replay, hop = case
    run = Run([SETTINGS], grace_ms=GRACE_MS, hop_batches=hop).deliver(batches, replay)
    assert_identity_matches(run, events, SETTINGS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(self_ids=True))
def test_an_event_naming_its_own_device_as_user_is_never_resolved(case: Delivery) -> None:
    events, batches, replay, hop = case
    run = Run([SETTINGS], grace_ms=GRACE_MS, hop_batches=hop).deliver(batches, replay)
    assert_identity_matches(run, events, SETTINGS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.sets(st.integers(0, 40), min_size=4, max_size=12))
def test_a_worker_killed_after_any_state_write_loses_no_output(case: Delivery, crash_at: set[int]) -> None:
    """Batches (input or identity) applied to the store whose outputs are lost, then delivered
    again: each re-delivery must say again everything the lost outputs said."""
    events, batches, replay, hop = case
    run = Crashing([SETTINGS], grace_ms=GRACE_MS, hop_batches=hop)
    run.crash_at = crash_at
    assert_identity_matches(run.deliver(batches, replay), events, SETTINGS)
