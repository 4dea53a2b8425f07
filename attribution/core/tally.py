"""Per-campaign tallies: the deltas one batch makes, and the absolute snapshot users read.

Counters live in Redis as a flat hash (see ``attribution.state.keys``); the field names are built
here so that the core owns their meaning and the state layer only adds numbers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from attribution.core.model import Basis, Channel
from attribution.core.money import add, fmt
from attribution.core.rules import ProjectSettings

COUNTS = (
    "sends",
    "send_users",
    "failed",
    "clicks",
    "click_users",
    # KARTE web push (attribution.core.web): counted, never sends nor clicks
    "accepted",
    "displayed",
    "clicked_alias",
    "link_clicks",
)


def conversions_field(event: str, basis: str) -> str:
    return f"c|{event}|{basis}"


def revenue_field(event: str, basis: str, currency: str) -> str:
    return f"r|{event}|{basis}|{currency}"


def channel_field(channel: str) -> str:
    """Set (to 1) once a send or click of the campaign came on ``channel``: the set of channels seen."""
    return f"ch|{channel}"


_CHANNEL_FIELDS = {channel_field(c.value): c for c in Channel}
#: written before the channel set existed: the first channel seen (one more channel of the set)
LEGACY_CHANNEL_FIELD = "channel"


def channels_seen(fields: dict[str, str]) -> set[Channel]:
    """The channels a campaign's sends and clicks came on, from its counter hash."""
    seen = {c for f, c in _CHANNEL_FIELDS.items() if f in fields}
    legacy = fields.get(LEGACY_CHANNEL_FIELD, "")
    if legacy in Channel._value2member_map_:
        seen.add(Channel(legacy))
    return seen


class CampaignDelta(msgspec.Struct, gc=False, omit_defaults=True):
    """What one batch changes in one campaign's counters (an empty one republishes the tally).
    ``campaign_id`` empty: the project's subscription counters, or those of ``day`` when set.

    A msgspec struct: made per user per batch, and encoded into the partition journal in C (as a map
    without its default fields; an unknown field is ignored when a journal is read)."""

    project_id: str
    campaign_id: str
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    revenue: dict[str, Decimal] = msgspec.field(default_factory=dict)
    as_of_ts: int = 0
    channels: list[str] = msgspec.field(default_factory=list)  # every channel the batch saw it on
    channel: str | None = None  # never written: the one channel of a journal written before `channels`
    day: str | None = None

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def add_revenue(self, event: str, basis: str, currency: str, amount: Decimal) -> None:
        f = revenue_field(event, basis, currency)
        self.revenue[f] = add(self.revenue.get(f, Decimal(0)), amount)

    def seen(self, ts: int) -> None:
        self.as_of_ts = max(self.as_of_ts, ts)

    def seen_on(self, channel: str) -> None:
        """A send or click of the campaign came on ``channel``."""
        if channel not in self.channels:
            self.channels.append(channel)

    def all_channels(self) -> list[str]:
        """``channels``, and the channel of a journal written before them."""
        if self.channel is None or self.channel in self.channels:
            return self.channels
        return [*self.channels, self.channel]

    @property
    def ident(self) -> tuple[str, str]:
        return (self.project_id, self.campaign_id)


class BasisTotals(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    conversions: int
    revenue: dict[str, str]  # ISO 4217 code -> exact decimal string


class EventTally(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    primary: Basis
    send: BasisTotals
    click: BasisTotals
    rate: float


class TallyRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A record of the tallies topic, as ``snapshot`` builds it (for readers of the topic)."""

    project_id: str
    campaign_id: str
    version: int
    as_of_ts: int
    sends: int
    send_users: int
    failed: int
    clicks: int
    click_users: int
    # every record written since the field exists has it; older records on the topic do not
    channels: list[Channel] = msgspec.field(default_factory=list)
    events: dict[str, EventTally]
    accepted: int = 0  # KARTE web push; 0 in records written before they existed
    displayed: int = 0
    clicked_alias: int = 0
    link_clicks: int = 0


def snapshot(
    project_id: str, campaign_id: str, fields: dict[str, str], settings: ProjectSettings | None
) -> dict[str, Any]:
    """The tally record for one campaign from its counter hash; ``rate`` uses the primary basis of
    the campaign's rate channel (``ProjectSettings.rate_channel``)."""
    counts = {name: int(fields.get(name, 0)) for name in COUNTS}
    seen = channels_seen(fields)
    channel = settings.rate_channel(campaign_id, seen) if settings is not None else None
    names = {ev.name for ev in settings.events_for(campaign_id)} if settings else set()
    for f in fields:
        if f.startswith(("c|", "r|")):
            names.add(f.split("|", 2)[1])
    events: dict[str, Any] = {}
    for name in sorted(names):
        ev = settings.event(name, campaign_id) if settings else None
        primary = ev.primary_basis(channel) if ev is not None and channel is not None else Basis.SEND
        per_basis: dict[str, Any] = {}
        for basis in Basis:
            prefix = f"r|{name}|{basis.value}|"
            # a currency whose credits were all corrected away sums to zero: not worth a line
            revenue = {
                f[len(prefix) :]: fmt(Decimal(v))
                for f, v in sorted(fields.items())
                if f.startswith(prefix) and Decimal(v) != 0
            }
            per_basis[basis.value] = {
                "conversions": int(fields.get(conversions_field(name, basis.value), 0)),
                "revenue": revenue,
            }
        reached = counts["send_users"] if primary is Basis.SEND else counts["click_users"]
        converted = per_basis[primary.value]["conversions"]
        events[name] = {
            "primary": primary.value,
            **per_basis,
            "rate": round(converted / reached, 6) if reached else 0.0,
        }
    return {
        "project_id": project_id,
        "campaign_id": campaign_id,
        "version": int(fields.get("version", 0)),
        "as_of_ts": int(fields.get("as_of", 0)),
        **counts,
        "channels": sorted(c.value for c in seen),
        "events": events,
    }
