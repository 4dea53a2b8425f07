"""Web-push subscriptions per project: who has permission now, among recent visitors, and per day.

A user key's permission is the one said by its permission event with the greatest ``(ts,
event_id)``; its last visit is its newest web event. Per project, the counters hold:

- ``on``: users whose permission is on (``subscribed_now``);
- ``v|<day>|on`` and ``v|<day>|off``: users by (day of their last visit, permission). The users who
  visited in the last ``visitor_days`` with permission on are the sum of the ``on`` buckets of those
  days: no scan, and users drop out as the project clock (its newest web event) passes days, with no
  event of theirs;
- per day, ``sessions``: the sessions in which the user subscribed, counted once each, on the day of
  the session's earliest subscribe.

Days are local dates in the project's ``timezone``. A user moves between buckets only when its own
events change its last visit or permission; the user state remembers the bucket it is counted in,
so a correction is a move (-1, +1), never a second count.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from typing import Any

import msgspec

from attribution.core.rules import ProjectSettings
from attribution.core.tally import CampaignDelta
from attribution.core.user_state import PERM_OFF, PERM_ON, SubSession, UserState

UTC = zoneinfo.ZoneInfo("UTC")
DAY_MS = 24 * 3600 * 1000
SESSION_HOLD_MS = DAY_MS  # a session's subscribes are deduplicated over this long (plus grace)
#: a subscriber's state never expires; one who said no is kept while its bucket can still be read
FOREVER_MS = 100 * 365 * DAY_MS
NOW_ON = "on"
SESSIONS = "sessions"


@functools.lru_cache(maxsize=4096)
def _day(second: int, zone: zoneinfo.ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(second, zone).date().isoformat()


def day_of(ts_ms: int, zone: zoneinfo.ZoneInfo) -> str:
    """The local date of ``ts_ms`` in ``zone`` (ISO ``YYYY-MM-DD``). Zone offsets are whole seconds
    (Africa/Monrovia was -0:44:30 until 1972), so the second decides the day: cached per second."""
    return _day(ts_ms // 1000, zone)


def zone_of(settings: ProjectSettings | None) -> zoneinfo.ZoneInfo:
    return settings.zone if settings is not None else UTC


class Subscriptions:
    """The subscription counter deltas of one user's batch: one for the project, one per day."""

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self.deltas: dict[str, CampaignDelta] = {}  # '' the project's counters, else a day's

    def delta(self, day: str = "") -> CampaignDelta:
        d = self.deltas.get(day)
        if d is None:
            d = self.deltas[day] = CampaignDelta(self.project_id, "", day=day or None)
        return d


class SubscriptionsRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A record of the subscriptions topic: the project's (key ``project_id``: ``today`` ...
    ``subscribed_recent_visitors``) or one day's (key ``project_id:day``: ``day``,
    ``subscribe_sessions``), as ``now_snapshot`` / ``day_snapshot`` build them."""

    project_id: str
    version: int
    as_of_ts: int
    today: str | None = None
    timezone: str | None = None
    visitor_days: int | None = None
    subscribed_now: int | None = None
    subscribed_recent_visitors: int | None = None
    day: str | None = None
    subscribe_sessions: int | None = None


def set_permission(state: UserState, on: bool, ts: int, event_id: str) -> None:
    if (ts, event_id) > (state.perm_ts, state.perm_id):
        state.perm, state.perm_ts, state.perm_id = (PERM_ON if on else PERM_OFF), ts, event_id


def subscribed_in(
    state: UserState, session: str, ts: int, zone: zoneinfo.ZoneInfo, subs: Subscriptions
) -> bool:
    """A subscribe in ``session`` at ``ts``: the session counts once, on its earliest subscribe's day."""
    known = state.sessions.get(session)
    if known is not None and known.ts <= ts:
        return False
    day = day_of(ts, zone)
    state.sessions[session] = SubSession(ts, day)
    if known is None:
        subs.delta(day).add(SESSIONS)
        return True
    if known.day != day:  # an earlier subscribe of the session, on another day: the count moves
        subs.delta(known.day).add(SESSIONS, -1)
        subs.delta(day).add(SESSIONS)
    return True


def settle(state: UserState, was_on: bool, zone: zoneinfo.ZoneInfo, subs: Subscriptions) -> None:
    """After a batch of web events: move the user between the project's counters as its permission
    and last visit say."""
    on = state.perm == PERM_ON
    if on != was_on:
        subs.delta().add(NOW_ON, 1 if on else -1)
    bucket = ""
    if state.perm and state.visit_ts >= 0:
        bucket = f"{day_of(state.visit_ts, zone)}|{'on' if on else 'off'}"
    if bucket != state.bucket:
        if state.bucket:
            subs.delta().add(f"v|{state.bucket}", -1)
        if bucket:
            subs.delta().add(f"v|{bucket}")
        state.bucket = bucket


def hold_until(state: UserState, visitor_days_max: int) -> int:
    """How long (event time) the user's subscription state must be kept, -1 when it need not be."""
    if state.perm == PERM_ON:
        return state.visit_ts + FOREVER_MS
    if state.bucket:
        return state.visit_ts + visitor_days_max * DAY_MS
    return -1


def evict_sessions(state: UserState, horizon_ms: int) -> None:
    if state.sessions and min(s.ts for s in state.sessions.values()) < horizon_ms - SESSION_HOLD_MS:
        state.sessions = {k: s for k, s in state.sessions.items() if s.ts >= horizon_ms - SESSION_HOLD_MS}


def now_snapshot(project_id: str, fields: dict[str, str], settings: ProjectSettings | None) -> dict[str, Any]:
    """The project's subscriptions record from its counter hash, at the project clock."""
    zone = zone_of(settings)
    visitor_days = settings.visitor_days if settings is not None else 7
    clock = int(fields.get("as_of", 0))
    today = dt.date.fromisoformat(day_of(clock, zone))
    first = (today - dt.timedelta(days=visitor_days - 1)).isoformat()
    last = today.isoformat()
    recent = 0
    for name, value in fields.items():
        if name.startswith("v|") and name.endswith("|on") and first <= name[2:12] <= last:
            recent += int(value)
    return {
        "project_id": project_id,
        "version": int(fields.get("version", 0)),
        "as_of_ts": clock,
        "today": last,
        "timezone": settings.timezone if settings is not None else "UTC",
        "visitor_days": visitor_days,
        "subscribed_now": int(fields.get(NOW_ON, 0)),
        "subscribed_recent_visitors": recent,
    }


def day_snapshot(project_id: str, day: str, fields: dict[str, str]) -> dict[str, Any]:
    """One day's subscriptions record."""
    return {
        "project_id": project_id,
        "day": day,
        "version": int(fields.get("version", 0)),
        "as_of_ts": int(fields.get("as_of", 0)),
        "subscribe_sessions": int(fields.get(SESSIONS, 0)),
    }
