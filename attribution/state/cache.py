"""Decoded user states held in memory between batches, bounded by ``ATTRIBUTION_CACHE_MB``.

Redis stays the durable state: every change is still written through the journal protocol
(``attribution.state.ledger``). The cache only saves the load round trip and the msgpack decode of
a user whose state this process wrote last. That is known from the partition journal: all of a
user's events share one input partition, and every write of a partition's users opens a batch on
its journal first, so while the journal's ``seq`` is the one this process wrote, nobody else wrote
any user of that partition. The ledger drops a partition's entries whenever the journal shows
another writer, and on revoke or a Redis error (``Ledger.forget``).

A partition is *complete* when this process has seen it from an empty journal (a first start, a
rebuild) and has evicted none of its users since: then a user missing from the cache has no state
in Redis either, and needs no load at all.

The size of an entry is estimated from its encoded size (a decoded state takes ten times its bytes in
Redis and more: one Python object per string, list and struct); the least recently written entries
are evicted first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from attribution.core.user_state import UserState

#: bytes of Python objects per byte of encoded state (layout 3), and per entry with the cache's own
#: (key, tuple, ordered-dict node). tracemalloc, bench backlog (5.8 touches per user, 300-350 B per
#: blob): 11-12x the blob decoded, +~270 B of cache entry; one-touch users weigh ~2 KB.
DECODED_PER_ENCODED = 10
ENTRY_OVERHEAD = 1000
#: an entry is given up this long before the Redis TTL it mirrors (clocks and the write's own delay)
EXPIRY_MARGIN_MS = 5_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class UserCache:
    """Redis user key -> (partition, state, estimated bytes, deadline ms). Not thread-safe: one
    processor's."""

    def __init__(self, max_bytes: int, clock_ms: Callable[[], int] = monotonic_ms) -> None:
        self.max_bytes = max_bytes
        self.clock_ms = clock_ms  # monotonic: a wall clock stepping back must not outlive the TTL
        self.used = 0
        # least recently written first (an OrderedDict: popping the oldest is O(1), where a dict's
        # first key gets slower to find as deleted slots pile up at its front)
        self.entries: OrderedDict[str, tuple[int, UserState, int, int]] = OrderedDict()
        self.complete: set[int] = set()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def lookup(self, wanted: Iterable[tuple[str, int]]) -> dict[str, UserState | None]:
        """The states known without Redis, for (key, partition) pairs: a cached state, or None where
        the partition is complete (no state). A key left out must be loaded."""
        out: dict[str, UserState | None] = {}
        if not self.enabled:
            return out
        entries, complete = self.entries, self.complete
        now_ms = self.clock_ms()
        for key, partition in wanted:
            entry = entries.get(key)
            if entry is not None:
                if entry[0] == partition and entry[3] > now_ms:
                    out[key] = entry[1]
                    continue
                self._remove(key)  # Redis expired it too (TTL), or it moved: ask Redis
                self.complete.discard(entry[0])
            elif partition in complete:
                out[key] = None
                continue
            self.misses += 1
        self.hits += len(out)
        return out

    def put(self, key: str, partition: int, state: UserState, encoded_bytes: int, ttl_ms: int) -> None:
        """Keep ``state`` as written (its Redis write succeeded, with ``ttl_ms``) until a little before
        Redis expires it."""
        if not self.enabled:
            return
        deadline_ms = self.clock_ms() + ttl_ms - EXPIRY_MARGIN_MS
        size = ENTRY_OVERHEAD + DECODED_PER_ENCODED * encoded_bytes
        entries = self.entries
        old = entries.get(key)
        if old is not None:
            self.used -= old[2]
            entries.move_to_end(key)
        entries[key] = (partition, state, size, deadline_ms)
        self.used += size
        while self.used > self.max_bytes and entries:
            _, evicted = entries.popitem(last=False)
            self.used -= evicted[2]
            self.complete.discard(evicted[0])
            self.evictions += 1

    def discard(self, keys: Iterable[str]) -> None:
        """Forget these users (their in-memory state may hold changes that were not written). Their
        partitions stop being complete: Redis may hold their older state."""
        for key in keys:
            entry = self._remove(key)
            if entry is not None:
                self.complete.discard(entry[0])

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget every user of these partitions (another writer, a revoke, a Redis error)."""
        gone = set(partitions)
        if not gone:
            return
        self.complete -= gone
        for key in [k for k, e in self.entries.items() if e[0] in gone]:
            self._remove(key)

    def mark_complete(self, partition: int) -> None:
        """``partition``'s journal was empty: no user of it has state in Redis."""
        if self.enabled:
            self.drop_partitions([partition])
            self.complete.add(partition)

    def clear(self) -> None:
        self.entries.clear()
        self.complete.clear()
        self.used = 0

    def _remove(self, key: str) -> tuple[int, UserState, int, int] | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.used -= entry[2]
        return entry
