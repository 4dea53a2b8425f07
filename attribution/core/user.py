"""Attribution for one user key of one project: the state kept for them and how events change it.

Why a goal is credited, in one place:

- A *touch* is a send with status ``sent`` (send basis) or a click (click basis), on a channel that
  allows that basis (push, web push, email: both; KakaoTalk, SMS: send; in-app: click).
- A goal credits a campaign on a basis when ``touch.ts <= goal.ts <= touch.ts + window_ms``.
- Each (campaign, conversion event, basis) is credited once per user key, with the **first**
  qualifying goal by event time (ties by ``event_id``); the conversion names the latest qualifying
  touch of that campaign. Every campaign whose window holds the goal is credited.

After every batch the credits it can change are recomputed from the retained touches and goals, so
the result does not depend on arrival order: an earlier goal or a touch that arrives late (within
grace) replaces the credit, and the caller republishes it under the same ``conversion_id``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import msgspec

from attribution.core import identity, items, web
from attribution.core import subscriptions as subs_rules
from attribution.core.credit import Outcome, conversion, recompute_removed, recredit
from attribution.core.identity import Routing
from attribution.core.model import Channel, Goal, Identity, Located, Send, WebEvent
from attribution.core.rules import MAX_VISITOR_DAYS, ProjectSettings
from attribution.core.subscriptions import Subscriptions
from attribution.core.tally import CampaignDelta
from attribution.core.user_state import (
    PERM_ON,
    GoalMark,
    Mark,
    Touch,
    UserState,
)

_VALUE: dict[Channel, str] = {c: c.value for c in Channel}  # Enum.value is a slow descriptor


def apply(
    state: UserState,
    project_id: str,
    user_key: str,
    events: Iterable[Located],
    settings: ProjectSettings | None,
    clock_ms: int,
    end_clock_ms: int,
    grace_ms: int,
    identity_window_ms: int | None = None,
) -> Outcome:
    """Apply one batch of a user's events to ``state`` (in place) and say what changed.

    ``clock_ms`` is the partition's event-time clock before the batch (events older than it by more
    than ``grace_ms`` are late), ``end_clock_ms`` after it (what is older than retention is evicted).
    Events at or below the user's fence for their (topic, partition) were applied already: skipped.
    ``identity_window_ms`` None: identities off; else anonymous touches and goals follow the user
    their device is linked to (``attribution.core.identity``), within that window after them.
    """
    out = Outcome()
    deltas = out.campaigns
    fences = state.fences
    late_before = clock_ms - grace_ms
    touches_before, goals_before = len(state.touches), len(state.goals)  # both only grow until _evict
    subs: Subscriptions | None = None
    was_on = state.perm == PERM_ON
    routing: Routing | None = None
    if identity_window_ms is not None:
        routing = Routing(
            project_id,
            user_key,
            identity_window_ms,
            functools.partial(items.delta_for, deltas, project_id),
            out.identity,
        )
    relinked = False
    replayed: set[str] = set()  # positions of re-delivered records, for the lent items they moved
    for located in events:
        ev, pos = located.event, located.pos
        stream = pos.stream
        if pos.offset <= fences.get(stream, -1):
            out.replayed = True
            out.count(pos.topic, "replayed")
            replayed.add(f"{stream}@{pos.offset}")
            if routing is not None:  # what it sent may not have reached Kafka the first time
                if not isinstance(ev, Identity):
                    routing.link(state, ev, replayed=True)
                elif ev.kind == "share":
                    routing.share(state, ev, replayed=True)
            continue
        fences[stream] = pos.offset
        out.changed = True
        if routing is not None:
            routing.at = f"{stream}@{pos.offset}"
        if ev.ts < late_before and not isinstance(ev, Identity):  # a route is as old as its event
            out.count(pos.topic, "late")
        if isinstance(ev, Identity):
            if routing is None:
                result = "ignored"
            elif ev.kind == "link":
                result = routing.linked(state, ev)
                relinked = relinked or result == "applied"
            elif ev.kind == "share":
                result = routing.share(state, ev)
            else:
                result = routing.receive(state, ev)
            out.count(pos.topic, result)
            continue
        anonymous = routing if ev.user_id is None else None
        if isinstance(ev, Goal):
            mark = items.goal_mark(ev, settings)
            result = "ignored" if mark is None else _take(state, mark, anonymous, deltas, project_id)
        elif isinstance(ev, WebEvent):
            if subs is None:
                subs = Subscriptions(project_id)
            result = _add_web(state, ev, settings, deltas, subs, anonymous)
        elif isinstance(ev, Send) and ev.status == "failed":
            delta = items.delta_for(deltas, project_id, ev.campaign_id)
            delta.seen_on(_VALUE[ev.channel])
            result = items.add_failed(state, ev, delta)
        else:
            # every send and click, copies and failed ones too: the channel set depends on the events
            # only, never on which copy came first
            items.delta_for(deltas, project_id, ev.campaign_id).seen_on(_VALUE[ev.channel])
            touch = items.send_touch(ev) if isinstance(ev, Send) else items.click_touch(ev)
            result = _take(state, touch, anonymous, deltas, project_id)
        if routing is not None:
            routing.link(state, ev)
            # an event whose user id is its own device id: the device's own, never moved by a link
            if ev.user_id == identity.device_of(ev) and ev.event_id not in state.pinned:
                state.pinned.append(ev.event_id)
        out.count(pos.topic, result)
    window = settings.max_window_ms if settings is not None else 0
    if routing is not None:
        if relinked:
            # every item still kept: a link late for this partition's clock (a slow hop in a
            # catch-up) still moves what it can
            routing.reresolve(state, 0)
        if out.replayed:
            routing.replay(state, replayed)
            routing.reshare(state)
    if subs is not None:
        subs_rules.settle(state, was_on, subs_rules.zone_of(settings), subs)
        out.subscriptions = list(subs.deltas.values())
    if out.replayed:
        _touch_all(state, project_id, deltas)
    removed = routing.removed if routing is not None else set()
    if removed:
        recompute_removed(state, project_id, user_key, settings, out, removed, end_clock_ms)
    if out.changed and settings is not None:
        recredit(state, project_id, user_key, settings, out, touches_before, goals_before, bool(removed))
    if out.replayed:
        # A re-delivered batch may have been applied without its outputs reaching Kafka: say it again.
        emitted = {c.conversion_id for c in out.conversions}
        for credit in state.credits:
            conv = conversion(project_id, user_key, credit, settings)
            if conv.conversion_id not in emitted:
                out.conversions.append(conv)
                emitted.add(conv.conversion_id)
        for gone in state.withdrawn:  # and the retractions it made
            conv = conversion(project_id, user_key, gone.credit, settings)
            if conv.conversion_id not in emitted:
                out.conversions.append(msgspec.structs.replace(conv, retracted=True))
    if out.changed:
        _evict(state, window, identity_window_ms or 0, end_clock_ms, grace_ms)
    return out


def _take(
    state: UserState,
    item: Touch | GoalMark,
    routing: Routing | None,
    deltas: dict[str, CampaignDelta],
    project_id: str,
) -> str:
    """A touch or goal of this user key: its own, or (anonymous, identities on) its device's owner's."""
    if routing is not None:
        return routing.take(state, item)
    if isinstance(item, GoalMark):
        return items.add_goal(state, item)
    return items.add_touch(state, item, items.delta_for(deltas, project_id, item.campaign))


def _add_web(
    state: UserState,
    ev: WebEvent,
    settings: ProjectSettings | None,
    deltas: dict[str, CampaignDelta],
    subs: Subscriptions,
    routing: Routing | None,
) -> str:
    """A KARTE web event (see ``attribution.core.web``): a visit, maybe a serve's send, click or
    counter, a permission change, a goal."""
    state.visit_ts = max(state.visit_ts, ev.ts)
    subs.delta().seen(ev.ts)  # the project clock
    name = ev.event
    result = "visit"
    if name in web.SERVE_EVENTS:
        campaign = ev.campaign_id or ""
        items.delta_for(deltas, ev.project_id, campaign).seen_on(_VALUE[Channel.WEB_PUSH])
        if name == web.CLICK:
            touch = items.click_touch(web.as_click(ev))
            result = _take(state, touch, routing, deltas, ev.project_id)
        elif name == web.OPEN:
            touch = items.send_touch(web.as_send(ev))
            result = _take(state, touch, routing, deltas, ev.project_id)
        elif name == web.FAIL:
            result = items.add_failed(
                state, web.as_send(ev), items.delta_for(deltas, ev.project_id, campaign)
            )
        else:
            result = _count_web(
                state, ev, web.COUNTED[name], items.delta_for(deltas, ev.project_id, campaign)
            )
    else:
        on = web.permission(ev)
        if on is not None:
            subs_rules.set_permission(state, on, ev.ts, ev.event_id)
            if name == web.SUBSCRIBE:
                subs_rules.subscribed_in(state, ev.session_id, ev.ts, subs_rules.zone_of(settings), subs)
            result = "applied"
    mark = (
        items.goal_mark(web.as_goal(ev), settings)
        if settings is not None and name in settings.goal_names
        else None
    )
    if mark is not None:
        as_goal = _take(state, mark, routing, deltas, ev.project_id)
        if result == "visit":
            result = as_goal
    return result


def _count_web(state: UserState, ev: WebEvent, counter: str, delta: CampaignDelta) -> str:
    if any(m.event_id == ev.event_id for m in state.marks):
        return "duplicate"
    state.marks.append(Mark(ev.event_id, ev.ts))
    delta.add(counter)
    delta.seen(ev.ts)
    return "applied"


def _touch_all(state: UserState, project_id: str, deltas: dict[str, CampaignDelta]) -> None:
    for campaign in state.reached:
        if campaign not in deltas:
            deltas[campaign] = CampaignDelta(project_id, campaign)


def _evict(state: UserState, window: int, identity_ms: int, clock_ms: int, grace_ms: int) -> None:
    """Drop what no event within grace can still need; remember how long the rest matters. With
    identities on (``identity_ms``), touches and goals are kept that much longer: a link arriving
    within grace can move an anonymous event that old, and its owner's credits are then recomputed."""
    touch_horizon = clock_ms - grace_ms - window - identity_ms
    goal_horizon = clock_ms - grace_ms - identity_ms
    expires = max(state.expires_ts, clock_ms)
    if state.touches:
        if min(t.ts for t in state.touches) < touch_horizon:
            items.seal(state, [t for t in state.touches if t.ts < touch_horizon])
            state.touches = [t for t in state.touches if t.ts >= touch_horizon]
        if state.touches:
            expires = max(expires, max(t.ts for t in state.touches) + window + identity_ms + grace_ms)
    if state.goals:
        if min(g.ts for g in state.goals) < goal_horizon:
            state.goals = [g for g in state.goals if g.ts >= goal_horizon]
        if state.goals:
            expires = max(expires, max(g.ts for g in state.goals) + identity_ms + grace_ms)
    if state.pinned:
        kept = {t.event_id for t in state.touches} | {g.event_id for g in state.goals}
        state.pinned = [e for e in state.pinned if e in kept]
    if state.withdrawn:
        state.withdrawn = [w for w in state.withdrawn if w.at >= touch_horizon]
    if state.lent:
        identity.evict_lent(state, touch_horizon)
        if state.lent:
            expires = max(expires, max(lt.ts for lt in state.lent) + identity_ms + grace_ms)
    if state.links or state.links_out:
        identity.evict_links(state, touch_horizon)  # as long as the events a link can move
        if state.links:  # as a device: its last link decides its later anonymous events
            expires = max(expires, state.links[-1].ts + identity.LINK_HOLD_MS)
        for device in state.shared:  # as a user of a shared device: keep sending it every link
            expires = max(expires, state.links_out.get(device, [0])[-1] + identity.LINK_HOLD_MS)
    if state.failed:  # same dedupe horizon as sends
        if min(f.ts for f in state.failed) < touch_horizon:
            state.failed = [f for f in state.failed if f.ts >= touch_horizon]
        if state.failed:
            expires = max(expires, max(f.ts for f in state.failed) + window + grace_ms)
    if state.marks:  # same dedupe horizon as sends
        if min(m.ts for m in state.marks) < touch_horizon:
            state.marks = [m for m in state.marks if m.ts >= touch_horizon]
        if state.marks:
            expires = max(expires, max(m.ts for m in state.marks) + window + grace_ms)
    if state.sessions:
        subs_rules.evict_sessions(state, clock_ms - grace_ms)
        if state.sessions:
            newest = max(s.ts for s in state.sessions.values())
            expires = max(expires, newest + subs_rules.SESSION_HOLD_MS + grace_ms)
    if state.perm:
        expires = max(expires, subs_rules.hold_until(state, MAX_VISITOR_DAYS))
    state.expires_ts = expires
