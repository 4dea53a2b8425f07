"""One batch of input records -> decoded events -> per-user attribution -> one atomic state write.

Runtimes (``attribution.runtime``: the confluent-kafka worker and the faust-streaming agents) hand
records in and publish what comes out; they decide nothing about attribution. This module knows no
Kafka client and no Redis command.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import msgspec

from attribution.contract.topics import TOPICS, Role
from attribution.core import user as user_rules
from attribution.core import web
from attribution.core.model import Event, Identity, Located, Position, WebEvent
from attribution.core.outputs import Conversion, DeadLetter, dead_letter
from attribution.core.rules import ProjectSettings, SettingsBook
from attribution.core.state_codec import decode_state, encode_state
from attribution.core.user_state import UserState
from attribution.errors import BadInput, StateConflict
from attribution.state.base import Loaded, Store
from attribution.state.cache import UserCache
from attribution.state.keys import Keys
from attribution.state.ledger import Ledger, PartitionBatch

log = logging.getLogger(__name__)
# one pass in C from bytes to a validated struct (no intermediate dict): 3x orjson + convert
DECODERS: dict[str, Callable[[bytes], Event]] = {
    t.name: cast(Callable[[bytes], Event], msgspec.json.Decoder(t.struct).decode)
    for t in TOPICS
    if t.role is Role.INPUT
}
CONFLICT_RETRIES = 3


class Record(NamedTuple):
    """An input record as a runtime read it; ``kind`` is the input topic's name (sends, web_events...)."""

    kind: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    grace_ms: int = 60_000
    state_margin_ms: int = 24 * 3600 * 1000
    max_event_bytes: int = 64 * 1024
    identities: bool = True
    identity_window_ms: int | None = None  # None: each project's longest conversion window
    cache_bytes: int = 0  # user states held in memory between batches (the worker: ATTRIBUTION_CACHE_MB)


@dataclass(slots=True)
class BatchResult:
    """Everything a batch produced, for the runtime to publish and to count."""

    conversions: list[Conversion] = field(default_factory=list)
    identity: list[Identity] = field(default_factory=list)  # records for the identity topic
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    amount_missing: Counter[str] = field(default_factory=Counter)
    redis_seconds: dict[str, float] = field(default_factory=dict)
    conflicts: int = 0
    recovered: int = 0  # partition batches finished for someone else (a crash, a rebalance)


class Processor:
    """Applies batches to a Store. Safe to call again with a re-delivered batch: that is a no-op for
    state and republishes the affected users' conversions (tallies need nothing: their dirty marks
    were durable before the offsets were committed)."""

    def __init__(self, store: Store, keys: Keys, settings: SettingsBook, config: EngineConfig) -> None:
        self.store = store
        self.keys = keys
        self.settings = settings
        self.config = config
        self.cache = UserCache(config.cache_bytes)
        self.ledger = Ledger(store, keys, config.grace_ms + config.state_margin_ms, self.cache)

    def process(self, records: Sequence[Record], now_ms: int | None = None) -> BatchResult:
        """Decode and apply a batch (dead letters for what cannot be decoded)."""
        result = BatchResult()
        located = [loc for r in records if (loc := self.decode(r, result)) is not None]
        return self.apply(located, result, now_ms)

    def decode(self, record: Record, result: BatchResult) -> Located | None:
        """The record as an event with its position, or None after adding a dead letter to ``result``."""
        event = self._decode(record, result)
        if event is None:
            return None
        return Located(event, Position(record.topic, record.partition, record.offset))

    def apply(
        self, located: Sequence[Located], result: BatchResult | None = None, now_ms: int | None = None
    ) -> BatchResult:
        """Attribute decoded events (per topic-partition in offset order) with one state write."""
        result = result if result is not None else BatchResult()
        groups: dict[tuple[str, str], list[Located]] = {}
        for loc in located:
            groups.setdefault((loc.event.project_id, loc.event.user_key), []).append(loc)
        if groups:
            self._apply_groups(groups, result, now_ms)
        return result

    def _apply_groups(
        self, groups: dict[tuple[str, str], list[Located]], result: BatchResult, now_ms: int | None
    ) -> None:
        """One atomic write for ``groups``; when the state script refuses it, halve the batch until the
        user it cannot take is found, and dead-letter that user's events (a poison pill must not stop
        the worker, nor cost the other users their events)."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                self._attribute(groups, result, now_ms)
                return
            except StateConflict:
                result.conflicts += 1
                if attempt == CONFLICT_RETRIES - 1:
                    raise
            except BadInput as exc:
                items = list(groups.items())
                if len(items) == 1:
                    _dead(items[0][1], f"state script refused the user's events: {exc}", result)
                    return
                half = len(items) // 2
                self._apply_groups(dict(items[:half]), result, now_ms)
                self._apply_groups(dict(items[half:]), result, now_ms)
                return

    def _load(
        self, where: Sequence[tuple[str, int]], partitions: Sequence[int]
    ) -> tuple[dict[str, UserState | None], Loaded]:
        """States known from the cache, and what Redis holds of the others (with the journal heads,
        which say whether the cache may be trusted: ``Ledger.stale``)."""
        cached = self.cache.lookup(where)
        return cached, self.store.load([k for k, _ in where if k not in cached], partitions)

    def _identity_window(self, settings: ProjectSettings | None) -> int | None:
        if not self.config.identities:
            return None
        if self.config.identity_window_ms is not None:
            return self.config.identity_window_ms
        return settings.max_window_ms if settings is not None else 0

    def _decode(self, record: Record, result: BatchResult) -> Event | None:
        reason = self._problem(record)
        event: Event | None = None
        if reason is None:
            try:
                event = DECODERS[record.kind](record.value or b"")
            except msgspec.ValidationError as exc:
                reason = f"invalid {record.kind} event: {exc}"
            except msgspec.DecodeError as exc:  # the parent class: malformed JSON
                reason = f"not JSON: {exc}"
        if event is not None and isinstance(event, WebEvent):
            reason = web.problem(event)
        if (
            event is not None
            and reason is None
            and (record.key or b"").decode("utf-8", "replace") != event.user_key
        ):
            # the DLQ record shows the key and the raw value; the reason names neither (it is logged)
            reason = (
                "record key is not the event's user key (user_id, else device_id or visitor_id): producers "
                "must key records by user so a user's events share a partition"
            )
        if reason is not None:
            result.dead_letters.append(
                dead_letter(record.topic, record.partition, record.offset, record.key, record.value, reason)
            )
            result.outcomes[(record.topic, "dlq")] += 1
            return None
        return event

    def _problem(self, record: Record) -> str | None:
        if record.value is None:
            return "empty record (null value)"
        if len(record.value) > self.config.max_event_bytes:
            return f"record of {len(record.value)} bytes is over the {self.config.max_event_bytes}-byte limit"
        return None

    def _attribute(
        self, groups: dict[tuple[str, str], list[Located]], result: BatchResult, now_ms: int | None
    ) -> None:
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        batch_max_ts: dict[int, int] = {}
        for located in groups.values():
            for loc in located:
                partition, ts = loc.pos.partition, loc.event.ts
                if ts > batch_max_ts.get(partition, -1):
                    batch_max_ts[partition] = ts
        user_keys = [self.keys.user(project, user_key) for project, user_key in groups]
        partitions = sorted(batch_max_ts)
        where = [(k, located[0].pos.partition) for k, located in zip(user_keys, groups.values(), strict=True)]
        started = time.perf_counter()
        cached, loaded = self._load(where, partitions)
        stale = self.ledger.stale(loaded.journals)
        if stale:  # someone else's batch (or our torn one) comes first
            for p in stale:
                self.ledger.recover(p, now)
            result.recovered += len(stale)
            cached, loaded = self._load(where, partitions)  # the stale partitions' cache is gone
            if self.ledger.stale(loaded.journals):
                raise StateConflict(f"input partitions {stale} are being written by another worker")
        result.redis_seconds["load"] = time.perf_counter() - started
        start_clock = {p: j.clock_ts if (j := loaded.journals[p]) else 0 for p in partitions}
        end_clock = {p: max(start_clock[p], ts) for p, ts in batch_max_ts.items()}

        batches = {p: PartitionBatch(p, end_clock[p]) for p in partitions}
        conversions: list[Conversion] = []
        routed: list[Identity] = []
        outcomes: Counter[tuple[str, str]] = Counter()
        amount_missing: Counter[str] = Counter()
        poisoned: list[tuple[list[Located], str]] = []
        grace = self.config.grace_ms
        margin = self.config.state_margin_ms
        written: list[tuple[str, int, UserState, int, int]] = []  # for the cache, once durable
        unwritten: list[str] = []  # states changed in memory that will not be written: forget them
        for key, ((project, user_key), located) in zip(user_keys, groups.items(), strict=True):
            partition = located[0].pos.partition
            try:
                state = (cached[key] or UserState()) if key in cached else decode_state(loaded.users[key][0])
                settings = self.settings.get(project)
                out = user_rules.apply(
                    state,
                    project,
                    user_key,
                    located,
                    settings,
                    start_clock[partition],
                    end_clock[partition],
                    grace,
                    self._identity_window(settings),
                )
            except Exception as exc:  # a poison pill: this user's events only, never the whole batch
                # no raw user key in a log line (personal data): the DLQ record carries it
                log.exception(
                    "attributing a user of project %s failed (%s[%d]@%d); its events go to the DLQ",
                    project,
                    located[0].pos.topic,
                    located[0].pos.partition,
                    located[0].pos.offset,
                )
                poisoned.append((located, f"processing failed ({type(exc).__name__}: {exc})"))
                unwritten.append(key)
                continue
            for k, n in out.outcomes.items():
                outcomes[k] += n
            if out.amount_missing:
                amount_missing.update(out.amount_missing)
            if out.conversions:
                conversions.extend(out.conversions)
            if out.identity:
                routed.extend(out.identity)
            if out.changed:
                ttl_ms = max(1, state.expires_ts - end_clock[partition] + margin)
                blob = encode_state(state)
                batch = batches[partition]
                batch.users.append((key, blob, ttl_ms))
                written.append((key, partition, state, len(blob), ttl_ms))
                if out.campaigns or out.subscriptions:
                    batch.deltas[key] = [*out.campaigns.values(), *out.subscriptions]
            else:  # a replay only: what it recomputed in memory is not written
                unwritten.append(key)

        started = time.perf_counter()
        cache = self.cache
        try:
            self.ledger.commit([b for b in batches.values() if b.users], now)
        except BaseException:
            cache.discard(user_keys)  # changed in memory, maybe not in Redis
            raise
        cache.discard(unwritten)
        for key, partition, state, size, ttl_ms in written:
            cache.put(key, partition, state, size, ttl_ms)
        result.redis_seconds["apply"] = time.perf_counter() - started
        result.conversions.extend(conversions)
        result.identity.extend(routed)
        result.outcomes.update(outcomes)
        result.amount_missing.update(amount_missing)
        for located, reason in poisoned:
            _dead(located, reason, result)


def _dead(located: list[Located], reason: str, result: BatchResult) -> None:
    for loc in located:
        pos = loc.pos
        raw = msgspec.json.encode(loc.event)
        result.dead_letters.append(
            dead_letter(pos.topic, pos.partition, pos.offset, loc.event.user_key.encode(), raw, reason)
        )
        result.outcomes[(pos.topic, "dlq")] += 1
