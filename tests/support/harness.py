"""Drive the Processor like a runtime would, without Kafka: records, batches, offsets, tallies."""

from __future__ import annotations

import zlib
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from attribution.core.model import Click, Event, Goal, Identity, Send, WebEvent
from attribution.core.rules import ProjectSettings, SettingsBook
from attribution.core.tally import snapshot
from attribution.engine.processor import EngineConfig, Processor, Record
from attribution.state.base import Store
from attribution.state.keys import Keys
from attribution.state.memory import MemoryStore

KIND_OF = {Send: "sends", Click: "clicks", Goal: "goals", WebEvent: "web_events", Identity: "identity"}


def kind(e: Event) -> str:
    return KIND_OF[type(e)]


def partition_of(user_key: str, partitions: int) -> int:
    return zlib.crc32(user_key.encode()) % partitions


def to_records(
    events: Iterable[Event],
    partitions: int = 2,
    prefix: str = "",
    offsets: dict[tuple[str, int], int] | None = None,
) -> list[Record]:
    """Records in arrival order; ``offsets`` (next offset per (kind, partition)) carries on across calls."""
    offsets = {} if offsets is None else offsets
    out = []
    for e in events:
        k = kind(e)
        p = partition_of(e.user_key, partitions)
        off = offsets.get((k, p), 0)
        offsets[(k, p)] = off + 1
        out.append(Record(k, prefix + k, p, off, e.user_key.encode(), msgspec.json.encode(e)))
    return out


@dataclass
class Run:
    """A processor over a store, remembering everything it emitted."""

    settings: Sequence[ProjectSettings]
    store: Store = field(default_factory=MemoryStore)
    keys: Keys = field(default_factory=Keys)
    grace_ms: int = 60_000
    emitted: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)
    #: identity records (links, routes) a batch wrote: fed back like the worker reads the identity
    #: topic, ``hop_batches`` input batches later (0: before the next input batch)
    hop_batches: int = 0
    identities: bool = True
    identity_window_ms: int | None = None
    routed: list[dict[str, Any]] = field(default_factory=list)
    cache_bytes: int = 64 << 20  # users held in memory between batches: the engine's tests use them

    def __post_init__(self) -> None:
        self.book = SettingsBook(self.settings)
        config = EngineConfig(
            grace_ms=self.grace_ms,
            identities=self.identities,
            identity_window_ms=self.identity_window_ms,
            cache_bytes=self.cache_bytes,
        )
        self.processor = Processor(self.store, self.keys, self.book, config)
        self.offsets: dict[tuple[str, int], int] = {}
        self.in_flight: list[list[Record]] = []  # identity records written, not yet read

    def records(self, events: Iterable[Event]) -> list[Record]:
        """Records for events arriving now, continuing this run's offsets."""
        return to_records(events, offsets=self.offsets)

    def feed_events(self, events: Iterable[Event]) -> None:
        self.feed(self.records(events))

    def deliver(self, batches: Sequence[Sequence[Event]], replay: int | None = None) -> Run:
        """Feed batches in order; batch ``replay`` is delivered twice (a crash before its commit).
        Then the identity records still in flight, until there are none."""
        for i, batch in enumerate(batches):
            records = self.records(batch)
            self.feed(records)
            if i == replay:
                self.feed(records)
        return self.drain()

    def feed(self, records: Sequence[Record]) -> None:
        """One input batch; the identity records due are fed first, as their own batches."""
        while len(self.in_flight) > self.hop_batches:
            due = self.in_flight[0]
            if due:
                self._feed(due)  # a crash here leaves them to be read again, like Kafka would
            self.in_flight.pop(0)
        self._feed(records)

    def drain(self) -> Run:
        for _ in range(100):
            if not any(self.in_flight):
                self.in_flight.clear()
                return self
            due = self.in_flight[0]
            if due:
                self._feed(due)
            self.in_flight.pop(0)
        raise AssertionError("identity records still in flight after 100 rounds")

    def _feed(self, records: Sequence[Record]) -> None:
        result = self.processor.process(records, now_ms=0)
        self.emitted += [orjson.loads(msgspec.json.encode(c)) for c in result.conversions]
        self.dead += [orjson.loads(msgspec.json.encode(d)) for d in result.dead_letters]
        self.routed += [orjson.loads(msgspec.json.encode(r)) for r in result.identity]
        self.in_flight.append(self.records(result.identity))

    def latest_conversions(self) -> dict[str, dict[str, Any]]:
        """The latest record per conversion id, without the ones whose latest record retracts them."""
        latest: dict[str, dict[str, Any]] = {}
        for c in self.emitted:
            latest[c["conversion_id"]] = c
        return {cid: c for cid, c in latest.items() if not c.get("retracted")}

    def tally(self, project: str, campaign: str) -> dict[str, Any]:
        fields = self.store.counters([self.keys.campaign(project, campaign)])[0]
        return snapshot(project, campaign, fields, self.book.get(project))

    def subscriptions(self, project: str) -> dict[str, Any]:
        """The project's now-record of the subscriptions topic, from its counters."""
        from attribution.core.subscriptions import now_snapshot

        settings = self.book.get(project)
        assert settings is not None, f"no settings for {project}"
        fields = self.store.counters([self.keys.subscriptions(project)])[0]
        return now_snapshot(project, fields, settings)

    def subscription_day(self, project: str, day: str) -> dict[str, Any]:
        """The day-record ``<project>:<day>`` of the subscriptions topic, from its counters."""
        from attribution.core.subscriptions import day_snapshot

        fields = self.store.counters([self.keys.subscription_day(project, day)])[0]
        return day_snapshot(project, day, fields)


class Crashing(Run):
    """A run whose worker is killed after the state write of the batches numbered in ``crash_at``
    (counting input and identity batches from 0): the batch is applied to the store, its outputs
    (conversions, identity records) are lost before reaching Kafka, and the same records are
    delivered again."""

    crash_at: Container[int] = ()
    fed: int = 0

    def _feed(self, records: Sequence[Record]) -> None:
        if self.fed in self.crash_at:
            self.processor.process(records, now_ms=0)  # state written; killed before the flush
        self.fed += 1
        super()._feed(records)
