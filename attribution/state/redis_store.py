"""The Redis state store: one ``load`` and one ``apply`` script call per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis

from attribution.core.money import fmt
from attribution.errors import BadInput, StateConflict
from attribution.state.base import CounterWrite, Loaded, UserWrite
from attribution.state.keys import Keys
from attribution.state.scripts import APPLY, LOAD, TALLY_ACK, TOUCH


class RedisStore:
    """State in one Redis (or one cluster node group); see ``attribution.state.keys`` for the layout."""

    def __init__(self, client: redis.Redis, keys: Keys, tally_ttl_ms: int) -> None:
        self.client = client
        self.keys = keys
        self.tally_ttl_ms = tally_ttl_ms

    @classmethod
    def from_url(cls, url: str, keys: Keys, tally_ttl_ms: int) -> RedisStore:
        client = redis.Redis.from_url(
            url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
        )
        return cls(client, keys, tally_ttl_ms)

    def load(self, user_keys: Sequence[str], clock_keys: Sequence[str]) -> Loaded:
        raw: list[Any] = LOAD(self.client, [*user_keys, *clock_keys], [len(user_keys)])
        users: dict[str, tuple[int, bytes | None]] = {}
        for i, key in enumerate(user_keys):
            version, blob = raw[2 * i], raw[2 * i + 1]
            users[key] = (int(version) if version else 0, blob or None)
        base = 2 * len(user_keys)
        clocks = {key: int(raw[base + i]) if raw[base + i] else None for i, key in enumerate(clock_keys)}
        return Loaded(users, clocks)

    def apply(
        self,
        users: Sequence[UserWrite],
        clocks: dict[str, int],
        counters: Sequence[CounterWrite],
        now_ms: int,
    ) -> None:
        keys: list[str] = [self.keys.dirty, *clocks]
        args: list[Any] = [
            now_ms,
            self.tally_ttl_ms,
            len(clocks),
            len(users),
            len(counters),
            *clocks.values(),
        ]
        for u in users:
            keys.append(u.key)
            args += [u.expected_version, u.blob, max(1, u.ttl_ms)]
        for c in counters:
            keys.append(c.key)
            args += [c.member, c.as_of_ts, c.channel or "", len(c.counts), len(c.revenue)]
            for name, n in c.counts.items():
                args += [name, n]
            for name, amount in c.revenue.items():
                args += [name, fmt(amount)]
        keys += [c.project_key for c in counters]
        try:
            reply = APPLY(self.client, keys, args)
        except redis.exceptions.ResponseError as exc:
            # Only an error raised by the script itself is about this batch's data; OOM, READONLY,
            # LOADING... are about Redis and must stop the batch, not dead-letter it.
            if "user_script" not in str(exc):
                raise
            raise BadInput(f"apply.lua: {exc}") from exc
        if reply[0] != b"ok":
            raise StateConflict(f"state of {reply[1].decode()} changed since it was read (another writer?)")

    def dirty(self, limit: int) -> list[str]:
        members = cast(list[bytes], self.client.zrange(self.keys.dirty, 0, limit - 1))
        return [m.decode() for m in members]

    def counters(self, keys: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [{k.decode(): v.decode() for k, v in h.items()} for h in pipe.execute()]

    def ack(self, published: Sequence[tuple[str, str, int]], now_ms: int = 0) -> int:
        if not published:
            return 0
        keys = [self.keys.dirty, *(key for key, _, _ in published)]
        args: list[Any] = []
        for _, member, version in published:
            args += [member, version]
        args.append(now_ms)
        return int(TALLY_ACK(self.client, keys, args))

    def touch_project(self, project_key: str, now_ms: int) -> int:
        """Bump the version of every campaign in ``project_key`` and mark it dirty."""
        members = sorted(m.decode() for m in cast(set[bytes], self.client.smembers(project_key)))
        if not members:
            return 0
        keys = [self.keys.dirty, *(self.keys.campaign(*self.keys.parse_member(m)) for m in members)]
        return int(TOUCH(self.client, keys, [now_ms, *members]))
