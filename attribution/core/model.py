"""Input events as typed structs, and where each record came from.

Decoding validates types and required fields (msgspec); the JSON Schemas in ``topics/`` describe the
same contract for people and other languages, and a unit test keeps the two in agreement.

Every struct here and in ``user``/``outputs`` is ``gc=False``: they hold strings, numbers and
containers of those, so they can never be part of a reference cycle, and a worker allocates
millions of them; untracked, they cost the cyclic garbage collector nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
TsMs = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


class Channel(StrEnum):
    PUSH = "push"
    WEB_PUSH = "web_push"
    KAKAO = "kakao"
    SMS = "sms"
    IN_APP = "in_app"
    EMAIL = "email"


class Basis(StrEnum):
    SEND = "send"
    CLICK = "click"


class Send(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A message sent (or failed) to one device; ``status=sent`` makes it a send-basis touch."""

    event_id: Id
    project_id: Id
    campaign_id: Id
    message_id: Id
    channel: Channel
    device_id: Id
    user_id: Id | None = None
    ts: TsMs
    status: Literal["sent", "failed"] = "sent"
    variant: str | None = None

    @property
    def user_key(self) -> str:
        return self.user_id or self.device_id


class Click(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A click on a message: the click-basis touch."""

    event_id: Id
    project_id: Id
    campaign_id: Id
    message_id: Id
    channel: Channel
    device_id: Id
    user_id: Id | None = None
    ts: TsMs
    link: str | None = None

    @property
    def user_key(self) -> str:
        return self.user_id or self.device_id


class Goal(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A goal event emitted by an app (purchase, signup...); converts when a project configures it."""

    event_id: Id
    project_id: Id
    name: Id
    device_id: Id
    user_id: Id | None = None
    ts: TsMs
    properties: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def user_key(self) -> str:
        return self.user_id or self.device_id


class WebEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A KARTE web event: a visit of its user at ``ts``; some names are also a web-push serve's
    send, click, counter or permission change (``attribution.core.web``)."""

    event_id: Id
    project_id: Id
    event: Id
    visitor_id: Id
    user_id: Id | None = None
    session_id: Id
    ts: TsMs
    campaign_id: Id | None = None
    message_id: Id | None = None
    values: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def user_key(self) -> str:
        return self.user_id or self.visitor_id


class Identity(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A record of the internal ``identity`` topic, keyed by ``to`` (``attribution.core.identity``).

    ``kind="link"``: device or visitor ``to`` was linked to user ``user_id`` at ``ts`` by event
    ``event_id``. ``kind="route"``: the anonymous touch or goal ``event_id`` belongs to user ``to``
    (or, ``retracted``, no longer does); ``item`` says which, with its fields. ``kind="share"``:
    device ``device_id`` is linked to other users too: user ``to`` must send all its links to it."""

    kind: Literal["link", "route", "share"]
    project_id: Id
    to: Id
    ts: TsMs
    event_id: Id
    user_id: Id | None = None
    retracted: bool = False
    item: Literal["send", "click", "goal"] | None = None
    campaign_id: Id | None = None
    message_id: Id | None = None
    channel: Channel | None = None
    name: Id | None = None
    device_id: Id | None = None
    amount: str | None = None
    currency: str | None = None

    @property
    def user_key(self) -> str:
        return self.to


Event = Send | Click | Goal | WebEvent | Identity


class Position(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where a record was read: the fence for idempotent state updates is (topic, partition, offset)."""

    topic: str
    partition: int
    offset: int

    @property
    def stream(self) -> str:
        """The fence slot this record advances: one per (topic, partition)."""
        return f"{self.topic}:{self.partition}"


class Located(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A decoded event together with the position it was read from."""

    event: Event
    pos: Position
