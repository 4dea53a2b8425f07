"""Identities: a device or visitor becomes a user, and its anonymous touches and goals follow.

An event with a device or visitor id D and a user id U (D != U) links D to U from its ``ts``. An
anonymous event of D at ``t`` belongs to (1) the user of D's latest link at or before ``t``, else
(2) the user of D's first link after ``t`` if it comes within the identity window, else (3) D.

D's and U's states live on different input partitions, so nothing here writes another user's state:
the worker of U's partition sends a ``link`` record keyed by D; the worker of D's partition keeps D's
links, resolves D's anonymous touches and goals, keeps those that belong to D in D's own state and
sends the others as ``route`` records keyed by their owner (and, when a new link moves one, a
retraction to the owner it had). See "Identities" in the README for why it is exact.

Links are ties broken by user id. While a device is linked to one user only, that user's later links
change no answer, so U sends only its earliest link of each device. When a second user's link
reaches D, D's worker sends ``share`` to every user linked to D: from then on they send every link
of D, starting with all they kept (the last one before the retention horizon, and every one after).
"""

from __future__ import annotations

import bisect
import hashlib

from attribution.core import items
from attribution.core.model import Click, Event, Goal, Identity, Send, WebEvent
from attribution.core.user_state import IS_SEND, KIND_OF, KINDS, GoalMark, Lent, Linked, Touch, UserState

DAY_MS = 24 * 3600 * 1000
#: a device's last link decides its later anonymous events for this long (event time)
LINK_HOLD_MS = 90 * DAY_MS


def device_of(ev: Event) -> str | None:
    if isinstance(ev, WebEvent):
        return ev.visitor_id
    if isinstance(ev, Identity):
        return None
    return ev.device_id


def link_of(ev: Send | Click | Goal | WebEvent) -> tuple[str, str] | None:
    """(device, user) when ``ev`` links them, else None (no user id, or the same id twice)."""
    device = ev.visitor_id if isinstance(ev, WebEvent) else ev.device_id
    if ev.user_id is None or ev.user_id == device:
        return None
    return device, ev.user_id


def _short(text: str) -> str:
    """A fixed-length stand-in for an id inside another id (which must stay within 256 characters)."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def link_record(project_id: str, device: str, user: str, ts: int) -> Identity:
    return Identity(
        kind="link", project_id=project_id, to=device, ts=ts, event_id=f"{_short(user)}@{ts}", user_id=user
    )


def add_link(state: UserState, rec: Identity) -> bool:
    """Keep the link ``rec`` (sorted by (ts, user)); False when it is known already."""
    user = rec.user_id
    if user is None or any(lk.ts == rec.ts and lk.user == user for lk in state.links):
        return False
    state.links.append(Linked(rec.ts, user))
    state.links.sort(key=lambda lk: (lk.ts, lk.user))
    return True


def resolve(links: list[Linked], ts: int, window_ms: int) -> str | None:
    """The user an anonymous event at ``ts`` belongs to, or None for the device itself."""
    before: Linked | None = None
    for lk in links:
        if lk.ts <= ts:
            before = lk
        else:
            if before is None and lk.ts - ts <= window_ms:
                return lk.user
            break
    return before.user if before is not None else None


def evict_links(state: UserState, horizon_ms: int) -> None:
    """Drop the links no event within grace can need: all before the horizon but the last one (as a
    device), and the same per device (as a user)."""
    old = sum(1 for lk in state.links if lk.ts < horizon_ms)
    if old > 1:
        state.links = state.links[old - 1 :]
    for device, times in state.links_out.items():
        old = sum(1 for t in times if t < horizon_ms)
        if old > 1:
            state.links_out[device] = times[old - 1 :]


def route_record(project_id: str, owner: str, item: Touch | GoalMark, retracted: bool = False) -> Identity:
    if isinstance(item, Touch):
        channel, basis = KINDS[item.kind]
        return Identity(
            kind="route",
            project_id=project_id,
            to=owner,
            ts=item.ts,
            event_id=item.event_id,
            retracted=retracted,
            item="send" if basis == "send" else "click",
            campaign_id=item.campaign,
            message_id=item.message_id,
            channel=channel,  # type: ignore[arg-type]  # msgspec stores the enum's value
            device_id=item.device_id,
        )
    return Identity(
        kind="route",
        project_id=project_id,
        to=owner,
        ts=item.ts,
        event_id=item.event_id,
        retracted=retracted,
        item="goal",
        name=item.name,
        device_id=item.device_id,
        amount=item.amount,
        currency=item.currency,
    )


def item_of(rec: Identity) -> Touch | GoalMark:
    """The touch or goal a route record carries."""
    device = rec.device_id or rec.to
    if rec.item == "goal":
        return GoalMark(rec.name or "", rec.ts, rec.event_id, device, rec.amount, rec.currency)
    kind = KIND_OF[(rec.channel or "push", rec.item or "send")]
    return Touch(rec.campaign_id or "", kind, rec.ts, rec.event_id, rec.message_id or "", device)


class Routing:
    """One user's batch: routes its anonymous items, takes in routed ones, and remembers the event
    ids it removed (their credits are recomputed)."""

    def __init__(
        self, project_id: str, key: str, window_ms: int, delta_of: items.DeltaOf, records: list[Identity]
    ) -> None:
        self.project_id = project_id
        self.key = key
        self.window_ms = window_ms
        self.delta_of = delta_of
        self.records = records
        self.removed: set[str] = set()
        self.at = ""  # the position of the record being applied (what a lent item records)

    def link(self, state: UserState, ev: Send | Click | Goal | WebEvent, replayed: bool = False) -> None:
        """``ev`` of this user was seen on a device: send the link if the device's worker needs it
        (again, for a re-delivered event that may have been sent before the crash)."""
        pair = link_of(ev)
        if pair is None:
            return
        device, user = pair
        times = state.links_out.get(device)
        if replayed:
            if times is not None and (device in state.shared or ev.ts <= times[0]):
                self.records.append(link_record(self.project_id, device, user, ev.ts))
            return
        if times is None:
            state.links_out[device] = [ev.ts]
            self._send_link(state, device, user, ev.ts)
            return
        at = bisect.bisect_left(times, ev.ts)  # once per event of a logged-in user: no sort
        if at < len(times) and times[at] == ev.ts:
            return
        times.insert(at, ev.ts)
        # an exclusive device's answers need only the earliest link; a link long after the last one
        # sent keeps the device's state (and so its links) alive while the user still uses it
        refresh = ev.ts - state.links_sent.get(device, ev.ts) > LINK_HOLD_MS // 2
        if device in state.shared or ev.ts == times[0] or refresh:
            self._send_link(state, device, user, ev.ts)

    def _send_link(self, state: UserState, device: str, user: str, ts: int) -> None:
        state.links_sent[device] = max(state.links_sent.get(device, ts), ts)
        self.records.append(link_record(self.project_id, device, user, ts))

    def share(self, state: UserState, rec: Identity, replayed: bool = False) -> str:
        """Device ``rec.device_id`` is linked to other users too: send every link kept for it."""
        device = rec.device_id or ""
        if device not in state.shared:
            state.shared.append(device)
        elif not replayed:
            return "duplicate"
        for ts in state.links_out.get(device, []):
            self.records.append(link_record(self.project_id, device, self.key, ts))
        return "applied"

    def linked(self, state: UserState, rec: Identity) -> str:
        """A link of this device: kept; a device linked to a second user asks every user for all."""
        users = {lk.user for lk in state.links}
        if not add_link(state, rec):
            return "duplicate"
        if rec.user_id not in users and users:
            told = users | {rec.user_id or ""} if len(users) == 1 else {rec.user_id or ""}
            for user in sorted(told):
                self.records.append(self._share(user, rec.ts))
        return "applied"

    def reshare(self, state: UserState) -> None:
        """A re-delivered batch: the share requests may not have been sent."""
        users = sorted({lk.user for lk in state.links})
        if len(users) > 1:
            for user in users:
                self.records.append(self._share(user, state.links[-1].ts))

    def _share(self, user: str, ts: int) -> Identity:
        return Identity(
            kind="share",
            project_id=self.project_id,
            to=user,
            ts=ts,
            event_id=f"share:{_short(self.key)}",
            device_id=self.key,
        )

    def take(self, state: UserState, item: Touch | GoalMark) -> str:
        """An anonymous touch or goal of this device: kept here, or routed to the user it belongs to."""
        owner = resolve(state.links, item.ts, self.window_ms)
        if owner is None or owner == self.key:
            return self._add(state, item)
        if any(lt.event_id == item.event_id and _same_kind(lt, item) for lt in state.lent):
            return "duplicate"
        state.lent.append(_lent(owner, [], item, self.at))
        self.records.append(route_record(self.project_id, owner, item))
        return "routed"

    def receive(self, state: UserState, rec: Identity) -> str:
        """A routed touch or goal (or its retraction) for this user."""
        item = item_of(rec)
        if not rec.retracted:
            return self._add(state, item)
        if isinstance(item, Touch):
            gone = items.remove_touch(state, item.event_id, IS_SEND[item.kind], self.delta_of)
        else:
            gone = items.remove_goal(state, item.event_id)  # type: ignore[assignment]
        if gone is None:
            return "duplicate"
        self.removed.add(item.event_id)
        return "retracted"

    def reresolve(self, state: UserState, horizon_ms: int) -> None:
        """New links: move every anonymous item (not older than ``horizon_ms``) to its owner now."""
        handled: set[tuple[str, bool]] = set()  # (event id, is a touch): a web event can be both
        for i, lent in enumerate(state.lent):
            item = lent.touch or lent.goal
            if item is None or lent.owner == self.key or item.ts < horizon_ms:
                continue
            owner = resolve(state.links, item.ts, self.window_ms) or self.key
            if owner == lent.owner:
                continue
            self.records.append(route_record(self.project_id, lent.owner, item, retracted=True))
            if owner == self.key:
                self._add(state, item)
                handled.add((item.event_id, isinstance(item, Touch)))
            else:
                self.records.append(route_record(self.project_id, owner, item))
            state.lent[i] = _lent(owner, _with(lent.was, lent.owner), item, self.at)
        pinned = set(state.pinned)  # events with a user id (the device's own): never moved
        mine: list[Touch | GoalMark] = [
            *(t for t in state.touches if t.device_id == self.key and t.ts >= horizon_ms),
            *(g for g in state.goals if g.device_id == self.key and g.ts >= horizon_ms),
        ]
        mine = [item for item in mine if item.event_id not in pinned]
        for item in mine:
            if (item.event_id, isinstance(item, Touch)) in handled:
                continue
            user = resolve(state.links, item.ts, self.window_ms)
            if user is None or user == self.key:
                continue
            if isinstance(item, Touch):
                items.remove_touch(state, item.event_id, IS_SEND[item.kind], self.delta_of)
            else:
                items.remove_goal(state, item.event_id)
            self.removed.add(item.event_id)
            self.records.append(route_record(self.project_id, user, item))
            at = next(
                (
                    i
                    for i, lt in enumerate(state.lent)
                    if lt.event_id == item.event_id and _same_kind(lt, item)
                ),
                None,
            )
            if at is None:
                state.lent.append(_lent(user, [self.key], item, self.at))
            else:
                state.lent[at] = _lent(user, _with(state.lent[at].was, self.key), item, self.at)

    def replay(self, state: UserState, replayed: set[str]) -> None:
        """A re-delivered batch: say again where the lent items its records moved are (the first
        time may not have reached Kafka); adding twice or removing what is absent changes nothing at
        the owner. Only those: an owner may have evicted an older one, and would count it again."""
        for lent in state.lent:
            item = lent.touch or lent.goal
            if item is None or lent.at not in replayed:
                continue
            if lent.owner != self.key:
                self.records.append(route_record(self.project_id, lent.owner, item))
            for was in lent.was:
                if was not in (lent.owner, self.key):
                    self.records.append(route_record(self.project_id, was, item, retracted=True))

    def _add(self, state: UserState, item: Touch | GoalMark) -> str:
        if isinstance(item, Touch):
            return items.add_touch(state, item, self.delta_of(item.campaign))
        return items.add_goal(state, item)


def evict_lent(state: UserState, horizon_ms: int) -> None:
    if state.lent and min(lt.ts for lt in state.lent) < horizon_ms:
        state.lent = [lt for lt in state.lent if lt.ts >= horizon_ms]


def _lent(owner: str, was: list[str], item: Touch | GoalMark, at: str) -> Lent:
    if isinstance(item, Touch):
        return Lent(owner, was, touch=item, at=at)
    return Lent(owner, was, goal=item, at=at)


def _with(was: list[str], owner: str) -> list[str]:
    return was if owner in was else [*was, owner]


def _same_kind(lent: Lent, item: Touch | GoalMark) -> bool:
    if isinstance(item, Touch):
        return lent.touch is not None and IS_SEND[lent.touch.kind] == IS_SEND[item.kind]
    return lent.goal is not None
