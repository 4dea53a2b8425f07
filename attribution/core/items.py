"""What one touch or goal adds to a user's state and counters, and what taking it away (it moved to
another user: ``attribution.core.identity``) takes back.

- ``sends`` counts sent messages once per (campaign, message, device) of a user key: another copy of
  one message to one device is a touch of its own but not counted again;
- ``send_users`` / ``click_users`` count a user once per campaign: the ``reached`` bits. A bit stays
  set when the touches that set it are evicted (it is *sealed*), so removing a later touch never
  un-reaches a user that an evicted one reached.
"""

from __future__ import annotations

from collections.abc import Callable

from attribution.core.model import Basis, Click, Goal, Send
from attribution.core.money import fmt, purchase_amount
from attribution.core.rules import ProjectSettings
from attribution.core.tally import CampaignDelta
from attribution.core.user_state import IS_SEND, KIND_OF, KINDS, Failed, GoalMark, Touch, UserState

_SEND = Basis.SEND.value
_CLICK = Basis.CLICK.value
#: reached bits per campaign: reached on the send / click basis, and the same bits sealed (<< 2)
REACHED_BIT = {_SEND: 1, _CLICK: 2}
SEALED_SHIFT = 2
_USERS = {_SEND: "send_users", _CLICK: "click_users"}
DeltaOf = Callable[[str], CampaignDelta]  # a campaign's delta in the batch


def delta_for(deltas: dict[str, CampaignDelta], project_id: str, campaign: str) -> CampaignDelta:
    d = deltas.get(campaign)
    if d is None:
        d = deltas[campaign] = CampaignDelta(project_id, campaign)
    return d


def send_touch(ev: Send) -> Touch:
    return Touch(ev.campaign_id, KIND_OF[ev.channel, _SEND], ev.ts, ev.event_id, ev.message_id, ev.device_id)


def click_touch(ev: Click) -> Touch:
    return Touch(ev.campaign_id, KIND_OF[ev.channel, _CLICK], ev.ts, ev.event_id, ev.message_id, ev.device_id)


def goal_mark(ev: Goal, settings: ProjectSettings | None) -> GoalMark | None:
    """The goal as kept in a state (its amount read now), or None when the project measures no such
    goal."""
    if settings is None or ev.name not in settings.goal_names:
        return None
    conv_event = settings.event(ev.name)  # the project's event reads the amount; a campaign goal has none
    amount: str | None = None
    currency: str | None = None
    if conv_event is not None and conv_event.purchase is not None:
        value = purchase_amount(conv_event.purchase, ev.properties)
        currency = conv_event.purchase.currency
        amount = fmt(value) if value is not None else None
    return GoalMark(ev.name, ev.ts, ev.event_id, ev.device_id, amount, currency)


def add_failed(state: UserState, ev: Send, delta: CampaignDelta) -> str:
    if any(
        f.campaign == ev.campaign_id and f.message_id == ev.message_id and f.device_id == ev.device_id
        for f in state.failed
    ):
        return "duplicate"
    state.failed.append(Failed(ev.campaign_id, ev.message_id, ev.device_id, ev.ts))
    delta.add("failed")
    delta.seen(ev.ts)
    return "applied"


def add_touch(state: UserState, t: Touch, delta: CampaignDelta) -> str:
    basis = KINDS[t.kind][1]
    if basis == _CLICK:
        if any(o.event_id == t.event_id and not IS_SEND[o.kind] for o in state.touches):
            return "duplicate"
        state.touches.append(t)
        delta.add("clicks")
        _reach(state, t.campaign, _CLICK, delta)
        delta.seen(t.ts)
        return "applied"
    copy = False
    for o in state.touches:
        if IS_SEND[o.kind]:
            if o.event_id == t.event_id:
                return "duplicate"
            if o.campaign == t.campaign and o.message_id == t.message_id and o.device_id == t.device_id:
                copy = True
    # another copy of one message to one device: counted once, but every copy is a touch, so that
    # arrival order cannot decide which copy's time the goal is measured against
    state.touches.append(t)
    if copy:
        return "duplicate"
    delta.add("sends")
    _reach(state, t.campaign, _SEND, delta)
    delta.seen(t.ts)
    return "applied"


def add_goal(state: UserState, g: GoalMark) -> str:
    if any(o.event_id == g.event_id for o in state.goals):
        return "duplicate"
    state.goals.append(g)
    return "applied"


def _reach(state: UserState, campaign: str, basis: str, delta: CampaignDelta) -> None:
    bits = state.reached.get(campaign, 0)
    bit = REACHED_BIT[basis]
    if not bits & bit:
        state.reached[campaign] = bits | bit
        delta.add(_USERS[basis])


def remove_touch(state: UserState, event_id: str, is_send: bool, delta_of: DeltaOf) -> Touch | None:
    """Take touch ``event_id`` out of the state and its counts back; None when it is not there."""
    found = next((t for t in state.touches if t.event_id == event_id and IS_SEND[t.kind] == is_send), None)
    if found is None:
        return None
    state.touches.remove(found)
    basis = KINDS[found.kind][1]
    delta = delta_of(found.campaign)
    delta.seen(found.ts)
    rest = [o for o in state.touches if o.campaign == found.campaign and KINDS[o.kind][1] == basis]
    if is_send:
        if not any(o.message_id == found.message_id and o.device_id == found.device_id for o in rest):
            delta.add("sends", -1)
    else:
        delta.add("clicks", -1)
    bits = state.reached.get(found.campaign, 0)
    bit = REACHED_BIT[basis]
    if not rest and bits & bit and not bits & (bit << SEALED_SHIFT):
        state.reached[found.campaign] = bits & ~bit
        delta.add(_USERS[basis], -1)
    return found


def remove_goal(state: UserState, event_id: str) -> GoalMark | None:
    found = next((g for g in state.goals if g.event_id == event_id), None)
    if found is not None:
        state.goals.remove(found)
    return found


def seal(state: UserState, evicted: list[Touch]) -> None:
    """Touches leave the state: the reach they gave is kept for good."""
    for t in evicted:
        bits = state.reached.get(t.campaign, 0)
        sealed = REACHED_BIT[KINDS[t.kind][1]] << SEALED_SHIFT
        if not bits & sealed:
            state.reached[t.campaign] = bits | sealed
