"""Crediting: which touch of a user's retained touches and goals a campaign's conversion names.

A goal credits a campaign on a basis when ``touch.ts <= goal.ts <= touch.ts + window_ms``. Each
(campaign, conversion event, basis) is credited once per user key, with the **first** qualifying
goal by event time (ties by ``event_id``); the conversion names the latest qualifying touch of that
campaign. Recomputed after every batch for what the batch can have changed
(``attribution.core.user``), so the result does not depend on arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import msgspec

from attribution.core.model import Channel, Identity
from attribution.core.outputs import Conversion, conversion_id
from attribution.core.rules import ConversionEvent, ProjectSettings
from attribution.core.tally import CampaignDelta, conversions_field
from attribution.core.user_state import CONVERTS, KINDS, Credit, GoalMark, Touch, UserState, Withdrawn


@dataclass(slots=True)
class Outcome:
    """What applying a user's events produced: outputs, counter deltas and per-topic counts."""

    changed: bool = False
    replayed: bool = False
    conversions: list[Conversion] = field(default_factory=list)
    campaigns: dict[str, CampaignDelta] = field(default_factory=dict)
    subscriptions: list[CampaignDelta] = field(default_factory=list)  # the project's and per day
    identity: list[Identity] = field(default_factory=list)  # links and routes for other partitions
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    amount_missing: list[str] = field(default_factory=list)

    def count(self, topic: str, outcome: str) -> None:
        k = (topic, outcome)
        self.outcomes[k] = self.outcomes.get(k, 0) + 1


def recredit(
    state: UserState,
    project_id: str,
    user_key: str,
    settings: ProjectSettings,
    out: Outcome,
    touches_before: int,
    goals_before: int,
    everything: bool = False,
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
    every = everything or state.settings_version != settings.version
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
        for conv_event in settings.events_for(campaign):
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
                if state.withdrawn:  # credited again: no longer a retraction to repeat
                    state.withdrawn = [w for w in state.withdrawn if _key(w.credit) != _key(best)]
            else:
                state.credits[index] = best
            _count_credit(project_id, best, old, out)
            out.conversions.append(conversion(project_id, user_key, best, settings))


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
            priced = conv_event.purchase is not None  # a campaign goal of the same name has no amount
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
                g.amount if priced else None,
                g.currency if priced else None,
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


def conversion(project_id: str, user_key: str, c: Credit, settings: ProjectSettings | None) -> Conversion:
    conv_event = settings.event(c.event, c.campaign) if settings is not None else None
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


def recompute_removed(
    state: UserState,
    project_id: str,
    user_key: str,
    settings: ProjectSettings | None,
    out: Outcome,
    removed: set[str],
    clock_ms: int,
) -> None:
    """Touches or goals left the state (they belong to another user now): every credit that named
    one is computed again from what is left, or retracted when nothing qualifies any more."""
    kept: list[Credit] = []
    goals = sorted(state.goals, key=lambda g: (g.ts, g.event_id))
    for old in state.credits:
        if old.touch_event_id not in removed and old.goal_event_id not in removed:
            kept.append(old)
            continue
        conv_event = settings.event(old.event, old.campaign) if settings is not None else None
        best = None
        if conv_event is not None:
            touches = [
                t
                for t in state.touches
                if CONVERTS[t.kind] and t.campaign == old.campaign and KINDS[t.kind][1] == old.basis
            ]
            best = _first_credit(old.campaign, old.basis, conv_event, touches, goals)
        delta = out.campaigns.get(old.campaign)
        if delta is None:
            delta = out.campaigns[old.campaign] = CampaignDelta(project_id, old.campaign)
        delta.seen(old.goal_ts)
        if old.amount is not None and old.currency is not None:
            delta.add_revenue(old.event, old.basis, old.currency, Decimal(old.amount).copy_negate())
        if best is None:
            delta.add(conversions_field(old.event, old.basis), -1)
            gone = conversion(project_id, user_key, old, settings)
            out.conversions.append(msgspec.structs.replace(gone, retracted=True))
            state.withdrawn = [w for w in state.withdrawn if _key(w.credit) != _key(old)]
            state.withdrawn.append(Withdrawn(old, clock_ms))
            continue
        kept.append(best)
        if best.amount is not None and best.currency is not None:
            delta.add_revenue(best.event, best.basis, best.currency, Decimal(best.amount))
        out.conversions.append(conversion(project_id, user_key, best, settings))
    state.credits = kept


def _key(c: Credit) -> tuple[str, str, str]:
    return (c.campaign, c.event, c.basis)
