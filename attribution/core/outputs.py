"""Output records: conversions (stable ids) and dead letters."""

from __future__ import annotations

import hashlib

import msgspec

from attribution.core.model import Basis

_SEP = b"\x1f"


def conversion_id(project_id: str, campaign_id: str, event: str, basis: Basis | str, user_key: str) -> str:
    """Stable id of the one conversion allowed per (project, campaign, event, basis, user key)."""
    parts = (project_id, campaign_id, event, str(basis), user_key)
    return hashlib.blake2b(_SEP.join(p.encode() for p in parts), digest_size=16).hexdigest()


class Conversion(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One credited conversion; republished under the same id when a late event corrects it."""

    conversion_id: str
    project_id: str
    campaign_id: str
    message_id: str
    channel: str
    event: str
    basis: str
    primary: bool
    user_key: str
    device_id: str
    touch_event_id: str
    touch_ts: int
    goal_event_id: str
    goal_ts: int
    amount: str | None
    currency: str | None
    retracted: bool = False  # the conversion no longer holds (its touch or goal moved to another user)

    @property
    def key(self) -> str:
        return f"{self.project_id}:{self.campaign_id}"


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A record that could not be used, with where it was and why."""

    topic: str
    partition: int
    offset: int
    key: str | None
    error: str
    raw: str


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: str,
    max_raw_bytes: int = 4096,
) -> DeadLetter:
    """Build a DLQ record; the raw value is kept as text (invalid UTF-8 replaced), truncated."""
    raw = (value or b"")[:max_raw_bytes].decode("utf-8", errors="replace")
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key.decode("utf-8", errors="replace") if key is not None else None,
        error=error,
        raw=raw,
    )
