"""Write a batch so that it can be torn anywhere and finished by whoever comes next.

Users, campaigns and journals live in different hash slots (different servers on a Redis Cluster),
so a batch cannot be one atomic write. Instead, per input partition (all of a user's events share
one, because inputs are keyed and co-partitioned by user):

1. the partition journal is compare-and-set to ``seq + 1``, holding each changed user's counter
   deltas: from now on nobody else can open a batch on this partition before finishing this one;
2. the user states are written, fenced ``<partition>:<seq>``;
3. the counters get the deltas summed per (campaign, partition), fenced by ``seq``.

Whoever finds a journal newer than the last batch it finished itself (a restart, a rebalance, a
conflict) recovers it before reading anything: it asks each user of the journal whether batch
``seq`` was written for them, closes the batch for those that were not (so that a late write from
the old owner is refused), and adds the deltas of the written users. Counters therefore count a
user's change exactly when the user's state holds it; the events of users the batch never reached
are still unapplied, and are applied when the input is re-delivered (offsets are committed after).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec

from attribution.core.money import add, fmt
from attribution.core.tally import CampaignDelta
from attribution.errors import AttributionError, BadInput, LostState, StateConflict
from attribution.state.base import CounterWrite, Journal, OpenBatch, Store, UserWrite
from attribution.state.cache import UserCache
from attribution.state.generation import REBUILD_HINT
from attribution.state.keys import Keys, Subject

_DECIMAL = re.compile(r"-?\d+(\.\d+)?")


# A journal body: per user, (Redis key, its CampaignDeltas), encoded by msgspec in C (a dataclass
# becomes a map, Decimal a string): nothing is built per user in Python on the hot path.
_Entry = tuple[str, list[CampaignDelta]]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[_Entry]).decode


@dataclass(slots=True)
class PartitionBatch:
    """What one batch writes for one input partition."""

    partition: int
    clock_ts: int
    users: list[tuple[str, bytes, int]] = field(default_factory=list)  # (key, blob, ttl ms)
    deltas: dict[str, list[CampaignDelta]] = field(default_factory=dict)  # user key -> its deltas


class Ledger:
    """Knows the last batch this process finished per partition; see the module docstring."""

    def __init__(self, store: Store, keys: Keys, mark_ttl_ms: int, cache: UserCache | None = None) -> None:
        self.store = store
        self.keys = keys
        self.mark_ttl_ms = mark_ttl_ms
        # users held in memory, valid while the journal of their partition is the one we wrote last
        self.cache = cache if cache is not None else UserCache(0)
        self.known: dict[int, int] = {}
        # partitions whose journal this process saw: it must never vanish (forget() keeps this)
        self.seen: set[int] = set()

    def stale(self, journals: dict[int, Journal | None]) -> list[int]:
        """Partitions whose journal must be recovered before their users are read."""
        out = []
        for p, journal in journals.items():
            known = self.known.get(p)
            if journal is None:
                if known or p in self.seen:
                    raise LostState(
                        f"the journal of input partition {p} vanished from Redis: Redis lost its data "
                        "(restart without persistence, flush, failover) or a rebuild wiped it; "
                        f"{REBUILD_HINT}"
                    )
                if known is None:  # never written: no user of the partition has state
                    self.cache.mark_complete(p)
                self.known[p] = 0
            else:
                self.seen.add(p)
                if journal.seq != known:
                    out.append(p)
        self.cache.drop_partitions(out)  # another writer (or our own torn batch) came in between
        return out

    def forget(self, partitions: Sequence[int]) -> None:
        """Partitions this process no longer owns: check their journal again before using them."""
        for p in partitions:
            self.known.pop(p, None)
        self.cache.drop_partitions(partitions)

    def recover(self, partition: int, now_ms: int) -> int:
        """Finish the last batch opened on ``partition``; returns how many users it had reached."""
        journal = self.store.read_journal(partition)
        if journal is None:
            self.stale({partition: None})
            return 0
        self.seen.add(partition)
        entries = _decode(journal.body) if journal.body else []
        try:
            states = self.store.settle(partition, journal.seq, [key for key, _ in entries], self.mark_ttl_ms)
            if 2 in states:
                raise StateConflict(
                    f"partition {partition} moved past batch {journal.seq} during its recovery"
                )
            written = [e for e, s in zip(entries, states, strict=True) if s == 1]
            self.store.add_counters(_counters(self.keys, partition, journal.seq, written), now_ms)
        except BadInput as exc:  # the journal was validated when written: never the current batch's fault
            raise AttributionError(f"recovering batch {journal.seq} of partition {partition}: {exc}") from exc
        self.known[partition] = journal.seq
        return len(written)

    def commit(self, batches: Sequence[PartitionBatch], now_ms: int) -> None:
        """Journal, users, counters. StateConflict when another writer owns a partition now: nothing of
        ours is counted that a recovery would not count the same way."""
        entries = {b.partition: list(b.deltas.items()) for b in batches}
        # summed (and checked) before anything is written: a recovery sums the journal the same way
        counters = {p: _counters(self.keys, p, 0, e) for p, e in entries.items()}
        for c in (c for cs in counters.values() for c in cs if c.revenue):
            _check_revenue(c.revenue)
        known = self.known
        opened = self.store.open_batches(
            [
                OpenBatch(b.partition, known.get(b.partition, 0), b.clock_ts, _encode(entries[b.partition]))
                for b in batches
            ]
        )
        lost = sorted(p for p, seq in opened.items() if seq is None)
        if lost:
            self.forget(list(opened))
            raise StateConflict(f"input partitions {lost} were written by another worker")
        writes = [
            UserWrite(key, b.partition, opened[b.partition] or 0, blob, ttl_ms)
            for b in batches
            for key, blob, ttl_ms in b.users
        ]
        if not all(self.store.write_users(writes)):
            self.forget(list(opened))
            raise StateConflict("a batch was closed under us by another worker's recovery")
        for p, cs in counters.items():
            for c in cs:
                c.seq = opened[p] or 0
        self.store.add_counters([c for cs in counters.values() for c in cs], now_ms)
        for p, seq in opened.items():
            self.known[p] = seq or 0
            self.seen.add(p)


def _check_revenue(revenue: dict[str, Decimal]) -> None:
    """The Lua adder takes plain decimal strings only: refuse anything else before writing. Checking
    the sums is enough: a NaN or an infinity in any addend makes its sum one too."""
    for name, amount in revenue.items():
        text = fmt(amount)
        if not _DECIMAL.fullmatch(text):
            raise BadInput(f"revenue {name}={text!r} is not a plain decimal")


def _counters(keys: Keys, partition: int, seq: int, entries: Sequence[_Entry]) -> list[CounterWrite]:
    """The deltas of ``entries`` summed per campaign, fenced by (partition, seq)."""
    out: dict[Subject, CounterWrite] = {}
    for _, deltas in entries:
        for d in deltas:
            ident = Subject(d.project_id, d.campaign_id or None, d.day)
            c = out.get(ident)
            if c is None:
                c = out[ident] = CounterWrite(
                    key=keys.counters_of(ident),
                    member=keys.subject_member(ident),
                    project_key=keys.project_campaigns(d.project_id),
                    partition=partition,
                    seq=seq,
                    persist=ident.campaign_id is None,
                )
            for channel in d.all_channels():
                if channel not in c.channels:
                    c.channels.append(channel)
            counts = c.counts
            for name, n in d.counts.items():
                counts[name] = counts.get(name, 0) + n
            if d.revenue:
                for name, amount in d.revenue.items():
                    c.revenue[name] = add(c.revenue.get(name, Decimal(0)), amount)
            c.as_of_ts = max(c.as_of_ts, d.as_of_ts)
    return list(out.values())
