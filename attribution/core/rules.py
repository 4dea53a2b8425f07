"""Project settings: conversion events, windows, the measurement basis per channel, purchase keys.

FlareLane's rules: push (and web push, email) may measure from the send or the click; KakaoTalk and
SMS only from the send; in-app messages only from the click. A setting that says otherwise is refused,
and so is a field the settings do not define, at any level (a typo must not pass silently).

A campaign's rate is measured on the primary basis of one channel: the one ``campaign_channels``
declares for it, else the first of the channels its sends and clicks came on in ``CHANNEL_ORDER``
(never the order in which they arrived).
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Collection, Iterable
from typing import Any

import msgspec

from attribution.core.model import Basis, Channel
from attribution.errors import BadSettings

MAX_WINDOW_MS = 90 * 24 * 3600 * 1000
MAX_VISITOR_DAYS = 180
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_FORBIDDEN_IN_NAMES = "|"
MAX_ID_LENGTH = 256
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`(?: - at `\$(?P<at>.*)`)?$")
_PATH_STEP = re.compile(r"\.(?P<field>[^.\[]+)|\[(?P<index>[^\]]*)\]")

#: Which channel makes the rate of a campaign seen on several (unless ``campaign_channels`` says):
#: the first of them in this order, the declaration order of ``Channel``.
CHANNEL_ORDER: tuple[Channel, ...] = tuple(Channel)

#: The bases each channel can be measured on; the first one is the default.
CHANNEL_BASES: dict[Channel, tuple[Basis, ...]] = {
    Channel.PUSH: (Basis.SEND, Basis.CLICK),
    Channel.WEB_PUSH: (Basis.SEND, Basis.CLICK),
    Channel.EMAIL: (Basis.SEND, Basis.CLICK),
    Channel.KAKAO: (Basis.SEND,),
    Channel.SMS: (Basis.SEND,),
    Channel.IN_APP: (Basis.CLICK,),
}


# forbid_unknown_fields: a settings document with a field these structs do not define is refused;
# omit_defaults: a document encoded here (kept in Redis, published) names only the fields it sets, so
# a worker that does not know a field added later still reads documents that do not use it.
class Purchase(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """How to read the amount of a purchase goal: ``properties[amount_key] * properties[quantity_key]``
    (quantity 1 when no ``quantity_key`` is configured)."""

    amount_key: str
    quantity_key: str | None = None
    currency: str


class ConversionEvent(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    name: str
    window_ms: int
    basis: dict[str, Basis] = msgspec.field(default_factory=dict)
    purchase: Purchase | None = None

    def primary_basis(self, channel: Channel) -> Basis:
        """The basis whose conversions make the rate for a campaign on ``channel``."""
        allowed = CHANNEL_BASES[channel]
        if len(allowed) == 1:
            return allowed[0]
        return self.basis.get(channel.value, Basis.SEND)


class CampaignGoal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A goal event measured for one campaign only (KARTE's per-serve goal), on both bases."""

    campaign_id: str
    event: str
    window_ms: int


class ProjectSettings(
    msgspec.Struct, frozen=True, kw_only=True, dict=True, forbid_unknown_fields=True, omit_defaults=True
):
    project_id: str
    version: int
    conversion_events: list[ConversionEvent]
    #: campaign id -> the channel whose primary basis makes the campaign's rate (validated)
    campaign_channels: dict[str, str] = msgspec.field(default_factory=dict)
    campaign_goals: list[CampaignGoal] = msgspec.field(default_factory=list)
    visitor_days: int = 7
    timezone: str = "UTC"

    def event(self, name: str, campaign_id: str | None = None) -> ConversionEvent | None:
        """The conversion event ``name`` as measured for ``campaign_id`` (its own goal first)."""
        if campaign_id is not None:
            own = self.campaign_events.get(campaign_id)
            if own is not None:
                for ev in own:
                    if ev.name == name:
                        return ev
        for ev in self.conversion_events:
            if ev.name == name:
                return ev
        return None

    def events_for(self, campaign_id: str) -> list[ConversionEvent]:
        """The conversion events measured for ``campaign_id``: the project's, its own goals replacing
        a project event of the same name."""
        own = self.campaign_events.get(campaign_id)
        if own is None:
            return self.conversion_events
        names = {ev.name for ev in own}
        return [*(ev for ev in self.conversion_events if ev.name not in names), *own]

    @functools.cached_property
    def campaign_events(self) -> dict[str, list[ConversionEvent]]:
        out: dict[str, list[ConversionEvent]] = {}
        for g in self.campaign_goals:
            out.setdefault(g.campaign_id, []).append(ConversionEvent(name=g.event, window_ms=g.window_ms))
        return out

    @functools.cached_property
    def goal_names(self) -> frozenset[str]:
        """Every event name that is a goal of some campaign of the project."""
        return frozenset(ev.name for ev in self.conversion_events) | {g.event for g in self.campaign_goals}

    @functools.cached_property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @functools.cached_property  # read once per user per batch: computed once per settings version
    def max_window_ms(self) -> int:
        windows = [ev.window_ms for ev in self.conversion_events] + [g.window_ms for g in self.campaign_goals]
        return max(windows, default=0)

    def rate_channel(self, campaign_id: str, seen: Collection[Channel]) -> Channel | None:
        """The channel whose primary basis makes the campaign's rate: the declared one, else the
        first of ``seen`` (the channels its sends and clicks came on) in ``CHANNEL_ORDER``."""
        declared = self.campaign_channels.get(campaign_id)
        if declared is not None:
            return Channel(declared)
        return next((c for c in CHANNEL_ORDER if c in seen), None)


def parse_settings(raw: object, max_events: int = 5) -> ProjectSettings:
    """Validate a settings document (already JSON-decoded); raises BadSettings naming the field."""
    try:
        settings = msgspec.convert(raw, ProjectSettings)
    except msgspec.ValidationError as exc:
        unknown = _UNKNOWN_FIELD.match(str(exc))
        if unknown is not None:
            at, name = unknown["at"] or "", unknown["name"]
            expected = ", ".join(_fields_at(at))
            raise BadSettings(
                f"{at.removeprefix('.')}.{name}".removeprefix("."),
                f"unknown field (expected one of: {expected})",
            ) from None
        raise BadSettings(_field_of(str(exc)), str(exc)) from None
    validate(settings, max_events)
    return settings


def validate(settings: ProjectSettings, max_events: int) -> None:
    """Check the rules the type system cannot: limits, uniqueness, basis allowed per channel."""
    if not settings.project_id:
        raise BadSettings("project_id", "must not be empty")
    if settings.version < 0:
        raise BadSettings("version", "must be >= 0")
    events = settings.conversion_events
    if len(events) > max_events:
        raise BadSettings(
            "conversion_events", f"{len(events)} conversion events, at most {max_events} are allowed"
        )
    seen: set[str] = set()
    for i, ev in enumerate(events):
        at = f"conversion_events[{i}]"
        if not ev.name or _FORBIDDEN_IN_NAMES in ev.name:
            raise BadSettings(f"{at}.name", f"must be non-empty and must not contain {_FORBIDDEN_IN_NAMES!r}")
        if ev.name in seen:
            raise BadSettings(f"{at}.name", f"duplicate conversion event {ev.name!r}")
        seen.add(ev.name)
        if not 0 < ev.window_ms <= MAX_WINDOW_MS:
            raise BadSettings(f"{at}.window_ms", f"must be between 1 and {MAX_WINDOW_MS} (90 days)")
        _check_basis(at, ev.basis)
        if ev.purchase is not None and not _CURRENCY.match(ev.purchase.currency):
            raise BadSettings(f"{at}.purchase.currency", "must be an ISO 4217 code such as KRW or USD")
    _check_campaign_channels(settings.campaign_channels)
    _check_campaign_goals(settings.campaign_goals)
    if not 1 <= settings.visitor_days <= MAX_VISITOR_DAYS:
        raise BadSettings("visitor_days", f"must be between 1 and {MAX_VISITOR_DAYS}")
    try:
        zoneinfo.ZoneInfo(settings.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BadSettings(
            "timezone", f"{settings.timezone!r} is not an IANA time zone name such as Asia/Tokyo"
        ) from None


def _check_campaign_goals(goals: list[CampaignGoal]) -> None:
    seen: set[tuple[str, str]] = set()
    for i, g in enumerate(goals):
        at = f"campaign_goals[{i}]"
        if not g.campaign_id:
            raise BadSettings(f"{at}.campaign_id", "must not be empty")
        if not g.event or _FORBIDDEN_IN_NAMES in g.event:
            raise BadSettings(
                f"{at}.event", f"must be non-empty and must not contain {_FORBIDDEN_IN_NAMES!r}"
            )
        if (g.campaign_id, g.event) in seen:
            raise BadSettings(f"{at}.event", f"duplicate goal {g.event!r} for campaign {g.campaign_id!r}")
        seen.add((g.campaign_id, g.event))
        if not 0 < g.window_ms <= MAX_WINDOW_MS:
            raise BadSettings(f"{at}.window_ms", f"must be between 1 and {MAX_WINDOW_MS} (90 days)")


def _check_campaign_channels(declared: dict[str, str]) -> None:
    for campaign_id, channel_name in declared.items():
        if not 0 < len(campaign_id) <= MAX_ID_LENGTH:
            raise BadSettings("campaign_channels", f"a campaign id must have 1 to {MAX_ID_LENGTH} characters")
        if channel_name not in Channel._value2member_map_:
            known = ", ".join(c.value for c in Channel)
            raise BadSettings(
                f"campaign_channels.{campaign_id}",
                f"unknown channel {channel_name!r} (expected one of: {known})",
            )


def _check_basis(at: str, basis: dict[str, Basis]) -> None:
    for channel_name, chosen in basis.items():
        try:
            channel = Channel(channel_name)
        except ValueError:
            raise BadSettings(f"{at}.basis.{channel_name}", "unknown channel") from None
        allowed = CHANNEL_BASES[channel]
        if chosen not in allowed:
            only = " or ".join(b.value for b in allowed)
            raise BadSettings(
                f"{at}.basis.{channel_name}", f"{channel.value} can only be measured from the {only}"
            )


def _fields_at(path: str) -> list[str]:
    """The field names of the settings struct at ``path`` (msgspec's form without ``$``, e.g.
    ``.conversion_events[0].purchase``), for an unknown-field message."""
    node: Any = msgspec.inspect.type_info(ProjectSettings)
    for step in _PATH_STEP.finditer(path):
        node = _unwrap(node)
        if step["field"] is not None and isinstance(node, msgspec.inspect.StructType):
            node = next(f.type for f in node.fields if f.encode_name == step["field"])
        elif isinstance(node, msgspec.inspect.ListType):
            node = node.item_type
        elif isinstance(node, msgspec.inspect.DictType):
            node = node.value_type
    node = _unwrap(node)
    return [f.encode_name for f in node.fields] if isinstance(node, msgspec.inspect.StructType) else []


def _unwrap(node: Any) -> Any:
    """``X | None`` -> ``X``."""
    if isinstance(node, msgspec.inspect.UnionType):
        kinds = [t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)]
        return kinds[0] if len(kinds) == 1 else node
    return node


def _field_of(message: str) -> str:
    # msgspec says "... - at `$.conversion_events[0].window_ms`"; keep the path after "$.".
    marker = "at `$."
    if marker in message:
        return message.split(marker, 1)[1].rstrip("`")
    return "settings"


class SettingsBook:
    """The settings in force per project: the highest version seen wins."""

    def __init__(self, initial: Iterable[ProjectSettings] = ()) -> None:
        self._by_project: dict[str, ProjectSettings] = {}
        for s in initial:
            self.put(s)

    def put(self, settings: ProjectSettings) -> bool:
        """Install ``settings`` unless an equal or newer version is known; True when it changed."""
        known = self._by_project.get(settings.project_id)
        if known is not None and known.version >= settings.version:
            return False
        self._by_project[settings.project_id] = settings
        return True

    def get(self, project_id: str) -> ProjectSettings | None:
        return self._by_project.get(project_id)

    def projects(self) -> list[str]:
        return sorted(self._by_project)
