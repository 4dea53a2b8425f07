"""An independent, deliberately simple attribution over the whole event set at once.

It shares no code with attribution.core beyond the input structs, settings and conversion_id: the
tests compare the streaming engine against it field by field.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from attribution.core.model import Click, Event, Goal, Send
from attribution.core.outputs import conversion_id
from attribution.core.rules import ProjectSettings

SEND_ONLY = {"kakao", "sms"}
CLICK_ONLY = {"in_app"}


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
    unique: dict[str, Event] = {}
    for e in events:
        unique.setdefault(f"{type(e).__name__}:{e.event_id}", e)
    # one send per (campaign, message, device) of a user key: the same device under another user key
    # (anonymous, then logged in) is another audience member
    sends: dict[tuple[str, str, str, str, str], Send] = {}
    failed: dict[tuple[str, str, str, str, str], Send] = {}
    copies: list[Send] = []
    clicks: list[Click] = []
    goals: list[Goal] = []
    for e in unique.values():
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
    for e in unique.values():
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
        for ev in cfg.conversion_events:
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
        for ev in cfg.conversion_events if cfg else []:
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
            "channels": sorted(t["ch"]),
            "events": per_event,
        }
    return out, convs


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
    out = dict(c)
    out["amount"] = None if c["amount"] is None else Decimal(c["amount"]).normalize()
    return out
