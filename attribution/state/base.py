"""What the processor needs from a state store; Redis in production, a dict-backed twin in unit tests.

A batch is written in three steps per input partition, so that it can be torn anywhere (a crash, a
lost node, a rebalance) and finished by whoever comes next (``attribution.state.ledger``):

1. ``open_batches``: compare-and-set the partition journal to ``seq + 1`` with the batch's counter
   deltas per user;
2. ``write_users``: the new user states, each fenced by ``<partition>:<seq>``;
3. ``add_counters``: the summed deltas, fenced per (campaign, partition) by ``seq``, then the dirty
   marks that make the tally feed republish them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

import msgspec


class UserWrite(msgspec.Struct, frozen=True, gc=False):
    """A user's new state, written by batch ``seq`` of input ``partition`` unless a later one was.
    (A struct, not a dataclass: one is made per changed user per batch, and msgspec builds it in C.)"""

    key: str
    partition: int
    seq: int
    blob: bytes
    ttl_ms: int


@dataclass(slots=True)
class CounterWrite:
    """Add to one campaign's counters unless batch ``seq`` of ``partition`` was already added."""

    key: str
    member: str
    project_key: str  # the project's campaign set (Keys.project_campaigns): member is added to it
    partition: int = 0
    seq: int = 1
    as_of_ts: int = 0
    channels: list[str] = field(default_factory=list)  # channels the batch saw the campaign on
    persist: bool = False  # never expires (subscription counters: subscribers are kept until they leave)
    counts: dict[str, int] = field(default_factory=dict)
    revenue: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Journal:
    """The last batch opened on an input partition; ``body`` is empty when only its head was read."""

    seq: int
    clock_ts: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class OpenBatch:
    partition: int
    expected_seq: int
    clock_ts: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Loaded:
    """``users[key]`` = (blob or None, fence or None); ``journals[partition]`` = head or None."""

    users: dict[str, tuple[bytes | None, str | None]]
    journals: dict[int, Journal | None]


@dataclass(frozen=True, slots=True)
class Generation:
    """The generation markers: ``values`` found (None for a missing marker) out of ``total``."""

    values: frozenset[str | None]
    total: int

    @property
    def value(self) -> str | None:
        """The generation when every marker holds the same one, else None."""
        if len(self.values) == 1:
            (only,) = self.values
            return only
        return None


class Store(Protocol):
    """Batched state operations; see the module docstring for how a batch is written."""

    def load(self, user_keys: Sequence[str], partitions: Sequence[int]) -> Loaded: ...

    def read_journal(self, partition: int) -> Journal | None: ...

    def open_batches(self, batches: Sequence[OpenBatch]) -> dict[int, int | None]:
        """The new seq of each partition's batch, or None where another writer got there first."""
        ...

    def write_users(self, writes: Sequence[UserWrite]) -> list[bool]:
        """Per write: True when written, False when the user already holds that batch or a later one."""
        ...

    def settle(self, partition: int, seq: int, user_keys: Sequence[str], ttl_ms: int) -> list[int]:
        """Per user: 1 written by the batch, 0 not (and now closed to it), 2 holds a later batch."""
        ...

    def add_counters(self, counters: Sequence[CounterWrite], now_ms: int) -> None: ...

    def dirty(self, limit: int) -> list[str]: ...

    def counters(self, keys: Sequence[str]) -> list[dict[str, str]]: ...

    def ack(self, published: Sequence[tuple[str, int, int]]) -> int:
        """(member, version, topic offset) of snapshots that reached the tallies topic: forget the
        marks whose newest version is the key's last record there; version -1 forgets."""
        ...

    def touch_project(self, project_key: str, now_ms: int) -> int: ...

    def save_settings(self, project_id: str, version: int, document: bytes) -> bool:
        """Keep ``document`` as the project's settings unless this version or a newer one is kept."""
        ...

    def settings_documents(self) -> list[bytes]:
        """Every kept settings document (JSON), one per project."""
        ...

    def dead_lettered(self, stream: str) -> int:
        """The highest offset of ``stream`` (``topic:partition`` of the settings topic) whose record
        a worker dead-lettered, -1 when none."""
        ...

    def mark_dead_lettered(self, stream: str, offset: int) -> None:
        """Raise that offset to ``offset`` (never lowers it)."""
        ...

    def generation(self) -> Generation: ...

    def init_generation(self, value: str) -> str:
        """Adopt the existing generation, or set ``value`` where none exists; returns the one in force."""
        ...
