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

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from attribution.core.model import Basis, Channel, Click, Goal, Located, Send
from attribution.core.money import fmt, purchase_amount
from attribution.core.outputs import Conversion, conversion_id
from attribution.core.rules import ConversionEvent, ProjectSettings
from attribution.core.tally import CampaignDelta, conversions_field
from attribution.core.user_state import (
    CONVERTS,
    IS_SEND,
    KIND_OF,
    KINDS,
    Credit,
    Failed,
    GoalMark,
    Touch,
    UserState,
)

_SEND = Basis.SEND.value
_CLICK = Basis.CLICK.value
_REACHED_BIT = {_SEND: 1, _CLICK: 2}
_VALUE: dict[Channel, str] = {c: c.value for c in Channel}  # Enum.value is a slow descriptor


@dataclass(slots=True)
class Outcome:
    """What applying a user's events produced: outputs, counter deltas and per-topic counts."""

    changed: bool = False
    replayed: bool = False
    conversions: list[Conversion] = field(default_factory=list)
    campaigns: dict[str, CampaignDelta] = field(default_factory=dict)
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    amount_missing: list[str] = field(default_factory=list)

    def count(self, topic: str, outcome: str) -> None:
        k = (topic, outcome)
        self.outcomes[k] = self.outcomes.get(k, 0) + 1


def apply(
    state: UserState,
    project_id: str,
    user_key: str,
    events: Iterable[Located],
    settings: ProjectSettings | None,
    clock_ms: int,
    end_clock_ms: int,
    grace_ms: int,
) -> Outcome:
    """Apply one batch of a user's events to ``state`` (in place) and say what changed.

    ``clock_ms`` is the partition's event-time clock before the batch (events older than it by more
    than ``grace_ms`` are late), ``end_clock_ms`` after it (what is older than retention is evicted).
    Events at or below the user's fence for their (topic, partition) were applied already: skipped.
    """
    out = Outcome()
    deltas = out.campaigns
    fences = state.fences
    late_before = clock_ms - grace_ms
    touches_before, goals_before = len(state.touches), len(state.goals)  # both only grow until _evict
    for located in events:
        ev, pos = located.event, located.pos
        stream = pos.stream
        if pos.offset <= fences.get(stream, -1):
            out.replayed = True
            out.count(pos.topic, "replayed")
            continue
        fences[stream] = pos.offset
        out.changed = True
        if ev.ts < late_before:
            out.count(pos.topic, "late")
        if isinstance(ev, Goal):
            result = _add_goal(state, ev, settings)
        else:
            delta = deltas.get(ev.campaign_id)
            if delta is None:
                delta = deltas[ev.campaign_id] = CampaignDelta(project_id, ev.campaign_id)
            # every send and click, copies and failed ones too: the channel set depends on the events
            # only, never on which copy came first
            delta.seen_on(_VALUE[ev.channel])
            result = _add_send(state, ev, delta) if isinstance(ev, Send) else _add_click(state, ev, delta)
        out.count(pos.topic, result)
    if out.replayed:
        _touch_all(state, project_id, deltas)
    if out.changed and settings is not None:
        _recredit(state, project_id, user_key, settings, out, touches_before, goals_before)
    if out.replayed:
        # A re-delivered batch may have been applied without its outputs reaching Kafka: say it again.
        emitted = {c.conversion_id for c in out.conversions}
        for credit in state.credits:
            conv = _conversion(project_id, user_key, credit, settings)
            if conv.conversion_id not in emitted:
                out.conversions.append(conv)
    if out.changed:
        _evict(state, settings, end_clock_ms, grace_ms)
    return out


def _add_send(state: UserState, ev: Send, delta: CampaignDelta) -> str:
    if ev.status == "failed":
        if any(
            f.campaign == ev.campaign_id and f.message_id == ev.message_id and f.device_id == ev.device_id
            for f in state.failed
        ):
            return "duplicate"
        state.failed.append(Failed(ev.campaign_id, ev.message_id, ev.device_id, ev.ts))
        delta.add("failed")
        delta.seen(ev.ts)
        return "applied"
    copy = False
    for t in state.touches:
        if IS_SEND[t.kind]:
            if t.event_id == ev.event_id:
                return "duplicate"
            if t.campaign == ev.campaign_id and t.message_id == ev.message_id and t.device_id == ev.device_id:
                copy = True
    if copy:
        # another copy of one message to one device: counted once, but every copy is a touch, so
        # that arrival order cannot decide which copy's time the goal is measured against
        state.touches.append(
            Touch(ev.campaign_id, KIND_OF[ev.channel, _SEND], ev.ts, ev.event_id, ev.message_id, ev.device_id)
        )
        return "duplicate"
    state.touches.append(
        Touch(ev.campaign_id, KIND_OF[ev.channel, _SEND], ev.ts, ev.event_id, ev.message_id, ev.device_id)
    )
    delta.add("sends")
    _reach(state, ev.campaign_id, _SEND, delta)
    delta.seen(ev.ts)
    return "applied"


def _add_click(state: UserState, ev: Click, delta: CampaignDelta) -> str:
    if any(t.event_id == ev.event_id and not IS_SEND[t.kind] for t in state.touches):
        return "duplicate"
    state.touches.append(
        Touch(ev.campaign_id, KIND_OF[ev.channel, _CLICK], ev.ts, ev.event_id, ev.message_id, ev.device_id)
    )
    delta.add("clicks")
    _reach(state, ev.campaign_id, _CLICK, delta)
    delta.seen(ev.ts)
    return "applied"


def _reach(state: UserState, campaign: str, basis: str, delta: CampaignDelta) -> None:
    bits = state.reached.get(campaign, 0)
    bit = _REACHED_BIT[basis]
    if not bits & bit:
        state.reached[campaign] = bits | bit
        delta.add("send_users" if basis == _SEND else "click_users")


def _add_goal(state: UserState, ev: Goal, settings: ProjectSettings | None) -> str:
    conv_event = settings.event(ev.name) if settings is not None else None
    if conv_event is None:
        return "ignored"
    if any(g.event_id == ev.event_id for g in state.goals):
        return "duplicate"
    amount: str | None = None
    currency: str | None = None
    if conv_event.purchase is not None:
        value = purchase_amount(conv_event.purchase, ev.properties)
        currency = conv_event.purchase.currency
        amount = fmt(value) if value is not None else None
    state.goals.append(GoalMark(ev.name, ev.ts, ev.event_id, ev.device_id, amount, currency))
    return "applied"


def _touch_all(state: UserState, project_id: str, deltas: dict[str, CampaignDelta]) -> None:
    for campaign in state.reached:
        if campaign not in deltas:
            deltas[campaign] = CampaignDelta(project_id, campaign)


def _recredit(
    state: UserState,
    project_id: str,
    user_key: str,
    settings: ProjectSettings,
    out: Outcome,
    touches_before: int,
    goals_before: int,
) -> None:
    """Recompute the credits the batch can have changed: those of the (campaign, basis) pairs it
    added touches to and of the conversion events it added goals of; every credit when the settings
    changed since they were computed.

    Skipping the others changes nothing: between two batches that add to a pair or an event, its
    touches and goals only lose members (eviction), and the first credit over subsets is never
    better than the one over the sets it was kept from (an earlier goal, or the same goal with a
    later touch, needs a goal or a touch that is gone)."""
    if not state.goals:  # no goal, no credit (most users, most batches): nothing to recompute
        return
    every = state.settings_version != settings.version
    state.settings_version = settings.version
    new_goals = {g.name for g in state.goals[goals_before:]}
    new_pairs = {(t.campaign, KINDS[t.kind][1]) for t in state.touches[touches_before:]}
    if not (every or new_goals or new_pairs):
        return
    by_campaign: dict[tuple[str, str], list[Touch]] = {}
    for t in state.touches:
        if CONVERTS[t.kind]:
            by_campaign.setdefault((t.campaign, KINDS[t.kind][1]), []).append(t)
    if not by_campaign:
        return
    goals = sorted(state.goals, key=lambda g: (g.ts, g.event_id))
    current = {(c.campaign, c.event, c.basis): i for i, c in enumerate(state.credits)}
    for (campaign, basis), touches in sorted(by_campaign.items()):
        whole_pair = every or (campaign, basis) in new_pairs
        for conv_event in settings.conversion_events:
            if not whole_pair and conv_event.name not in new_goals:
                continue
            best = _first_credit(campaign, basis, conv_event, touches, goals)
            if best is None:
                continue
            index = current.get((campaign, conv_event.name, basis))
            old = state.credits[index] if index is not None else None
            if old is not None and not _better(best, old):
                continue
            if index is None:
                state.credits.append(best)
            else:
                state.credits[index] = best
            _count_credit(project_id, best, old, out)
            out.conversions.append(_conversion(project_id, user_key, best, settings))


def _first_credit(
    campaign: str, basis: str, conv_event: ConversionEvent, touches: list[Touch], goals: list[GoalMark]
) -> Credit | None:
    window = conv_event.window_ms
    for g in goals:
        if g.name != conv_event.name:
            continue
        latest: Touch | None = None
        for t in touches:
            if t.ts <= g.ts <= t.ts + window and (
                latest is None or (t.ts, t.event_id) > (latest.ts, latest.event_id)
            ):
                latest = t
        if latest is not None:
            return Credit(
                campaign,
                conv_event.name,
                basis,
                g.ts,
                g.event_id,
                g.device_id,
                latest.ts,
                latest.event_id,
                latest.message_id,
                latest.channel,
                g.amount,
                g.currency,
            )
    return None


def _better(new: Credit, old: Credit) -> bool:
    """True when ``new`` should replace ``old``: an earlier goal, or the same goal with a later touch."""
    if (new.goal_ts, new.goal_event_id) != (old.goal_ts, old.goal_event_id):
        return (new.goal_ts, new.goal_event_id) < (old.goal_ts, old.goal_event_id)
    return (new.touch_ts, new.touch_event_id) > (old.touch_ts, old.touch_event_id)


def _count_credit(project_id: str, new: Credit, old: Credit | None, out: Outcome) -> None:
    delta = out.campaigns.get(new.campaign)
    if delta is None:
        delta = out.campaigns[new.campaign] = CampaignDelta(project_id, new.campaign)
    delta.seen(new.goal_ts)
    if old is None:
        delta.add(conversions_field(new.event, new.basis))
        if new.currency is not None and new.amount is None:
            out.amount_missing.append(new.event)
    elif old.amount is not None and old.currency is not None:
        delta.add_revenue(old.event, old.basis, old.currency, Decimal(old.amount).copy_negate())
    if new.amount is not None and new.currency is not None:
        delta.add_revenue(new.event, new.basis, new.currency, Decimal(new.amount))


def _conversion(project_id: str, user_key: str, c: Credit, settings: ProjectSettings | None) -> Conversion:
    conv_event = settings.event(c.event) if settings is not None else None
    primary = conv_event is not None and conv_event.primary_basis(Channel(c.channel)).value == c.basis
    return Conversion(
        conversion_id=conversion_id(project_id, c.campaign, c.event, c.basis, user_key),
        project_id=project_id,
        campaign_id=c.campaign,
        message_id=c.message_id,
        channel=c.channel,
        event=c.event,
        basis=c.basis,
        primary=primary,
        user_key=user_key,
        device_id=c.device_id,
        touch_event_id=c.touch_event_id,
        touch_ts=c.touch_ts,
        goal_event_id=c.goal_event_id,
        goal_ts=c.goal_ts,
        amount=c.amount,
        currency=c.currency,
    )


def _evict(state: UserState, settings: ProjectSettings | None, clock_ms: int, grace_ms: int) -> None:
    """Drop what no event within grace can still need; remember how long the rest matters."""
    window = settings.max_window_ms if settings is not None else 0
    touch_horizon = clock_ms - grace_ms - window
    goal_horizon = clock_ms - grace_ms
    expires = max(state.expires_ts, clock_ms)
    if state.touches:
        if min(t.ts for t in state.touches) < touch_horizon:
            state.touches = [t for t in state.touches if t.ts >= touch_horizon]
        if state.touches:
            expires = max(expires, max(t.ts for t in state.touches) + window + grace_ms)
    if state.goals:
        if min(g.ts for g in state.goals) < goal_horizon:
            state.goals = [g for g in state.goals if g.ts >= goal_horizon]
        if state.goals:
            expires = max(expires, max(g.ts for g in state.goals) + grace_ms)
    if state.failed:  # same dedupe horizon as sends
        if min(f.ts for f in state.failed) < touch_horizon:
            state.failed = [f for f in state.failed if f.ts >= touch_horizon]
        if state.failed:
            expires = max(expires, max(f.ts for f in state.failed) + window + grace_ms)
    state.expires_ts = expires
