"""What the processor needs from a state store; Redis in production, a dict-backed twin in unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UserWrite:
    """Replace a user's state blob if its CAS version is still ``expected_version``."""

    key: str
    expected_version: int
    blob: bytes
    ttl_ms: int


@dataclass(slots=True)
class CounterWrite:
    """Add to one campaign's counters and mark it dirty (to be republished)."""

    key: str
    member: str
    project_key: str  # the project's campaign set (Keys.project_campaigns): member is added to it
    as_of_ts: int = 0
    channel: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    revenue: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A consistent read: ``users[key] = (version, blob or None)``, ``clocks[key] = ms or None``."""

    users: dict[str, tuple[int, bytes | None]]
    clocks: dict[str, int | None]


class Store(Protocol):
    """Batched, atomic state operations. ``apply`` raises StateConflict and writes nothing on conflict."""

    def load(self, user_keys: Sequence[str], clock_keys: Sequence[str]) -> Loaded: ...

    def apply(
        self,
        users: Sequence[UserWrite],
        clocks: dict[str, int],
        counters: Sequence[CounterWrite],
        now_ms: int,
    ) -> None: ...

    def dirty(self, limit: int) -> list[str]: ...

    def counters(self, keys: Sequence[str]) -> list[dict[str, str]]: ...

    def ack(self, published: Sequence[tuple[str, str, int]], now_ms: int = 0) -> int: ...

    def touch_project(self, project_key: str, now_ms: int) -> int: ...
