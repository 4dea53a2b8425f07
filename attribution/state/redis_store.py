"""The Redis state store: a few pipelined script calls per batch, on one server or a Redis Cluster."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import count
from typing import Any, cast

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from attribution.core.money import fmt
from attribution.core.tally import channel_field
from attribution.state.base import CounterWrite, Generation, Journal, Loaded, OpenBatch, UserWrite
from attribution.state.keys import Keys
from attribution.state.router import Call, Client, Router, close, connect
from attribution.state.scripts import COUNTERS, JOURNAL, LOAD, SETTINGS, SETTLE, TALLY_ACK, TOUCH, USERS


class RedisStore:
    """State in Redis; see ``attribution.state.keys`` for the layout and ``base`` for the protocol."""

    def __init__(self, client: Client, keys: Keys, tally_ttl_ms: int) -> None:
        self.client = client
        self.router = Router(client)
        self.keys = keys
        self.tally_ttl_ms = tally_ttl_ms

    @classmethod
    def from_url(cls, url: str, keys: Keys, tally_ttl_ms: int) -> RedisStore:
        return cls(connect(url), keys, tally_ttl_ms)

    def close(self) -> None:
        close(self.client)

    # -- a batch ------------------------------------------------------------------------------------

    def load(self, user_keys: Sequence[str], partitions: Sequence[int]) -> Loaded:
        groups = self.router.split(user_keys)
        raw = self.router.run([Call(LOAD, [user_keys[i] for i in g], []) for g in groups])
        users: dict[str, tuple[bytes | None, str | None]] = {}
        for group, reply in zip(groups, raw, strict=True):
            for i, value in zip(group, reply, strict=True):
                if value:
                    fence, _, blob = value.partition(b"|")
                    users[user_keys[i]] = (blob or None, fence.decode())
                else:
                    users[user_keys[i]] = (None, None)
        pipe = self.router.pipeline()
        for p in partitions:
            pipe.hmget(self.keys.journal(p), "seq", "clock")
        journals: dict[int, Journal | None] = {}
        for p, (seq, clock) in zip(partitions, pipe.execute(), strict=True):
            journals[p] = Journal(int(seq), int(clock or 0)) if seq is not None else None
        return Loaded(users, journals)

    def read_journal(self, partition: int) -> Journal | None:
        seq, clock, body = cast(
            list[Any], self.client.hmget(self.keys.journal(partition), "seq", "clock", "body")
        )
        return Journal(int(seq), int(clock or 0), body or b"") if seq is not None else None

    def open_batches(self, batches: Sequence[OpenBatch]) -> dict[int, int | None]:
        calls = [
            Call(JOURNAL, [self.keys.journal(b.partition)], [b.expected_seq, b.clock_ts, b.body])
            for b in batches
        ]
        replies = self.router.run(calls)
        return {b.partition: int(r[1]) if r[0] == 1 else None for b, r in zip(batches, replies, strict=True)}

    def write_users(self, writes: Sequence[UserWrite]) -> list[bool]:
        by_batch: dict[tuple[int, int], list[int]] = {}
        for i, w in enumerate(writes):
            by_batch.setdefault((w.partition, w.seq), []).append(i)
        calls: list[Call] = []
        placed: list[list[int]] = []
        for (partition, seq), indexes in by_batch.items():
            for group in self.router.split([writes[i].key for i in indexes]):
                chosen = [indexes[g] for g in group]
                args: list[Any] = [partition, seq]
                fence = f"{partition}:{seq}|".encode()
                for i in chosen:
                    args += [fence + writes[i].blob, max(1, writes[i].ttl_ms)]
                calls.append(Call(USERS, [writes[i].key for i in chosen], args))
                placed.append(chosen)
        written = [False] * len(writes)
        for chosen, reply in zip(placed, self.router.run(calls), strict=True):
            for i, ok in zip(chosen, reply, strict=True):
                written[i] = ok == 1
        return written

    def settle(self, partition: int, seq: int, user_keys: Sequence[str], ttl_ms: int) -> list[int]:
        groups = self.router.split(user_keys)
        calls = [Call(SETTLE, [user_keys[i] for i in g], [partition, seq, max(1, ttl_ms)]) for g in groups]
        states = [0] * len(user_keys)
        for group, reply in zip(groups, self.router.run(calls), strict=True):
            for i, state in zip(group, reply, strict=True):
                states[i] = int(state)
        return states

    def add_counters(self, counters: Sequence[CounterWrite], now_ms: int) -> None:
        if not counters:
            return
        groups = self.router.split([c.key for c in counters])
        calls = []
        for group in groups:
            args: list[Any] = [now_ms, self.tally_ttl_ms]
            for i in group:
                c = counters[i]
                args += [
                    c.partition,
                    c.seq,
                    c.as_of_ts,
                    0 if c.persist else 1,
                    len(c.channels),
                    len(c.counts),
                    len(c.revenue),
                ]
                args += [channel_field(channel) for channel in c.channels]
                for name, n in c.counts.items():
                    args += [name, n]
                for name, amount in c.revenue.items():
                    args += [name, fmt(amount)]
            calls.append(Call(COUNTERS, [counters[i].key for i in group], args))
        versions: dict[str, int] = {}
        for group, reply in zip(groups, self.router.run(calls), strict=True):
            for i, version in zip(group, reply, strict=True):
                versions[counters[i].member] = max(int(version), versions.get(counters[i].member, 0))
        # after the counters: a publisher that read the old version cannot forget the new one
        pipe = self.router.pipeline()
        pipe.zadd(self.keys.dirty, versions, gt=True)
        for c in {c.member: c for c in counters}.values():
            pipe.sadd(c.project_key, c.member)
            pipe.pexpire(c.project_key, self.tally_ttl_ms)
        pipe.execute()

    # -- tallies ------------------------------------------------------------------------------------

    def dirty(self, limit: int) -> list[str]:
        members = cast(list[bytes], self.client.zrange(self.keys.dirty, 0, limit - 1))
        return [m.decode() for m in members]

    def counters(self, keys: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.router.pipeline()
        for key in keys:
            pipe.hgetall(key)
        return [{k.decode(): v.decode() for k, v in h.items()} for h in pipe.execute()]

    def ack(self, published: Sequence[tuple[str, int, int]]) -> int:
        if not published:
            return 0
        args: list[Any] = []
        for member, version, offset in published:
            args += [member, version, offset]
        return int(self.router.run([Call(TALLY_ACK, [self.keys.dirty, self.keys.appended], args)])[0])

    def touch_project(self, project_key: str, now_ms: int) -> int:
        """Bump the version of every campaign in ``project_key`` and mark it dirty."""
        members = sorted(m.decode() for m in cast(set[bytes], self.client.smembers(project_key)))
        keys = [self.keys.counters_of(self.keys.parse_subject(m)) for m in members]
        groups = self.router.split(keys)
        versions: dict[str, int] = {}
        for group, reply in zip(
            groups,
            self.router.run([Call(TOUCH, [keys[i] for i in g], [now_ms]) for g in groups]),
            strict=True,
        ):
            for i, version in zip(group, reply, strict=True):
                if int(version):
                    versions[members[i]] = int(version)
        if versions:
            self.client.zadd(self.keys.dirty, versions, gt=True)
        return len(versions)

    def save_settings(self, project_id: str, version: int, document: bytes) -> bool:
        call = Call(SETTINGS, [self.keys.settings], [project_id, version, document])
        return bool(int(self.router.run([call])[0]))

    def settings_documents(self) -> list[bytes]:
        values = cast(list[bytes], self.client.hvals(self.keys.settings))
        return [v.split(b"|", 1)[1] for v in values]

    def dead_lettered(self, stream: str) -> int:
        score = self.client.zscore(self.keys.dead_lettered, stream)
        return int(score) if score is not None else -1

    def mark_dead_lettered(self, stream: str, offset: int) -> None:
        self.client.zadd(self.keys.dead_lettered, {stream: offset}, gt=True)  # only ever raised

    # -- generation ---------------------------------------------------------------------------------

    def _markers(self) -> list[str]:
        if not self.router.cluster:
            return [self.keys.generation]
        return [self.keys.generation, *(self.keys.generation_marker(tag) for tag in _slot_tags())]

    def generation(self) -> Generation:
        markers = self._markers()
        pipe = self.router.pipeline()
        for key in markers:
            pipe.get(key)
        values = frozenset(v.decode() if v else None for v in pipe.execute())
        return Generation(values, len(markers))

    def init_generation(self, value: str) -> str:
        self.client.set(self.keys.generation, value, nx=True)
        adopted = cast(bytes, self.client.get(self.keys.generation)).decode()
        pipe = self.router.pipeline()
        for key in self._markers()[1:]:
            pipe.set(key, adopted, nx=True)
        pipe.execute()
        return adopted

    def wipe(self) -> int:
        """Delete every key under the prefix, on every primary; returns how many."""
        deleted = 0
        for conn in self.router.primaries():
            batch: list[bytes] = []
            for key in conn.scan_iter(match=f"{self.keys.prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += _unlink(conn, batch)
                    batch = []
            deleted += _unlink(conn, batch)
        return deleted


def _unlink(conn: Any, keys: list[bytes]) -> int:
    """UNLINK one key per command: keys of different slots may sit on one cluster node."""
    if not keys:
        return 0
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(n) for n in pipe.execute())


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """One short hash tag per cluster slot (``tags[slot]`` hashes to ``slot``)."""
    tags: dict[int, str] = {}
    for i in count():
        tag = f"g{i}"
        tags.setdefault(key_slot(tag.encode()), tag)
        if len(tags) == REDIS_CLUSTER_HASH_SLOTS:
            return tuple(tags[s] for s in range(REDIS_CLUSTER_HASH_SLOTS))
    raise AssertionError("unreachable")
