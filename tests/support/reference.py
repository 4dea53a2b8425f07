"""An independent, deliberately simple attribution over the whole event set at once.

It shares no code with attribution.core beyond the input structs, settings and conversion_id: the
tests compare the streaming engine against it field by field.

KARTE web events (``/tmp/k/karte-spec.md``, ``topics/web_events``) are read here from the raw settings
fields (``campaign_goals``, ``visitor_days``, ``timezone``), never through the settings' helpers:
a web event is rewritten into what it means (a send, a failed send, a click, a counted-only serve
event, a goal, a permission change, a visit) and then counted like the other events.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from attribution.core.model import Channel, Click, Event, Goal, Send, WebEvent
from attribution.core.outputs import conversion_id
from attribution.core.rules import ProjectSettings

SEND_ONLY = {"kakao", "sms"}
CLICK_ONLY = {"in_app"}

#: Web events that are a serve of a campaign: without a campaign_id they are dead letters.
SERVE_EVENTS = (
    "message_open",
    "talk_message_send",
    "talk_message_fail",
    "talk_message_open",
    "message_click",
    "messaeg_clicked",
    "message_link_click",
)
#: Serve events only counted (once per event_id): the tally count each one adds to.
COUNTED_ONLY = {
    "talk_message_send": "accepted",
    "talk_message_open": "displayed",
    "messaeg_clicked": "clicked_alias",
    "message_link_click": "link_clicks",
}
NEW_COUNTS = ("accepted", "displayed", "clicked_alias", "link_clicks")
SUBSCRIBE = "push_apps_subscribe"
UNSUBSCRIBE = "push_apps_unsubscribe"
IDENTIFY = "plugin_push_apps_identify"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def web_is_valid(e: WebEvent) -> bool:
    """False for a web event the engine must dead-letter (a serve event without its campaign)."""
    return e.event not in SERVE_EVENTS or e.campaign_id is not None


def _goal_names(cfg: ProjectSettings | None) -> set[str]:
    if cfg is None:
        return set()
    return {ev.name for ev in cfg.conversion_events} | {g.event for g in cfg.campaign_goals}


def _web_meaning(e: WebEvent, cfg: ProjectSettings | None) -> list[Send | Click | Goal]:
    """The send, failed send, click and/or goal a (valid) web event is; [] for the others."""
    out: list[Send | Click | Goal] = []
    if e.campaign_id is not None and e.event in ("message_open", "talk_message_fail", "message_click"):
        common: dict[str, Any] = {
            "event_id": e.event_id,
            "project_id": e.project_id,
            "campaign_id": e.campaign_id,
            "message_id": e.message_id or e.event_id,
            "channel": Channel.WEB_PUSH,
            "device_id": e.visitor_id,
            "user_id": e.user_id,
            "ts": e.ts,
        }
        if e.event == "message_click":
            out.append(Click(**common))
        else:
            out.append(Send(**common, status="sent" if e.event == "message_open" else "failed"))
    if e.event in _goal_names(cfg):
        out.append(
            Goal(
                event_id=e.event_id,
                project_id=e.project_id,
                name=e.event,
                device_id=e.visitor_id,
                user_id=e.user_id,
                ts=e.ts,
                properties=dict(e.values),
            )
        )
    return out


def _num(v: Any) -> Decimal | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, str):
        try:
            d = Decimal(v)
        except ArithmeticError:
            return None
        return d if d.is_finite() else None
    return None


def _allows(channel: str, basis: str) -> bool:
    if channel in SEND_ONLY:
        return basis == "send"
    if channel in CLICK_ONLY:
        return basis == "click"
    return True


def _primary(channel: str, basis_cfg: dict[str, Any]) -> str:
    if channel in SEND_ONLY:
        return "send"
    if channel in CLICK_ONLY:
        return "click"
    return str(basis_cfg.get(channel, "send"))


CHANNEL_ORDER = ("push", "web_push", "kakao", "sms", "in_app", "email")


def _rate_channel(campaign: str, seen: set[str], cfg: ProjectSettings | None) -> str | None:
    """The declared channel of the campaign, else the first channel seen in the contract's order."""
    if cfg is not None and campaign in cfg.campaign_channels:
        return cfg.campaign_channels[campaign]
    return next((c for c in CHANNEL_ORDER if c in seen), None)


def reference(
    events: list[Event], settings: dict[str, ProjectSettings]
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, dict[str, Any]]]:
    """(tallies by (project, campaign) without version/as_of_ts, conversions by conversion_id)."""
    unique: dict[tuple[str, str, str], Event] = {}
    for e in events:  # the engine dedupes by event_id per user key (its state)
        unique.setdefault((type(e).__name__, e.user_key, e.event_id), e)
    counted: defaultdict[tuple[str, str], dict[str, set[tuple[str, str]]]] = defaultdict(
        lambda: {name: set() for name in NEW_COUNTS}
    )
    flat: list[Send | Click | Goal] = []
    for e in unique.values():
        if isinstance(e, Send | Click | Goal):
            flat.append(e)
            continue
        if not isinstance(e, WebEvent) or not web_is_valid(e):  # identity records are no input here
            continue
        if e.campaign_id is not None and e.event in COUNTED_ONLY:
            counted[(e.project_id, e.campaign_id)][COUNTED_ONLY[e.event]].add((e.user_key, e.event_id))
        flat += _web_meaning(e, settings.get(e.project_id))
    # one send per (campaign, message, device) of a user key: the same device under another user key
    # (anonymous, then logged in) is another audience member
    sends: dict[tuple[str, str, str, str, str], Send] = {}
    failed: dict[tuple[str, str, str, str, str], Send] = {}
    copies: list[Send] = []
    clicks: list[Click] = []
    goals: list[Goal] = []
    for e in flat:
        if isinstance(e, Send):
            k = (e.project_id, e.campaign_id, e.message_id, e.device_id, e.user_key)
            if e.status == "failed":
                failed.setdefault(k, e)
            else:
                sends.setdefault(k, e)  # copies of one message to one device count once...
                copies.append(e)  # ...but each copy is a touch
        elif isinstance(e, Click):
            clicks.append(e)
        else:
            goals.append(e)

    tallies: defaultdict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"sends": 0, "send_users": set(), "failed": 0, "clicks": 0, "click_users": set(), "ch": set()}
    )
    # every channel a campaign's sends (sent or failed, copies too) and clicks came on
    for e in flat:
        if not isinstance(e, Goal):
            tallies[(e.project_id, e.campaign_id)]["ch"].add(e.channel.value)
    touches: dict[tuple[str, str, str, str], list[Send | Click]] = defaultdict(list)
    for s in sends.values():
        t = tallies[(s.project_id, s.campaign_id)]
        t["sends"] += 1
        t["send_users"].add(s.user_key)
    for s in copies:
        touches[(s.project_id, s.campaign_id, "send", s.user_key)].append(s)
    for p, c, _, _, _ in failed:
        tallies[(p, c)]["failed"] += 1
    for ck in clicks:
        t = tallies[(ck.project_id, ck.campaign_id)]
        t["clicks"] += 1
        t["click_users"].add(ck.user_key)
        touches[(ck.project_id, ck.campaign_id, "click", ck.user_key)].append(ck)
    for (p, c), sets in counted.items():
        # a KARTE serve of any kind is a web push one (the spec's mapping: channel web_push)
        tallies[(p, c)]["ch"].add(Channel.WEB_PUSH.value)
        for name, members in sets.items():
            tallies[(p, c)][name] = len(members)

    convs: dict[str, dict[str, Any]] = {}
    counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    revenue: dict[tuple[str, str, str, str], dict[str, Decimal]] = defaultdict(dict)
    goals_of: defaultdict[tuple[str, str, str], list[Goal]] = defaultdict(list)
    for g in goals:
        goals_of[(g.project_id, g.user_key, g.name)].append(g)
    for (project, campaign, basis, user), all_touches in touches.items():
        cfg = settings.get(project)
        if cfg is None:
            continue
        ts_list = [t for t in all_touches if _allows(t.channel.value, basis)]
        for ev in _events_of(cfg, campaign):
            candidates = sorted(goals_of[(project, user, ev.name)], key=lambda g: (g.ts, g.event_id))
            for g in candidates:
                ok = [t for t in ts_list if t.ts <= g.ts <= t.ts + ev.window_ms]
                if not ok:
                    continue
                touch = max(ok, key=lambda t: (t.ts, t.event_id))
                amount = None
                currency = None
                if ev.purchase is not None:
                    currency = ev.purchase.currency
                    a = _num(g.properties.get(ev.purchase.amount_key))
                    q = (
                        _num(g.properties.get(ev.purchase.quantity_key))
                        if ev.purchase.quantity_key
                        else Decimal(1)
                    )
                    # the contract: an amount >= 0 (zero included) times a whole quantity >= 1;
                    # anything else is a missing amount
                    if a is not None and a >= 0 and q is not None and q >= 1 and q % 1 == 0:
                        amount = a * q
                cid = conversion_id(project, campaign, ev.name, basis, user)
                convs[cid] = {
                    "conversion_id": cid,
                    "project_id": project,
                    "campaign_id": campaign,
                    "message_id": touch.message_id,
                    "channel": touch.channel.value,
                    "event": ev.name,
                    "basis": basis,
                    "primary": _primary(touch.channel.value, dict(ev.basis)) == basis,
                    "user_key": user,
                    "device_id": g.device_id,
                    "touch_event_id": touch.event_id,
                    "touch_ts": touch.ts,
                    "goal_event_id": g.event_id,
                    "goal_ts": g.ts,
                    "amount": None if amount is None else amount,
                    "currency": currency,
                }
                counts[(project, campaign, ev.name, basis)] += 1
                if amount is not None and currency is not None:
                    r = revenue[(project, campaign, ev.name, basis)]
                    r[currency] = r.get(currency, Decimal(0)) + amount
                break

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (project, campaign), t in tallies.items():
        cfg = settings.get(project)
        per_event: dict[str, Any] = {}
        rate_channel = _rate_channel(campaign, t["ch"], cfg)
        for ev in _events_of(cfg, campaign) if cfg else []:
            primary = _primary(rate_channel, dict(ev.basis)) if rate_channel else "send"
            per: dict[str, dict[str, Any]] = {
                b: {
                    "conversions": counts[(project, campaign, ev.name, b)],
                    "revenue": {
                        c: v.normalize()
                        for c, v in revenue[(project, campaign, ev.name, b)].items()
                        if v != 0  # a zero total is not listed (the engine's rule too)
                    },
                }
                for b in ("send", "click")
            }
            reached = len(t["send_users"] if primary == "send" else t["click_users"])
            per_event[ev.name] = {
                "primary": primary,
                **per,
                "rate": round(per[primary]["conversions"] / reached, 6) if reached else 0.0,
            }
        out[(project, campaign)] = {
            "project_id": project,
            "campaign_id": campaign,
            "sends": t["sends"],
            "send_users": len(t["send_users"]),
            "failed": t["failed"],
            "clicks": t["clicks"],
            "click_users": len(t["click_users"]),
            **{name: t.get(name, 0) for name in NEW_COUNTS},
            "channels": sorted(t["ch"]),
            "events": per_event,
        }
    return out, convs


class _Measured:
    """A conversion event as measured for one campaign (the project's, or the campaign's own goal)."""

    def __init__(self, name: str, window_ms: int, basis: dict[str, Any], purchase: Any) -> None:
        self.name, self.window_ms, self.basis, self.purchase = name, window_ms, basis, purchase


def _events_of(cfg: ProjectSettings, campaign: str) -> list[_Measured]:
    """The project's conversion events, a campaign goal of the same name replacing one, then the
    campaign's own goals (both bases, no basis setting, no amount)."""
    own = [g for g in cfg.campaign_goals if g.campaign_id == campaign]
    names = {g.event for g in own}
    return [
        *(
            _Measured(ev.name, ev.window_ms, dict(ev.basis), ev.purchase)
            for ev in cfg.conversion_events
            if ev.name not in names
        ),
        *(_Measured(g.event, g.window_ms, {}, None) for g in own),
    ]


def local_day(ts: int, timezone: str) -> date:
    """The calendar date of ``ts`` (ms since the epoch) in ``timezone``."""
    return (_EPOCH + timedelta(milliseconds=ts)).astimezone(ZoneInfo(timezone)).date()


def subscriptions(events: list[Event], settings: dict[str, ProjectSettings]) -> dict[str, dict[str, Any]]:
    """Per project with web events: {"now": the now record, "days": {day: day record}} without
    ``version`` (and without ``as_of_ts`` in day records); days with no subscribe session are absent."""
    unique: dict[tuple[str, str], WebEvent] = {}
    for e in events:
        if isinstance(e, WebEvent) and web_is_valid(e):
            unique.setdefault((e.user_key, e.event_id), e)
    by_project: defaultdict[str, list[WebEvent]] = defaultdict(list)
    for w in unique.values():
        by_project[w.project_id].append(w)
    out: dict[str, dict[str, Any]] = {}
    for project, web in by_project.items():
        cfg = settings.get(project)
        tz = cfg.timezone if cfg else "UTC"
        visitor_days = cfg.visitor_days if cfg else 7
        clock = max(w.ts for w in web)
        today = local_day(clock, tz)
        last_visit: dict[str, int] = {}
        permission: dict[str, tuple[int, str, bool]] = {}
        first_subscribe: dict[tuple[str, str], int] = {}
        for w in web:
            user = w.user_key
            last_visit[user] = max(last_visit.get(user, w.ts), w.ts)
            on: bool | None = None
            if w.event == SUBSCRIBE:
                on = True
                session = (user, w.session_id)
                first_subscribe[session] = min(first_subscribe.get(session, w.ts), w.ts)
            elif w.event == UNSUBSCRIBE:
                on = False
            elif w.event == IDENTIFY and isinstance(w.values.get("subscribed"), bool):
                on = bool(w.values["subscribed"])
            if on is not None and (w.ts, w.event_id) > permission.get(user, (-1, "", False))[:2]:
                permission[user] = (w.ts, w.event_id, on)
        subscribed = [u for u, (_, _, on) in permission.items() if on]
        recent = [
            u
            for u in subscribed
            if today - timedelta(days=visitor_days) < local_day(last_visit[u], tz) <= today
        ]
        sessions: defaultdict[str, int] = defaultdict(int)
        for ts in first_subscribe.values():
            sessions[local_day(ts, tz).isoformat()] += 1
        out[project] = {
            "now": {
                "project_id": project,
                "as_of_ts": clock,
                "today": today.isoformat(),
                "timezone": tz,
                "visitor_days": visitor_days,
                "subscribed_now": len(subscribed),
                "subscribed_recent_visitors": len(recent),
            },
            "days": {
                day: {"project_id": project, "day": day, "subscribe_sessions": n}
                for day, n in sorted(sessions.items())
            },
        }
    return out


def web_days(events: list[Event], timezone: str) -> set[str]:
    """Every local day holding a web event: where the engine may have a day record."""
    return {local_day(e.ts, timezone).isoformat() for e in events if isinstance(e, WebEvent)}


def normalise_now(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A now record of the subscriptions topic without its version."""
    return {k: v for k, v in snapshot.items() if k != "version"}


def normalise_day(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A day record of the subscriptions topic without its version and as_of_ts (when it was published)."""
    return {k: v for k, v in snapshot.items() if k not in ("version", "as_of_ts")}


def normalise_tally(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A tally snapshot without the fields that depend on processing (version, as_of_ts), money as Decimal."""
    s = {k: v for k, v in snapshot.items() if k not in ("version", "as_of_ts")}
    s["events"] = {
        name: {
            **e,
            **{
                b: {
                    "conversions": e[b]["conversions"],
                    "revenue": {c: Decimal(v).normalize() for c, v in e[b]["revenue"].items()},
                }
                for b in ("send", "click")
            },
        }
        for name, e in snapshot["events"].items()
    }
    return s


def normalise_conversion(c: dict[str, Any]) -> dict[str, Any]:
    """A conversion record with its amount as Decimal; ``retracted`` only when true (a record that
    withdraws a conversion is never one the reference credits)."""
    out = dict(c)
    if not out.get("retracted", True):
        del out["retracted"]
    out["amount"] = None if c["amount"] is None else Decimal(c["amount"]).normalize()
    return out
