"""Engine (through the Run harness) against the reference: tallies, conversions and subscriptions."""

from __future__ import annotations

from typing import Any

from attribution.core.model import Event
from attribution.core.rules import ProjectSettings
from tests.support.harness import Run
from tests.support.reference import (
    normalise_conversion,
    normalise_day,
    normalise_now,
    normalise_tally,
    reference,
    subscriptions,
    web_days,
)

NAMES = ("project_id", "campaign_id", "channels", "events")


def diff(have: Any, want: Any, path: str = "") -> list[str]:
    """The paths where two nested dicts differ, with both values."""
    if isinstance(have, dict) and isinstance(want, dict):
        out: list[str] = []
        for k in sorted(have.keys() | want.keys(), key=str):
            out += diff(have.get(k), want.get(k), f"{path}{k}.")
        return out
    return [] if have == want else [f"{path.rstrip('.')}: got {have!r}, want {want!r}"]


def assert_matches_reference(run: Run, events: list[Event], settings: ProjectSettings) -> None:
    """Every campaign tally, every conversion, the subscriptions now-record and every day record."""
    project = settings.project_id
    want_tallies, want_convs = reference(events, {project: settings})
    for (p, campaign), want in want_tallies.items():
        have = normalise_tally(run.tally(p, campaign))
        assert have == want, (campaign, diff(have, want))
    # a campaign the reference has no tally for (a visit carrying a campaign_id, a dead letter's) has
    # no counts in the engine either
    for campaign in {c for e in events if (c := getattr(e, "campaign_id", None)) is not None}:
        if (project, campaign) not in want_tallies:
            have = normalise_tally(run.tally(project, campaign))
            assert all(v == 0 for k, v in have.items() if k not in NAMES), (campaign, have)
            assert not have.get("channels"), (campaign, have)
            assert all(e[b]["conversions"] == 0 for e in have["events"].values() for b in ("send", "click"))
    got = {
        cid: normalise_conversion(c) for cid, c in run.latest_conversions().items() if not c.get("retracted")
    }
    wanted = {cid: normalise_conversion(c) for cid, c in want_convs.items()}
    assert got == wanted, diff(got, wanted)
    assert_subscriptions_match(run, events, settings)


def assert_subscriptions_match(run: Run, events: list[Event], settings: ProjectSettings) -> None:
    project = settings.project_id
    want = subscriptions(events, {project: settings}).get(project)
    if want is None:  # no web event: nothing to say (the engine's record, if any, is all zeros)
        now = run.subscriptions(project)
        assert (now["subscribed_now"], now["subscribed_recent_visitors"]) == (0, 0), now
        return
    have_now = normalise_now(run.subscriptions(project))
    assert have_now == want["now"], diff(have_now, want["now"])
    for day in sorted(web_days(events, settings.timezone) | set(want["days"])):
        have_day = normalise_day(run.subscription_day(project, day))
        want_day = want["days"].get(day, {"project_id": project, "day": day, "subscribe_sessions": 0})
        assert have_day == want_day, (day, diff(have_day, want_day))
