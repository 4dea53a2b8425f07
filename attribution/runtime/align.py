"""Event-time alignment of the co-partitioned inputs, so a backlog is processed as it happened live.

A consumer catching up reads ``sends`` of partition 3 far ahead of ``goals`` of partition 3: each
topic is in order, but their interleaving is not, and a click read an hour after its goal is beyond
any grace period. Like Kafka Streams' stream-time synchronisation, the aligner keeps one FIFO per
topic-partition and releases, per partition, the head with the smallest event time; it waits for an
empty queue unless that topic-partition is at its end (nothing to wait for) or has kept the others
waiting for ``max_idle_ms``. Even then it releases only events no later than the quiet
topic-partition's last seen event time + grace: whatever that topic still delivers (in its own
event-time order) is then within grace of what was processed. FIFO per topic-partition keeps offsets
in order, which the per-user fences rely on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from attribution.core.model import Located

Tp = tuple[str, int]  # (topic, partition)


class Aligner:
    """Buffers decoded events per topic-partition and releases them in event-time order per partition."""

    def __init__(self, max_idle_ms: int, max_buffered: int, grace_ms: int = 0) -> None:
        self.max_idle_ms = max_idle_ms
        self.grace_ms = grace_ms
        self.last_ts: dict[Tp, int] = {}
        self.max_buffered = max_buffered
        self.queues: dict[Tp, deque[Located]] = {}
        self.at_end: set[Tp] = set()
        self.next_offset: dict[Tp, int] = {}
        self.blocked_since: dict[int, float] = {}

    def assign(self, tps: Iterable[Tp]) -> None:
        for tp in tps:
            self.queues.setdefault(tp, deque())
            self.blocked_since.pop(tp[1], None)

    def revoke(self, tps: Iterable[Tp]) -> None:
        """Forget revoked partitions: their buffered events were never processed nor committed."""
        for tp in tps:
            self.queues.pop(tp, None)
            self.at_end.discard(tp)
            self.next_offset.pop(tp, None)
            self.last_ts.pop(tp, None)
            self.blocked_since.pop(tp[1], None)

    def add(self, tp: Tp, offset: int, located: Located | None) -> None:
        """Record that ``offset`` of ``tp`` was consumed; ``located`` is None for a dead letter."""
        self.at_end.discard(tp)
        self.next_offset[tp] = offset + 1
        if located is not None:
            self.queues.setdefault(tp, deque()).append(located)
            self.last_ts[tp] = located.event.ts

    def end_reached(self, tp: Tp) -> None:
        self.at_end.add(tp)

    def release(self, now_ms: float) -> list[Located]:
        """Everything that may be processed now, per partition in event-time order."""
        out: list[Located] = []
        for partition in sorted({p for _, p in self.queues}):
            queues = [(tp, q) for tp, q in self.queues.items() if tp[1] == partition]
            out += self._release_partition(partition, queues, now_ms)
        return out

    def _release_partition(
        self, partition: int, queues: list[tuple[Tp, deque[Located]]], now_ms: float
    ) -> list[Located]:
        if not any(q for _, q in queues):
            self.blocked_since.pop(partition, None)
            return []
        quiet = [tp for tp, q in queues if self._blocking(tp, q)]
        if not quiet:
            self.blocked_since.pop(partition, None)
            return self._merge(queues, stop_when_dry=True)
        since = self.blocked_since.setdefault(partition, now_ms)
        if now_ms - since < self.max_idle_ms:
            return []
        seen = [self.last_ts.get(tp) for tp in quiet]
        if None in seen:
            # Not a record nor an end-of-partition since assignment: the broker has not answered for
            # it yet. Waiting is the only exact choice (the lag metric shows it).
            return []
        # Waited long enough: go on, but no further than grace past what the quiet topics last said.
        limit = min(ts for ts in seen if ts is not None) + self.grace_ms
        return self._merge(queues, stop_when_dry=False, limit_ts=limit)

    def _blocking(self, tp: Tp, q: deque[Located]) -> bool:
        return not q and tp not in self.at_end

    def _merge(
        self, queues: list[tuple[Tp, deque[Located]]], stop_when_dry: bool, limit_ts: int | None = None
    ) -> list[Located]:
        """Pop the smallest head until empty, past ``limit_ts``, or (``stop_when_dry``) until a queue
        that may still receive earlier events runs dry."""
        out: list[Located] = []
        while True:
            best = None
            for i, (_, q) in enumerate(queues):
                if q and (best is None or q[0].event.ts < queues[best][1][0].event.ts):
                    best = i
            if best is None:
                return out
            tp, q = queues[best]
            if limit_ts is not None and q[0].event.ts > limit_ts:
                return out
            out.append(q.popleft())
            if self._blocking(tp, q):
                if stop_when_dry:
                    return out
                if limit_ts is not None:  # it ran dry: what it sends next bounds the release too
                    limit_ts = min(limit_ts, self.last_ts[tp] + self.grace_ms)

    def commit_offsets(self) -> dict[Tp, int]:
        """Per topic-partition, the first offset not yet processed (safe to commit)."""
        out = {}
        for tp, nxt in self.next_offset.items():
            q = self.queues.get(tp)
            out[tp] = q[0].pos.offset if q else nxt
        return out

    def drained(self) -> bool:
        """Every assigned topic-partition reached its end and nothing waits in a queue."""
        return bool(self.queues) and all(not q and tp in self.at_end for tp, q in self.queues.items())

    def buffered(self, tp: Tp) -> int:
        q = self.queues.get(tp)
        return len(q) if q else 0

    def over_limit(self) -> set[Tp]:
        """Topic-partitions whose backlog is large enough to pause fetching them."""
        return {tp for tp, q in self.queues.items() if len(q) >= self.max_buffered}
