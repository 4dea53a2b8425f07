"""The state kept for one user key, and its msgpack encoding (one Redis string per user).

Compact on purpose: a touch stores its (channel, basis) as one small int, structs are arrays
(``array_like``) and untracked by the garbage collector (``gc=False``: they never form cycles).
In Redis a state takes the wire form ``Wire`` (state layout 3): each id once per user, touches
referring to them by index, times as deltas; ``encode_state`` / ``decode_state`` convert exactly.
"""

from __future__ import annotations

from typing import Any

import msgspec

from attribution.core.model import Basis, Channel
from attribution.core.rules import CHANNEL_BASES

#: A touch stores its (channel, basis) as one small int: 1 byte in msgpack instead of ~12.
KINDS: tuple[tuple[str, str], ...] = tuple((c.value, b.value) for c in Channel for b in Basis)
KIND_OF: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(KINDS)}  # Channel is a str
# a send to an in-app message or a click on a KakaoTalk/SMS message counts, but never converts
CONVERTS: tuple[bool, ...] = tuple(Basis(b) in CHANNEL_BASES[Channel(c)] for c, b in KINDS)
IS_SEND: tuple[bool, ...] = tuple(basis == Basis.SEND.value for _, basis in KINDS)


class Touch(msgspec.Struct, array_like=True, frozen=True, gc=False):
    campaign: str
    kind: int  # index into KINDS: (channel, basis)
    ts: int
    event_id: str
    message_id: str
    device_id: str

    @property
    def channel(self) -> str:
        return KINDS[self.kind][0]


class GoalMark(msgspec.Struct, array_like=True, frozen=True, gc=False):
    name: str
    ts: int
    event_id: str
    device_id: str
    amount: str | None
    currency: str | None


class Failed(msgspec.Struct, array_like=True, frozen=True, gc=False):
    campaign: str
    message_id: str
    device_id: str
    ts: int


class Credit(msgspec.Struct, array_like=True, frozen=True, gc=False):
    campaign: str
    event: str
    basis: str
    goal_ts: int
    goal_event_id: str
    device_id: str
    touch_ts: int
    touch_event_id: str
    message_id: str
    channel: str
    amount: str | None
    currency: str | None


class Mark(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A counted-only web event (accepted, displayed...), kept to count each ``event_id`` once."""

    event_id: str
    ts: int


class SubSession(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A session in which the user subscribed: its earliest subscribe and the day it is counted on."""

    ts: int
    day: str


class Linked(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A link of this device or visitor to ``user`` from ``ts`` (``attribution.core.identity``)."""

    ts: int
    user: str


class Lent(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An anonymous touch or goal of this device that once belonged to another user: its current
    ``owner`` (this key when it came back) and the owners it had (to tell them again after a crash)."""

    owner: str
    was: list[str]
    touch: Touch | None = None
    goal: GoalMark | None = None
    at: str = ""  # '<topic>:<partition>@<offset>' of the record whose batch last moved it

    @property
    def ts(self) -> int:
        item = self.touch or self.goal
        return item.ts if item is not None else 0

    @property
    def event_id(self) -> str:
        item = self.touch or self.goal
        return item.event_id if item is not None else ""


class Withdrawn(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A conversion retracted at event time ``at``: its credit as it was."""

    credit: Credit
    at: int


#: permission values of UserState.perm
PERM_NONE, PERM_ON, PERM_OFF = 0, 1, 2


class UserState(msgspec.Struct, array_like=True, gc=False):
    """Everything kept for one user key; serialised as one msgpack blob in Redis.

    New fields go at the end with a default, here and in ``Wire`` (with its conversion in
    ``encode_state`` / ``decode_state``): a blob written before them still decodes."""

    fences: dict[str, int] = msgspec.field(default_factory=dict)
    touches: list[Touch] = msgspec.field(default_factory=list)
    goals: list[GoalMark] = msgspec.field(default_factory=list)
    failed: list[Failed] = msgspec.field(default_factory=list)
    reached: dict[str, int] = msgspec.field(default_factory=dict)
    credits: list[Credit] = msgspec.field(default_factory=list)
    expires_ts: int = 0
    settings_version: int = -1  # the project settings version the credits were computed under
    # -- KARTE web push (attribution.core.web, attribution.core.subscriptions) --
    marks: list[Mark] = msgspec.field(default_factory=list)
    visit_ts: int = -1  # the latest web event (a visit), -1 before any
    perm: int = PERM_NONE  # web-push permission, set by the permission event with the greatest...
    perm_ts: int = -1  # ...ts,
    perm_id: str = ""  # ...then event id
    bucket: str = ""  # the subscription counter the user is counted in: '<day>|on', '<day>|off', ''
    sessions: dict[str, SubSession] = msgspec.field(default_factory=dict)
    # -- identities (attribution.core.identity) --
    links: list[Linked] = msgspec.field(default_factory=list)  # sorted by (ts, user)
    lent: list[Lent] = msgspec.field(default_factory=list)
    # as a user: the link times of each device it was seen on, and the devices shared with others
    links_out: dict[str, list[int]] = msgspec.field(default_factory=dict)
    links_sent: dict[str, int] = msgspec.field(default_factory=dict)  # newest link sent per device
    shared: list[str] = msgspec.field(default_factory=list)
    # as a device: touches and goals of events whose user id is the device itself (never moved)
    pinned: list[str] = msgspec.field(default_factory=list)
    # conversions retracted by a batch, said again if the batch is re-delivered: (credit, clock)
    withdrawn: list[Withdrawn] = msgspec.field(default_factory=list)


class Wire(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """Layout 3: a UserState as stored, each id once per user and times as small deltas.

    ``strs`` holds each campaign, message, device, goal/event name, basis and channel of the user once;
    the flat lists below refer to them by index (1 byte while a user holds < 128 of them). Times are
    ``ts - expires_ts`` (retention bounds them: 5 bytes instead of 9). Event ids stay as they are.
    Fences and the rare fields keep their in-memory form; the rare ones sit last and are omitted
    while they hold their defaults.
    """

    strs: list[str] = []
    expires_ts: int = 0
    touches: list[Any] = []  # 5 per touch: campaign * len(KINDS) + kind, ts, event_id, message, device
    reached: list[int] = []  # 2 per campaign: campaign, count
    links_out: list[int] = []  # per device: device, n, then its n times
    links_sent: list[int] = []  # 2 per device: device, ts
    fences: dict[str, int] = {}
    goals: list[Any] = []  # 6 per goal: name, ts, event_id, device, amount, currency
    # 12 per credit, in Credit's order (campaign, event, basis, device, message and channel by index)
    credits: list[Any] = []
    settings_version: int = -1
    failed: list[Failed] = []
    marks: list[Mark] = []
    visit_ts: int = -1
    perm: int = PERM_NONE
    perm_ts: int = -1
    perm_id: str = ""
    bucket: str = ""
    sessions: dict[str, SubSession] = {}
    links: list[Linked] = []
    lent: list[Lent] = []
    shared: list[str] = []
    pinned: list[str] = []
    withdrawn: list[Withdrawn] = []


_decoder = msgspec.msgpack.Decoder(Wire)
encode_wire = msgspec.msgpack.Encoder().encode
decode_wire = _decoder.decode
