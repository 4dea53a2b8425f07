"""An independent reading of the identity rules (``/tmp/k/identity-spec.md``) over the whole event set.

It shares no code with ``attribution.core`` beyond the input structs, settings and (through the plain
reference) ``conversion_id``: ``owners`` resolves every event to the key it belongs to, and
``resolved`` rewrites the events so that the plain reference (``tests.support.reference``), which
knows nothing of identities, computes the identity-aware answer:

- an anonymous sent send, click or goal of device D whose owner U is not D gets ``user_id=U`` (its
  user key becomes U, its device stays D);
- a failed send stays as it is (failed sends are deduplicated per device of the event's own key);
- an anonymous web event of visitor D whose owner U is not D and which is a touch (``message_open``,
  ``message_click``) or a goal is replaced by what it means, spelled out: the touch and the goal with
  ``user_id=U``, a ``talk_message_fail`` as a failed send of D. Its visit and permission effects stay
  with D: compare subscriptions on the original events (``reference.subscriptions``), never on these.

Links: an event with a device (or visitor) D and a user id U != D links D to U at its ts; links are
ordered by (ts, user id), not event id (two links of one user at one ts are one). A web event the
engine dead-letters (a serve event without its campaign) links nothing, being never read.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from attribution.core.model import Channel, Click, Event, Goal, Identity, Send, WebEvent
from attribution.core.rules import ProjectSettings
from tests.support.reference import COUNTED_ONLY, SERVE_EVENTS

KIND = {Send: "sends", Click: "clicks", Goal: "goals", WebEvent: "web_events"}
# what the KARTE spec says a web event is: the reference's reading (not the engine's tables)
WEB_SERVES = set(SERVE_EVENTS)
WEB_COUNTED_ONLY = set(COUNTED_ONLY)

Key = tuple[str, str, str]  # (project, kind, event_id)
Link = tuple[int, str]  # (ts, user): two links of one user at one ts are one link


def kind_of(e: Event) -> str:
    return KIND[type(e)]


def device_key(e: Send | Click | Goal | WebEvent) -> str:
    return e.visitor_id if isinstance(e, WebEvent) else e.device_id


def readable(e: Event) -> bool:
    """False for what the engine never reads as an event (a serve web event without its campaign)."""
    if isinstance(e, Identity):
        return False
    return not (isinstance(e, WebEvent) and e.event in WEB_SERVES and e.campaign_id is None)


def identity_window(cfg: ProjectSettings | None, override: int | None = None) -> int:
    """W: the engine's identity_window_ms when set, else the project's longest window (0 without settings)."""
    if override is not None:
        return override
    if cfg is None:
        return 0
    windows = [ev.window_ms for ev in cfg.conversion_events] + [g.window_ms for g in cfg.campaign_goals]
    return max(windows, default=0)


def links(events: list[Event]) -> dict[tuple[str, str], list[Link]]:
    """Every link per (project, device), sorted by (ts, user)."""
    out: defaultdict[tuple[str, str], set[Link]] = defaultdict(set)
    for e in events:
        if not readable(e):
            continue
        assert not isinstance(e, Identity)
        d = device_key(e)
        if e.user_id is not None and e.user_id != d:
            out[(e.project_id, d)].add((e.ts, e.user_id))
    return {k: sorted(v) for k, v in out.items()}


def owner_at(device_links: list[Link], device: str, ts: int, window_ms: int) -> str:
    """The owner of an anonymous event of ``device`` at ``ts`` (rules 1, 2, 3 of the spec)."""
    at_or_before = [lk for lk in device_links if lk[0] <= ts]
    if at_or_before:
        return max(at_or_before)[1]  # the greatest (ts, user)
    after = [lk for lk in device_links if lk[0] > ts]
    if after:
        first = min(after)  # the smallest (ts, user)
        if first[0] - ts <= window_ms:
            return first[1]
    return device


def owners(
    events: list[Event], settings_by_project: dict[str, ProjectSettings], window_override: int | None = None
) -> dict[Key, str]:
    """(project, kind, event_id) -> the key the event belongs to: its user id when it has one, else
    the owner its device's links give it."""
    all_links = links(events)
    out: dict[Key, str] = {}
    for e in events:
        if isinstance(e, Identity):
            continue
        d = device_key(e)
        if e.user_id is not None:
            owner = e.user_id
        else:
            w = identity_window(settings_by_project.get(e.project_id), window_override)
            owner = owner_at(all_links.get((e.project_id, d), []), d, e.ts, w)
        out[(e.project_id, kind_of(e), e.event_id)] = owner
    return out


def _goal_names(cfg: ProjectSettings | None) -> set[str]:
    if cfg is None:
        return set()
    return {ev.name for ev in cfg.conversion_events} | {g.event for g in cfg.campaign_goals}


def _spelled_out(w: WebEvent, owner: str, cfg: ProjectSettings | None) -> list[Event]:
    """What an anonymous web event owned by ``owner`` (not its visitor) means for tallies and credits."""
    out: list[Event] = []
    if w.campaign_id is not None and w.event in ("message_open", "message_click", "talk_message_fail"):
        common: dict[str, Any] = {
            "event_id": w.event_id,
            "project_id": w.project_id,
            "campaign_id": w.campaign_id,
            "message_id": w.message_id or w.event_id,
            "channel": Channel.WEB_PUSH,
            "device_id": w.visitor_id,
            "ts": w.ts,
        }
        if w.event == "message_click":
            out.append(Click(**common, user_id=owner))
        elif w.event == "message_open":
            out.append(Send(**common, user_id=owner, status="sent"))
        else:
            out.append(Send(**common, user_id=None, status="failed"))  # failed: stays with the visitor
    if w.event in _goal_names(cfg):
        out.append(
            Goal(
                event_id=w.event_id,
                project_id=w.project_id,
                name=w.event,
                device_id=w.visitor_id,
                user_id=owner,
                ts=w.ts,
                properties=dict(w.values),
            )
        )
    return out


def resolved(
    events: list[Event], settings: dict[str, ProjectSettings], window_override: int | None = None
) -> list[Event]:
    """The events rewritten for the plain reference: see the module's docstring."""
    own = owners(events, settings, window_override)
    out: list[Event] = []
    for e in events:
        if isinstance(e, Identity):
            continue
        d = device_key(e)
        owner = own[(e.project_id, kind_of(e), e.event_id)]
        if e.user_id is not None or owner == d or not readable(e):
            out.append(e)
        elif isinstance(e, Send):
            out.append(e if e.status == "failed" else msgspec.structs.replace(e, user_id=owner))
        elif isinstance(e, Click | Goal):
            out.append(msgspec.structs.replace(e, user_id=owner))
        else:
            cfg = settings.get(e.project_id)
            moves = (e.campaign_id is not None and e.event in ("message_open", "message_click")) or (
                e.event in _goal_names(cfg)
            )
            if not moves:
                out.append(e)
                continue
            if e.campaign_id is not None and e.event in WEB_COUNTED_ONLY:
                # a counted-only serve event that is also a goal: its counter stays with the visitor,
                # its goal moves; the plain reference has no event that is only such a counter
                raise ValueError(f"{e.event} is a counted-only serve event and a goal: not expressible")
            out += _spelled_out(e, owner, cfg)
    return out


# --- comparing the engine (through the Run harness) with it --------------------------------------


def expected(
    events: list[Event], settings: ProjectSettings, window_override: int | None = None
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, dict[str, Any]]]:
    """The plain reference's (tallies, conversions) over the resolved events."""
    from tests.support.reference import reference

    project = {settings.project_id: settings}
    return reference(resolved(events, project, window_override), project)


def assert_identity_matches(
    run: Any, events: list[Event], settings: ProjectSettings, window_override: int | None = None
) -> None:
    """Every campaign tally and every latest conversion of ``run`` (a ``tests.support.harness.Run``)
    against the reference over the resolved events; subscriptions against the original events."""
    from tests.support.compare import assert_subscriptions_match, diff
    from tests.support.reference import normalise_conversion, normalise_tally

    project = settings.project_id
    want_tallies, want_convs = expected(events, settings, window_override)
    for (p, campaign), want in want_tallies.items():
        have = normalise_tally(run.tally(p, campaign))
        assert have == want, (campaign, diff(have, want))
    for campaign in {c for e in events if (c := getattr(e, "campaign_id", None)) is not None}:
        if (project, campaign) not in want_tallies:
            have = normalise_tally(run.tally(project, campaign))
            assert all(v == 0 for k, v in have.items() if k not in ("project_id", "campaign_id", "events"))
            assert all(e[b]["conversions"] == 0 for e in have["events"].values() for b in ("send", "click"))
    got = {cid: normalise_conversion(c) for cid, c in run.latest_conversions().items()}
    wanted = {cid: normalise_conversion(c) for cid, c in want_convs.items()}
    assert got == wanted, diff(got, wanted)
    assert_subscriptions_match(run, events, settings)
